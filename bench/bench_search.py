"""ProxylessNAS benchmarks: memory, step time and latency-target tracking.

Prints ratios measured side by side in one run (this machine is shared and
noisy; absolute numbers mean little, ratios do). Never part of the tests.

    .venv/bin/python bench/bench_search.py memory   # supernet vs single path vs DARTS-style all paths
    .venv/bin/python bench/bench_search.py time     # search step vs single-path training step
    .venv/bin/python bench/bench_search.py targets  # two latency targets, derived latency vs target

Memory is measured two ways, each variant in a fresh subprocess:
- activation bytes: the tensors autograd saves for backward during one step
  (exact and repeatable, the quantity the paper's O(1) claim is about);
- peak RSS: the process high-water mark during the first training step, above
  the resident size right before it (includes gradients and optimiser state).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from automl_server.engine.latency import FlopsLatencyModel  # noqa: E402
from automl_server.engine.losses import latency_loss  # noqa: E402
from automl_server.engine.mixed_op import MixedOp  # noqa: E402
from automl_server.engine.supernet import SuperNet  # noqa: E402
from search_spaces import build_model, get_space  # noqa: E402

VARIANTS = ("single_path", "supernet_same_path", "supernet_weight_step", "supernet_arch_step", "darts_all_paths")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _darts_forward(self: MixedOp, x: torch.Tensor) -> torch.Tensor:
    """DARTS-style mixed edge: every candidate runs, weighted by softmax(alpha)."""
    probs = F.softmax(self.alpha, dim=0)
    return functools.reduce(torch.add, (p * op(x) for p, op in zip(probs, self.ops)))


def measure_variant(variant: str, space: str, resolution: int, batch: int) -> dict[str, float]:
    """Run in a fresh process: one step of ``variant``; its activation bytes and peak RSS."""
    torch.manual_seed(0)
    layout = get_space(space).layout(resolution, 10, 3)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    supernet = SuperNet(layout)
    net: nn.Module
    if variant == "single_path":
        net = build_model(supernet.derive())
        params = list(net.parameters())
    else:
        net = supernet
        # A weight step updates the weights; an architecture step updates alpha only.
        params = supernet.weight_parameters() if variant != "supernet_arch_step" else supernet.arch_parameters()
        if variant == "darts_all_paths":
            # This child process only; mypy refuses any assignment to a method.
            MixedOp.forward = _darts_forward  # type: ignore[method-assign]
            params = list(supernet.parameters())
        elif variant == "supernet_same_path":  # the derived path, to isolate the supernet's own overhead
            supernet.set_mode("weights")
            supernet.sample(torch.Generator().manual_seed(0))
            for mixed in supernet.mixed_ops:
                mixed.active_index = mixed.chosen_index()
        else:
            supernet.set_mode("weights" if variant == "supernet_weight_step" else "two")
            supernet.sample(torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    net.train()
    saved_bytes = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    rss_before = _status_kb("VmRSS")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        if variant == "supernet_arch_step":
            loss = latency_loss(loss, supernet.expected_latency_ms(FlopsLatencyModel()), 10.0, log_unit_ms=0.125)
    optimizer.zero_grad()
    loss.backward()
    if variant == "supernet_arch_step":
        supernet.set_alpha_grad()
    optimizer.step()
    peak_rss = _status_kb("VmHWM")
    return {"activation_mb": saved_bytes / 2**20, "peak_rss_mb": (peak_rss - rss_before) / 1024}


def bench_memory(args: argparse.Namespace) -> None:
    results = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "_one", variant, "--space", args.space, "--resolution", str(args.resolution),
             "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["single_path"]
    print(f"memory of one step, {args.space} at {args.resolution}x{args.resolution}, batch {args.batch} (CPU)")
    print(f"{'variant':24} {'activations MB':>15} {'ratio':>7} {'peak RSS MB':>12} {'ratio':>7}")
    for variant, r in results.items():
        print(f"{variant:24} {r['activation_mb']:15.1f} {r['activation_mb'] / base['activation_mb']:7.2f} "
              f"{r['peak_rss_mb']:12.1f} {r['peak_rss_mb'] / base['peak_rss_mb']:7.2f}")


def bench_time(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    layout = get_space(args.space).layout(args.resolution, 10, 3)
    supernet = SuperNet(layout)
    single = build_model(supernet.derive())
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    y = torch.randint(0, 10, (args.batch,))
    gen = torch.Generator().manual_seed(0)
    opt_super = torch.optim.SGD(supernet.weight_parameters(), lr=0.01, momentum=0.9)
    opt_single = torch.optim.SGD(single.parameters(), lr=0.01, momentum=0.9)

    def supernet_step() -> None:
        supernet.set_mode("weights")
        supernet.sample(gen)
        loss = F.cross_entropy(supernet(x), y)
        opt_super.zero_grad(set_to_none=True)
        loss.backward()
        opt_super.step()

    def same_path_step() -> None:  # the supernet held on the derived path: its own overhead only
        supernet.set_mode("fixed")
        for mixed in supernet.mixed_ops:
            mixed.active_index = mixed.chosen_index()
        loss = F.cross_entropy(supernet(x), y)
        opt_super.zero_grad(set_to_none=True)
        loss.backward()
        opt_super.step()

    def single_step() -> None:
        loss = F.cross_entropy(single(x), y)
        opt_single.zero_grad(set_to_none=True)
        loss.backward()
        opt_single.step()

    steps = {"supernet weight step, sampled path": supernet_step, "supernet step, derived path": same_path_step,
             "single-path training step": single_step}
    for step in steps.values():  # warm up every variant
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"step time, {args.space} at {args.resolution}x{args.resolution}, batch {args.batch}, {args.repeats} "
          "interleaved repeats (CPU)")
    base = times["single-path training step"]
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        print(f"{name:36} median {statistics.median(values) * 1e3:8.1f} ms   ratio to single path: median "
              f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    print("sampled paths differ in cost from the derived one; the derived-path row isolates the supernet's overhead")


def bench_targets(args: argparse.Namespace) -> None:
    from automl_server.cli.engine_cmds import load_dataset
    from automl_server.engine.data import split_arrays
    from automl_server.engine.search import SearchConfig, arch_latency_ms, run_search
    from search_spaces import Arch

    x, y, classes = load_dataset(args.dataset)
    data = split_arrays(x, y, seed=0)
    space = get_space(args.space)
    layout = space.layout(data.resolution, len(classes), data.in_channels)
    model = FlopsLatencyModel()

    def extreme(pick: Callable[[tuple[str, ...]], str]) -> float:
        blocks = tuple(pick(cell.candidates) for cell in layout.cells)
        return arch_latency_ms(Arch(layout.space, layout.resolution, layout.num_classes, layout.in_channels, blocks),
                               model)

    fastest = extreme(lambda c: "zero" if "zero" in c else min(c, key=lambda b: (int(b[2]), int(b[5]))))
    slowest = extreme(lambda c: max((b for b in c if b != "zero"), key=lambda b: (int(b[2]), int(b[5]))))
    targets = [fastest + f * (slowest - fastest) for f in (0.3, 0.6)][: args.targets]
    if args.warmup_steps:  # count the warm-up in weight steps (engine/search_plan.py), not epochs
        from automl_server.engine.search_plan import schedule_for

        args.warmup = schedule_for(len(data.y_train), 64, args.warmup, args.epochs, args.arch_every,
                                   min_warmup_steps_per_epoch=-(-args.warmup_steps // max(args.warmup, 1)),
                                   min_arch_steps_per_epoch=0).warmup_epochs
    print(f"target tracking: {args.space} on {args.dataset} ({data.resolution}x{data.resolution}), FLOPs latency "
          f"model; space spans {fastest:.3f}-{slowest:.3f} ms; {args.warmup} warm-up + {args.epochs} search epochs")
    derived = []
    for target in targets:
        config = SearchConfig(warmup_epochs=args.warmup, search_epochs=args.epochs, batch_size=64, lr=0.05,
                              target_ms=target, arch_lr=args.arch_lr, arch_update_every=args.arch_every,
                              loss_kind=args.loss, loss_lambda=args.loss_lambda, derive=args.derive, seed=0,
                              latency_over=args.latency_over)
        started = time.perf_counter()
        result = run_search(layout, data, model, config)
        derived.append(result.expected_latency_ms)
        gap = (result.expected_latency_ms - target) / target
        zeros = result.arch.blocks.count("zero")
        print(f"[{args.derive}, latency over {args.latency_over}, {args.warmup} warm-up epochs, {zeros} Zero blocks] "
              f"target {target:7.3f} ms -> derived {result.expected_latency_ms:7.3f} ms ({gap:+.1%} of target), "
              f"held-out acc {result.holdout_accuracy:.3f}, {time.perf_counter() - started:.0f} s: "
              f"{' '.join(result.arch.blocks)}")
    if len(derived) == 2:
        print(f"tighter target gives the faster architecture: {derived[0] < derived[1]} "
              f"(ratio {derived[0] / derived[1]:.2f})")


def bench_collapse(args: argparse.Namespace) -> None:
    """Zero blocks in the argmax after architecture steps alone on an untrained supernet
    (the latency term biting before any warm-up), E[LAT] over the sampled pair vs. all
    candidates: isolates why a short search collapsed to Zero blocks."""
    from automl_server.engine.data import split_arrays
    from automl_server.cli.engine_cmds import load_dataset
    from automl_server.engine.search import ProxylessSearch, SearchConfig

    x, y, classes = load_dataset(args.dataset)
    data = split_arrays(x, y, seed=0)
    layout = get_space(args.space).layout(data.resolution, len(classes), data.in_channels)
    zero_cells = sum("zero" in cell.candidates for cell in layout.cells)
    print(f"{args.space} on {args.dataset}: {args.steps} architecture steps, no warm-up, add#abs lambda "
          f"{args.loss_lambda}, arch lr {args.arch_lr}; {zero_cells} of {len(layout.cells)} cells may be Zero")
    for over in ("all", "pair"):
        config = SearchConfig(warmup_epochs=0, search_epochs=1, batch_size=64, target_ms=args.target,
                              arch_lr=args.arch_lr, loss_kind="add#abs", loss_lambda=args.loss_lambda,
                              latency_over=over, seed=0)
        search = ProxylessSearch(layout, data, FlopsLatencyModel(), config)
        for _ in range(args.steps):
            search.arch_step()
        zero_p = [op.probs()[op.candidates.index("zero")].item() for op in search.net.mixed_ops
                  if "zero" in op.candidates]
        print(f"latency over {over}: {search.net.derive().blocks.count('zero')} Zero blocks in the argmax, "
              f"mean p(Zero) {sum(zero_p) / len(zero_p):.3f} (start {1 / 7:.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "time", "targets", "collapse", "_one"])
    parser.add_argument("variant", nargs="?")
    parser.add_argument("--space", default="proxyless-mobile")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch-lr", type=float, default=1e-3)
    parser.add_argument("--arch-every", type=int, default=5)
    parser.add_argument("--loss", default="mul#log")
    parser.add_argument("--loss-lambda", type=float, default=0.1)
    parser.add_argument("--derive", choices=["argmax", "target"], default="argmax")
    parser.add_argument("--latency-over", choices=["pair", "all"], default="pair",
                        help="E[LAT] in the architecture step over the sampled pair (reference) or all candidates")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="warm up for at least this many weight steps (0: --warmup epochs as given)")
    parser.add_argument("--steps", type=int, default=100, help="collapse: architecture steps")
    parser.add_argument("--target", type=float, default=1.0, help="collapse: latency target, ms")
    parser.add_argument("--targets", type=int, choices=[1, 2], default=2, help="how many of the two targets to run")
    args = parser.parse_args()
    if args.what == "_one":
        print(json.dumps(measure_variant(args.variant, args.space, args.resolution, args.batch)))
    else:
        {"memory": bench_memory, "time": bench_time, "targets": bench_targets,
         "collapse": bench_collapse}[args.what](args)


if __name__ == "__main__":
    main()
