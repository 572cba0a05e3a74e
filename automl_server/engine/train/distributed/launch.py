"""Start torchrun as a child process, follow rank 0's events, end every process it started.

torchrun is started with ``subprocess.Popen`` (a Celery prefork child may not
fork multiprocessing children, and torchrun is the engine that runs, watches
and restarts the workers). Whatever happens in the caller (a cancel raised
by a callback, an error, success) the ``finally`` ends the group: SIGTERM to
each torchrun's process group, then SIGKILL to what is left, then SIGKILL to
every worker by the pid it wrote (torchrun starts workers in their own
sessions, so a signal to its group does not reach them). Workers also stop
by themselves within a step when their torchrun or the launcher disappears.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_server.engine.train.distributed.worker import WATCH_PID_ENV

_REPO_ROOT = Path(__file__).resolve().parents[4]  # so workers import this package however it is installed


class WorkerGroupFailed(RuntimeError):
    """torchrun ended without the workers finishing; the message holds its log's tail."""


def write_spec(path: Path, *, model: nn.Module, data: dict[str, torch.Tensor], settings: dict[str, Any],
               epochs: int, batch_size: int, seed: int, max_shift: int) -> Path:
    """The file every worker reads: network, data (the whole training split; each
    worker takes its shard of every global batch), settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "data": {k: v.detach().cpu().contiguous() for k, v in data.items()},
                "settings": settings, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                "max_shift": max_shift}, path)
    return path


def torchrun_command(spec_path: Path, *, nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                     master: tuple[str, int] | None = None, max_restarts: int = 0) -> list[str]:
    """The torchrun command of one node (one host by default: standalone rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
           f"--max-restarts={max_restarts}"]
    if master is None:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master[0]}",
                f"--master-port={master[1]}"]
    return cmd + ["-m", "automl_server.engine.train.distributed.worker", str(spec_path)]


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                             if p])
    env.setdefault("OMP_NUM_THREADS", "1")  # one intra-op thread per worker
    env[WATCH_PID_ENV] = str(os.getpid())
    env.update(extra or {})
    return env


@dataclass
class Node:
    """One torchrun: its command and the environment it adds."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _read_new_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], offset
    with open(path) as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[:chunk.rfind("\n") + 1]  # a line still being written waits for the next poll
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)


def _kill_all(procs: list[subprocess.Popen[bytes]], pid_dir: Path, spec_marker: bytes, grace_s: float = 3.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # torchrun ends its workers on SIGTERM
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    for pid_file in pid_dir.glob("rank*.pid") if pid_dir.exists() else []:
        try:
            pid = int(pid_file.read_text())
            # Only a worker of this run (its command line names our spec), never a reused pid.
            if spec_marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)


def run_workers(nodes: Sequence[Node], out_dir: Path, *, on_event: Callable[[dict[str, Any]], None],
                check_cancelled: Callable[[], None], poll_s: float = 0.2) -> None:
    """Run the torchrun nodes to the end, handing rank 0's events to ``on_event``.

    ``check_cancelled``/``on_event`` may raise to cancel: every process is
    ended before the exception leaves. Raises WorkerGroupFailed if a torchrun
    fails (after its restarts)."""
    events_path, pid_dir = out_dir / "events.jsonl", out_dir / "pids"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [open(out_dir / f"torchrun-{i}.log", "wb") for i in range(len(nodes))]
    offset = events_path.stat().st_size if events_path.exists() else 0
    try:
        for node, log in zip(nodes, logs):
            procs.append(subprocess.Popen(node.command, env=worker_env(node.env), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        while True:
            new, offset = _read_new_events(events_path, offset)
            for event in new:
                on_event(event)
            check_cancelled()
            codes = [p.poll() for p in procs]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                log_tail = (out_dir / f"torchrun-{failed[0]}.log").read_text(errors="replace")[-3000:]
                raise WorkerGroupFailed(f"torchrun exited with {codes[failed[0]]}:\n{log_tail}")
            if all(code == 0 for code in codes):
                new, offset = _read_new_events(events_path, offset)
                for event in new:
                    on_event(event)
                return
            time.sleep(poll_s)
    finally:
        _kill_all(procs, pid_dir, str(out_dir / "spec.pt").encode())
        for log in logs:
            log.close()


def nodes_across_hosts(spec_path: Path, prefixes: Sequence[list[str]], master_addr: str, *, interface: str,
                       nproc_per_node: int = 1, port: int = 29500, max_restarts: int = 0) -> list[Node]:
    """One torchrun per emulated host (``prefixes``: e.g. ``ip netns exec NS``),
    the multi-host command of ``worker``'s docstring with a static rendezvous."""
    return [Node(prefix + torchrun_command(spec_path, nproc_per_node=nproc_per_node, nnodes=len(prefixes),
                                           node_rank=i, master=(master_addr, port), max_restarts=max_restarts),
                 env={"GLOO_SOCKET_IFNAME": interface})
            for i, prefix in enumerate(prefixes)]
