"""IOS on this CPU at batch 1: sequential, greedy, ONNX Runtime's parallel mode, IOS.

Networks (random weights; torchvision does not import in this venv, so they
are built here): Inception-v3 (torchvision's layout, 299x299, no aux head),
a NASNet-A-like network (normal/reduction cells of separable convs, pools and
adds, 224x224), SqueezeNet 1.1 (224x224) and a ProxylessNAS chain network
(proxyless-mobile space, an arch sampled from the space standing in for a
searched one, 224x224).

For each network: the IOS schedule is searched with stage latencies measured
here (warm-up 2, ``--number`` x ``--repeat`` runs; the paper uses 6 x 6;
parts bounded to ``--max-states`` DP states so the search fits this VM),
then every method runs side by side, interleaved round by round so that load
from other users of this shared machine falls on all of them alike; each
figure is the median over rounds of the mean per run. Sequential, greedy and
IOS run on the same executor and kernels: ONNX Runtime, one session per
operator (``--backend ort``, default; device_agents.ios.ort_program) or
PyTorch (``--backend torch``). ONNX Runtime's own sequential and parallel
(ExecutionMode.ORT_PARALLEL) modes run the whole graph in one session with
the same session options (no spinning, ``--threads`` intra-op threads).

    .venv/bin/python bench/bench_ios.py
    .venv/bin/python bench/bench_ios.py --nets squeezenet --threads 2 --rounds 5
    .venv/bin/python bench/bench_ios.py --nets inception_v3 --export-onnx /tmp/nets   # ONNX files only
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: spinning barriers on this shared, oversubscribed
# 2-core VM cost several times the work (see device_agents/ios/executor.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from automl_server.engine.deploy.ios import (  # noqa: E402
    IOSSettings,
    MemoisedStageCost,
    export_module_onnx,
    graph_from_onnx,
    greedy_schedule,
    ios_schedule,
    schedule_to_json,
    sequential_schedule,
)
from device_agents.ios import (  # noqa: E402
    CpuExecutor,
    LocalStageMeasurer,
    OnnxModelProgram,
    OrtModelProgram,
    ScheduledModel,
)
from device_agents.ios.ort_program import whole_graph_session  # noqa: E402
from search_spaces import build_model, sample_archs  # noqa: E402


# ---- Inception-v3 (torchvision's structure) ----------------------------------------------------
class BasicConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=0.001),
                         nn.ReLU())


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.b1 = BasicConv(cin, 64, 1)
        self.b5 = nn.Sequential(BasicConv(cin, 48, 1), BasicConv(48, 64, 5, padding=2))
        self.b3 = nn.Sequential(BasicConv(cin, 64, 1), BasicConv(64, 96, 3, padding=1), BasicConv(96, 96, 3, padding=1))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv(cin, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b3 = BasicConv(cin, 384, 3, stride=2)
        self.bd = nn.Sequential(BasicConv(cin, 64, 1), BasicConv(64, 96, 3, padding=1), BasicConv(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.bd(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.b1 = BasicConv(cin, 192, 1)
        self.b7 = nn.Sequential(BasicConv(cin, c7, 1), BasicConv(c7, c7, (1, 7), padding=(0, 3)),
                                BasicConv(c7, 192, (7, 1), padding=(3, 0)))
        self.bd = nn.Sequential(BasicConv(cin, c7, 1), BasicConv(c7, c7, (7, 1), padding=(3, 0)),
                                BasicConv(c7, c7, (1, 7), padding=(0, 3)), BasicConv(c7, c7, (7, 1), padding=(3, 0)),
                                BasicConv(c7, 192, (1, 7), padding=(0, 3)))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b3 = nn.Sequential(BasicConv(cin, 192, 1), BasicConv(192, 320, 3, stride=2))
        self.b7 = nn.Sequential(BasicConv(cin, 192, 1), BasicConv(192, 192, (1, 7), padding=(0, 3)),
                                BasicConv(192, 192, (7, 1), padding=(3, 0)), BasicConv(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b7(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = BasicConv(cin, 320, 1)
        self.b3 = BasicConv(cin, 384, 1)
        self.b3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.b3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.bd = nn.Sequential(BasicConv(cin, 448, 1), BasicConv(448, 384, 3, padding=1))
        self.bda = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.bdb = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3, bd = self.b3(x), self.bd(x)
        return torch.cat([self.b1(x), self.b3a(b3), self.b3b(b3), self.bda(bd), self.bdb(bd), self.bp(x)], 1)


def inception_v3() -> nn.Module:
    return nn.Sequential(
        BasicConv(3, 32, 3, stride=2), BasicConv(32, 32, 3), BasicConv(32, 64, 3, padding=1), nn.MaxPool2d(3, 2),
        BasicConv(64, 80, 1), BasicConv(80, 192, 3), nn.MaxPool2d(3, 2),
        InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64), InceptionB(288),
        InceptionC(768, 128), InceptionC(768, 160), InceptionC(768, 160), InceptionC(768, 192), InceptionD(768),
        InceptionE(1280), InceptionE(2048), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


# ---- SqueezeNet 1.1 ------------------------------------------------------------------------------
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), pool(), Fire(64, 16, 64), Fire(128, 16, 64), pool(),
        Fire(128, 32, 128), Fire(256, 32, 128), pool(), Fire(256, 48, 192), Fire(384, 48, 192),
        Fire(384, 64, 256), Fire(512, 64, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten())


# ---- NASNet-A-like -------------------------------------------------------------------------------
class SepConv(nn.Sequential):
    """NASNet's separable conv: (ReLU, depthwise, pointwise, BN) twice."""

    def __init__(self, ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(ch, ch, kernel, stride, kernel // 2, groups=ch, bias=False),
                         nn.Conv2d(ch, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                         nn.Conv2d(ch, ch, kernel, 1, kernel // 2, groups=ch, bias=False),
                         nn.Conv2d(ch, ch, 1, bias=False), nn.BatchNorm2d(ch))


class NormalCell(nn.Module):
    """NASNet-A normal cell: five pairwise combinations of h (this input) and p (the previous one)."""

    def __init__(self, cin_prev: int, cin: int, ch: int) -> None:
        super().__init__()
        self.prep_p = nn.Sequential(nn.ReLU(), nn.Conv2d(cin_prev, ch, 1, bias=False), nn.BatchNorm2d(ch))
        self.prep_h = nn.Sequential(nn.ReLU(), nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch))
        self.s5h, self.s3p = SepConv(ch, 5), SepConv(ch, 3)
        self.s5p, self.s3p2 = SepConv(ch, 5), SepConv(ch, 3)
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.s3h = SepConv(ch, 3)

    def forward(self, h: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, h0 = self.prep_p(p), self.prep_h(h)
        c0 = self.s5h(h0) + self.s3p(h0)
        c1 = self.s5p(p) + self.s3p2(p)
        c2 = self.avg(h0) + p
        c3 = self.avg(p) + self.avg(p)
        c4 = self.s3h(h0) + h0
        return torch.cat([p, c0, c1, c2, c3, c4], 1), h


class ReductionCell(nn.Module):
    def __init__(self, cin: int, ch: int) -> None:
        super().__init__()
        self.prep = nn.Sequential(nn.ReLU(), nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch))
        self.s5, self.s7 = SepConv(ch, 5, 2), SepConv(ch, 7, 2)
        self.max = nn.MaxPool2d(3, 2, 1)
        self.s3 = SepConv(ch, 3, 2)
        self.avg = nn.AvgPool2d(3, 2, 1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prep(x)
        return torch.cat([self.s5(x) + self.s7(x), self.max(x) + self.s3(x), self.avg(x) + self.max(x)], 1)


class NasNetLike(nn.Module):
    """Stem, then per stage N normal cells and a reduction cell (NASNet-A mobile, 4 @ 44, shortened to 2 per stage)."""

    def __init__(self, ch: int = 44, cells_per_stage: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                  ReductionCell(32, ch))
        stages: list[nn.Module] = []
        cin_prev = cin = 3 * ch
        for stage in range(3):
            width = ch * 2 ** stage
            for _ in range(cells_per_stage):
                stages.append(NormalCell(cin_prev, cin, width))
                cin_prev, cin = cin, 6 * width
            if stage < 2:
                stages.append(ReductionCell(cin, 2 * width))
                cin_prev = cin = 3 * 2 * width
        self.cells = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = p = self.stem(x)
        for cell in self.cells:
            if isinstance(cell, NormalCell):
                h, p = cell(h, p)
            else:
                h = p = cell(h)
        return self.head(h)


def chain_network() -> nn.Module:
    arch = sample_archs("proxyless-mobile", 1, seed=0, resolution=224, num_classes=1000)[0]
    return build_model(arch)


def inception_mobile(resolution: int) -> Callable[[], nn.Module]:
    """A network of the multi-branch space (an arch sampled from it standing in for a searched one)."""
    def build() -> nn.Module:
        return build_model(sample_archs("inception-mobile", 1, seed=0, resolution=resolution, num_classes=10)[0])
    return build


NETWORKS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "inception_v3": (inception_v3, 299),
    "nasnet_like": (NasNetLike, 224),
    "squeezenet": (squeezenet, 224),
    "proxyless_chain": (chain_network, 224),
    # The multi-branch space at a job's sizes: digits (8 px) and a 64 px upload.
    "inception_mobile_8": (inception_mobile(8), 8),
    "inception_mobile_64": (inception_mobile(64), 64),
}


def network_onnx(name: str) -> tuple[Any, tuple[int, ...]]:
    """The network as an ONNX model at batch 1 (seeded random weights) and its input shape."""
    build, resolution = NETWORKS[name]
    torch.manual_seed(0)
    shape = (1, 3, resolution, resolution)
    return export_module_onnx(build().eval(), shape), shape


def export_networks(names: list[str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        model, shape = network_onnx(name)
        path = directory / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        print(f"{path}: input {shape}, {len(model.graph.node)} nodes")


def side_by_side(runs: dict[str, Callable[[], object]], rounds: int, number: int) -> dict[str, float]:
    """Median over rounds of ms per run; methods interleaved within each round."""
    for fn in runs.values():  # warm-up 2, as for stages
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append(1000 * (time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_network(name: str, threads: int, number: int, repeat: int, rounds: int, backend: str,
                  max_states: int) -> dict[str, Any]:
    """One row of the table: counts, the search's figures and ms per inference of each method."""
    model, shape = network_onnx(name)
    graph = graph_from_onnx(model)
    # Any: the two programs share their interface (stage, feed, run_sequential) but not a base class.
    program: Any = OrtModelProgram(model, threads) if backend == "ort" else OnnxModelProgram(model)
    x = torch.randn(shape) if backend == "torch" else torch.randn(shape).numpy()
    executor = CpuExecutor(threads=threads)
    try:
        measurer = LocalStageMeasurer(program, [x], executor, warmup=2, number=number, repeat=repeat)
        cost = MemoisedStageCost(measurer)
        start = time.perf_counter()
        ios = ios_schedule(graph, cost, IOSSettings(max_states=max_states))
        search_s = time.perf_counter() - start
        scheduled = {s.method: ScheduledModel(program, schedule_to_json(s, graph))
                     for s in (sequential_schedule(graph), greedy_schedule(graph), ios)}
        reference = np.asarray(program.run_sequential(x)[0])
        for method, runner in scheduled.items():
            diff = float(np.abs(np.asarray(runner(x, executor=executor)[0]) - reference).max())
            if diff > 1e-3 * max(1.0, float(np.abs(reference).max())):
                raise AssertionError(f"{name}: {method} differs from the sequential run by {diff}")
        feed = {"input": np.asarray(x)}
        model_bytes = model.SerializeToString()
        ort_seq, ort_par = (whole_graph_session(model_bytes, False, threads),
                            whole_graph_session(model_bytes, True, threads))
        figures = side_by_side({
            "sequential": lambda: scheduled["sequential"](x, executor=executor),
            "greedy": lambda: scheduled["greedy"](x, executor=executor),
            "ort_sequential": lambda: ort_seq.run(None, feed),
            "ort_parallel": lambda: ort_par.run(None, feed),
            "ios": lambda: scheduled["ios"](x, executor=executor),
            # The sequential schedule once more: the noise floor of this machine.
            "sequential_again": lambda: scheduled["sequential"](x, executor=executor),
        }, rounds, max(1, number))
    finally:
        executor.close()
    return {"net": name, "ops": len(graph), "stages": len(ios.stages),
            "merges": sum(s.kind == "merge" for s in ios.stages),
            "max_groups": max(len(s.groups) for s in ios.stages), "measured": cost.measured, "reused": cost.reused,
            "search_s": search_s, "estimated_ios": ios.estimated_ms, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default=",".join(NETWORKS), help=f"comma-separated, of {', '.join(NETWORKS)}")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads the executor owns (cores here: 2)")
    parser.add_argument("--number", type=int, default=2, help="runs per round of a stage measurement (paper: 6)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of a stage measurement (paper: 6)")
    parser.add_argument("--max-states", type=int, default=300,
                        help="DP states per part (IOSSettings.max_states, default 20000): bounds the stages to measure")
    parser.add_argument("--backend", choices=("ort", "torch"), default="ort",
                        help="kernels of the scheduled runs: ONNX Runtime per-op sessions or PyTorch")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the side-by-side timing")
    parser.add_argument("--export-onnx", type=Path, metavar="DIR",
                        help="only write each network as DIR/<network>.onnx (batch 1, random weights) and stop; "
                             "e.g. for `automl schedule --device local-cpu --model DIR/inception_v3.onnx`")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.export_onnx:
        export_networks(args.nets.split(","), args.export_onnx)
        return
    np.random.seed(0)
    rows = [bench_network(name, args.threads, args.number, args.repeat, args.rounds, args.backend, args.max_states)
            for name in args.nets.split(",")]
    print(f"\nbatch 1, {args.backend} kernels, {args.threads} threads, max_states {args.max_states}, "
          f"stage runs warm-up 2 + {args.number} x {args.repeat}, "
          f"{args.rounds} interleaved rounds (median); ms per inference")
    header = (f"{'network':16} {'ops':>4} {'stages':>6} {'merge':>5} {'seq':>8} {'greedy':>8} {'ort seq':>8} "
              f"{'ort par':>8} {'IOS':>8} {'IOS/seq':>7} {'IOS/grd':>7} {'IOS/ortp':>8} {'seq/seq':>7} {'est IOS':>8} "
              f"{'measured':>8} {'search s':>8}")
    print(header)
    for r in rows:
        print(f"{r['net']:16} {r['ops']:>4} {r['stages']:>6} {r['merges']:>5} {r['sequential']:8.2f} "
              f"{r['greedy']:8.2f} {r['ort_sequential']:8.2f} {r['ort_parallel']:8.2f} {r['ios']:8.2f} "
              f"{r['sequential'] / r['ios']:7.2f} {r['greedy'] / r['ios']:7.2f} {r['ort_parallel'] / r['ios']:8.2f} "
              f"{r['sequential_again'] / r['sequential']:7.2f} {r['estimated_ios']:8.2f} {r['measured']:>8} "
              f"{r['search_s']:8.1f}")
    print("IOS/x = x's latency / IOS's (above 1: IOS is faster). seq/seq: the sequential schedule timed twice in "
          "the same rounds (the noise floor). est IOS: the sum of its stages' measured latencies. "
          "'measured': distinct stages timed for the search.")


if __name__ == "__main__":
    main()
