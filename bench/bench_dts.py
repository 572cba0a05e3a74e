"""Scalability of synchronous SGD vs delayed and temporally sparse SGD (DTS)
over an emulated slow link, side by side in one run.

J = 2 workers, one per network namespace (``netem.SlowNetwork``: TAP delay
bridge + tbf), at each RTT of ``--rtts`` and ``--rate`` Mb/s. For each mode:

    scalability = throughput(J) / (J * throughput(1))

with throughput(1) one worker on this host (no network), throughput in
images per second of an epoch (every step plus the epoch's drain of
in-flight synchronisations). Accuracy after equal epochs is measured once per
mode on loopback, with DGC's sparsity warm-up (the throughput runs send the
target density throughout): the update rule's result does not depend on the network's
timing (the same arithmetic happens, only later), so the RTT changes speed,
not accuracy.

Every worker has ONE intra-op thread. On this 2-core machine, shared with
other work, two workers already compete for the cores, so the compute-bound
ceiling (J workers with no network cost) is printed too: the share of it a
mode keeps is what carries to real hosts, where each worker has its own
machine and the ceiling is ~1.

    .venv/bin/python bench/bench_dts.py                                   # digits, tiny space
    .venv/bin/python bench/bench_dts.py --dataset mnist-5k --space proxyless-mobile --resolution 32

Needs root (network namespaces); see automl_server/engine/train/distributed/netem.py.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from automl_server.datasets.bundled import build_digits, build_mnist_5k  # noqa: E402
from automl_server.engine.data import SplitData, split_arrays  # noqa: E402
from automl_server.engine.train.distributed.launch import (  # noqa: E402
    Node,
    nodes_across_hosts,
    run_workers,
    torchrun_command,
    write_spec,
)
from automl_server.engine.train.distributed.netem import SlowNetwork  # noqa: E402
from automl_server.engine.train.distributed.settings import DelayedSGDSettings  # noqa: E402
from search_spaces import Arch, build_model, get_space  # noqa: E402

MODES = {  # name: (delay, period, compression)
    "sync SGD": (0, 1, None),
    "DTS (4,4,1%)": (4, 4, 0.01),
    "DTS (8,8,1%)": (8, 8, 0.01),
}
SEED_FIGURES = "seed (Zhu et al., 4 sites, ~300 ms, ~15 Mb/s): DTS 0.72 vs sync 0.02"


def load_data(name: str, resolution: int | None) -> SplitData:
    path = Path(tempfile.mkdtemp()) / "data.npz"
    (build_mnist_5k if name == "mnist-5k" else build_digits)(path)
    arrays = np.load(path)
    x, y = arrays["x"], arrays["y"]
    if resolution and resolution != x.shape[1]:
        images = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=resolution,
                                                 mode="bilinear", align_corners=False)
        x = images.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return split_arrays(x, y, seed=0)


def make_model(space: str, data: SplitData) -> torch.nn.Module:
    layout = get_space(space).layout(data.resolution, data.num_classes, data.in_channels)
    blocks = tuple("mb3_k3" if "mb3_k3" in c.candidates else c.candidates[0] for c in layout.cells)
    torch.manual_seed(0)
    return build_model(Arch(space, data.resolution, data.num_classes, data.in_channels, blocks))


def run(data: SplitData, model: torch.nn.Module, work: Path, *, workers: int, mode: tuple[int, int, float | None],
        epochs: int, batch_size: int, net: SlowNetwork | None, warmup_epochs: int = 0) -> list[dict[str, Any]]:
    delay, period, compression = mode
    settings = DelayedSGDSettings(workers=workers, delay=delay, period=period, compression=compression,
                                  sparsity_warmup_epochs=warmup_epochs, collective_timeout_s=300)
    out = work / "dts"
    spec = write_spec(out / "spec.pt", model=model,
                      data={"x_train": data.x_train, "y_train": data.y_train, "x_holdout": data.x_holdout,
                            "y_holdout": data.y_holdout},
                      settings=settings.model_dump(), epochs=epochs, batch_size=batch_size, seed=0,
                      max_shift=max(1, data.resolution // 8))
    if net is None:
        nodes = [Node(torchrun_command(spec, nproc_per_node=workers))]
    else:
        nodes = nodes_across_hosts(spec, [net.exec_prefix(i) for i in range(workers)], net.addresses[0],
                                   interface=net.interface)
    events: list[dict[str, Any]] = []
    run_workers(nodes, out, on_event=events.append, check_cancelled=lambda: None)
    return [e for e in events if e["type"] == "epoch"]


def steady_throughput(rows: list[dict[str, Any]]) -> float:
    """Images per second, leaving out the first epoch when there are more (warm-up)."""
    return float(statistics.mean(r["images_per_s"] for r in (rows[1:] or rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist-5k"])
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--rtts", default="0,100,300")
    parser.add_argument("--rate", type=float, default=15.0, help="Mb/s")
    parser.add_argument("--throughput-epochs", type=int, default=2)
    parser.add_argument("--accuracy-epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_data(args.dataset, args.resolution)
    model = make_model(args.space, data)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.dataset} at {data.resolution}px, {len(data.y_train)} training images, space {args.space} "
          f"({params} parameters), J=2 x batch {args.batch_size}, 1 thread per worker")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = run(data, model, work / "j1", workers=1, mode=(0, 1, None), epochs=args.throughput_epochs,
                  batch_size=args.batch_size, net=None)
        thr1 = steady_throughput(one)
        ceiling_rows = run(data, model, work / "j2-loopback", workers=2, mode=(0, 1, None),
                           epochs=args.throughput_epochs, batch_size=args.batch_size, net=None)
        ceiling = steady_throughput(ceiling_rows) / (2 * thr1)
        print(f"throughput(1) = {thr1:.1f} img/s; J=2 sync SGD on loopback (compute-bound ceiling on this "
              f"host): scalability {ceiling:.2f}")
        table: dict[str, dict[int, tuple[float, float, float]]] = {m: {} for m in MODES}
        throughputs: dict[str, dict[int, float]] = {m: {} for m in MODES}
        for rtt in (int(r) for r in args.rtts.split(",")):
            with SlowNetwork(nodes=2, rtt_ms=rtt, rate_mbit=args.rate) as net:
                measured = net.measure(pings=5, seconds=1.0)
                print(f"link: asked RTT {rtt} ms, {args.rate} Mb/s; measured RTT {measured.rtt_ms:.1f} ms, "
                      f"{measured.bandwidth_mbit:.1f} Mb/s")
                for name, mode in MODES.items():
                    rows = run(data, model, work / f"{name}-{rtt}", workers=2, mode=mode,
                               epochs=args.throughput_epochs, batch_size=args.batch_size, net=net)
                    throughputs[name][rtt] = steady_throughput(rows)
                    table[name][rtt] = (0.0, rows[-1]["bytes_sent_per_step"], rows[-1]["comm_wait_share"])
        # throughput(1) again after the network runs: the host is shared, so the
        # reference is the mean of a measurement before and one after.
        again = steady_throughput(run(data, model, work / "j1-again", workers=1, mode=(0, 1, None),
                                      epochs=args.throughput_epochs, batch_size=args.batch_size, net=None))
        print(f"throughput(1) again after the network runs: {again:.1f} img/s; using the mean")
        thr1 = (thr1 + again) / 2
        for name in MODES:
            for rtt, value in throughputs[name].items():
                table[name][rtt] = (value / (2 * thr1), *table[name][rtt][1:])
        accuracy = {}
        for name, mode in MODES.items():
            rows = run(data, model, work / f"acc-{name}", workers=2, mode=mode, epochs=args.accuracy_epochs,
                       batch_size=args.batch_size, net=None, warmup_epochs=min(4, args.accuracy_epochs // 2))
            accuracy[name] = rows[-1]["holdout_accuracy"]

    rtts = sorted(next(iter(table.values())))
    print()
    print("| mode | " + " | ".join(f"scalability @ {r} ms" for r in rtts) + " | share of ceiling @ "
          f"{rtts[-1]} ms | bytes/step/worker | waiting share @ {rtts[-1]} ms | holdout acc. after "
          f"{args.accuracy_epochs} epochs |")
    print("|---" * (len(rtts) + 5) + "|")
    for name in MODES:
        cells = " | ".join(f"{table[name][r][0]:.2f}" for r in rtts)
        last = table[name][rtts[-1]]
        print(f"| {name} | {cells} | {last[0] / ceiling:.2f} | {last[1]:.0f} | {last[2]:.0%} | "
              f"{accuracy[name]:.3f} |")
    print(f"\n{SEED_FIGURES}")


if __name__ == "__main__":
    main()
