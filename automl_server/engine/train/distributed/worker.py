"""torchrun's entry point: one data-parallel worker.

    python -m torch.distributed.run --nproc-per-node J \
        -m automl_server.engine.train.distributed.worker WORK_DIR/dts/spec.pt

The spec file (written by ``launch.write_spec``) holds the network, the data,
the settings and where to write. Rank 0 appends its progress and per-epoch
rows to ``events.jsonl`` beside the spec and, at the end, the trained weights
to ``final.pt``. A file ``stop`` beside the spec ends the run at the next
epoch's end (the job's budget of minutes is spent). Every rank writes its pid to ``pids/`` so the launcher can
end it by its id.

Across hosts (the same spec file on every host, e.g. on a shared volume; the
master's address reachable by all), run on host k of H:

    python -m torch.distributed.run --nnodes H --node-rank k --nproc-per-node J \
        --master-addr HOST0 --master-port 29500 \
        -m automl_server.engine.train.distributed.worker /shared/job/dts/spec.pt

(set GLOO_SOCKET_IFNAME to the interface that joins the hosts, and
OMP_NUM_THREADS to the threads each worker may use).
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from automl_server.engine.train.distributed.collective import TorchCollective
from automl_server.engine.train.distributed.loop import LoopSpec, train_worker
from automl_server.engine.train.distributed.settings import DelayedSGDSettings
from automl_server.engine.train.processes import alive

# Set by the launcher on the launching host: a worker whose launcher is gone stops.
WATCH_PID_ENV = "AUTOML_DTS_WATCH_PID"


class Orphaned(RuntimeError):
    """The launching process or this worker's torchrun agent is gone."""


def _append_event(path: Path, event: dict[str, Any]) -> None:
    with open(path, "a") as fh:  # one short line per write: a reader never sees half an event
        fh.write(json.dumps(event) + "\n")


def main(spec_path: str) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec: dict[str, Any] = torch.load(spec_path, weights_only=False)
    out_dir = Path(spec_path).parent
    settings = DelayedSGDSettings.model_validate(spec["settings"])
    backend = settings.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=settings.collective_timeout_s))
    rank = dist.get_rank()
    (out_dir / "pids").mkdir(exist_ok=True)
    (out_dir / "pids" / f"rank{rank}.pid").write_text(str(os.getpid()))
    parent = os.getppid()
    watch = int(os.environ.get(WATCH_PID_ENV, "0"))
    events = out_dir / "events.jsonl"
    last_report = 0.0

    def on_step(epoch: int, step: int, steps: int) -> None:
        nonlocal last_report
        # Within a step of a cancel or a crash of whoever started us.
        if os.getppid() != parent or (watch and not alive(watch)):
            raise Orphaned("the launcher is gone")
        if rank == 0 and time.monotonic() - last_report > 0.5:
            last_report = time.monotonic()
            _append_event(events, {"type": "progress", "epoch": epoch, "step": step + 1, "steps": steps})

    def on_epoch(row: dict[str, Any]) -> None:
        if rank == 0:
            _append_event(events, {"type": "epoch", **row})

    model = spec["model"].to(device)
    data = {k: v.to(device) for k, v in spec["data"].items()}
    loop = LoopSpec(settings=settings, epochs=spec["epochs"], batch_size=spec["batch_size"], seed=spec["seed"],
                    max_shift=spec["max_shift"], checkpoint_dir=out_dir)
    try:
        train_worker(model, data, loop, TorchCollective(), on_step=on_step, on_epoch=on_epoch,
                     stop_requested=(out_dir / "stop").exists)
        if rank == 0:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_dir / "final.pt.tmp")
            os.replace(out_dir / "final.pt.tmp", out_dir / "final.pt")
            _append_event(events, {"type": "done"})
    finally:
        (out_dir / "pids" / f"rank{rank}.pid").unlink(missing_ok=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
