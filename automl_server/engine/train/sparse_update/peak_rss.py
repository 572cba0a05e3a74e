"""Peak resident memory of one training step, measured in a fresh process.

The parent writes the network, the batch and the variants to a file and runs
``python -m automl_server.engine.train.sparse_update.peak_rss IN OUT``. The
child, per variant: applies the scheme, runs one warm-up step (optimizer
state and allocator pools settle), then resets the kernel's high-water mark
(``/proc/self/clear_refs`` = 5), runs one step and reports VmHWM minus the
resident memory before it: what the step itself added at its peak.
``MALLOC_MMAP_THRESHOLD_`` is fixed so that freed tensors go back to the
system and one variant's leftovers do not hide the next one's peak.

Linux only (``/proc``); elsewhere the measurement is reported as unavailable.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.scheme import SparseScheme
from automl_server.engine.train.sparse_update.updater import SparseUpdater


@dataclass(frozen=True)
class Variant:
    label: str
    scheme: SparseScheme
    reorder: bool
    plain_autograd: bool = False


def _status_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _step(net: SparseNet, updater: SparseUpdater, x: torch.Tensor, y: torch.Tensor) -> None:
    updater.step(F.cross_entropy(net(x), y))


def _measure_variant(base: SparseNet, variant: Variant, x: torch.Tensor, y: torch.Tensor,
                     lr: float, momentum: float) -> int:
    net = copy.deepcopy(base)
    net.apply_scheme(variant.scheme, plain_autograd=variant.plain_autograd)
    updater = SparseUpdater(net.trainable_parameters(), lr=lr, momentum=momentum, reorder=variant.reorder)
    _step(net, updater, x, y)  # warm-up
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    _step(net, updater, x, y)
    peak = _status_kb("VmHWM")
    updater.close()
    del net, updater
    gc.collect()
    return max(peak - before, 0)


def _child(payload_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    payload = torch.load(payload_path, weights_only=False)
    results = {v.label: _measure_variant(payload["net"], v, payload["x"], payload["y"], payload["lr"],
                                         payload["momentum"]) for v in payload["variants"]}
    Path(out_path).write_text(json.dumps(results))


def measure_peak_rss_kb(net: SparseNet, variants: list[Variant], x: torch.Tensor, y: torch.Tensor, *,
                        lr: float, momentum: float, timeout_s: float = 600.0,
                        check_cancelled: Callable[[], None] | None = None) -> dict[str, int] | None:
    """Peak kB a step of each variant adds, from one fresh child process; None where
    /proc is unavailable. The child never outlives this call (cancelled or not)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="sparse-rss-") as tmp:
        payload, out = Path(tmp) / "payload.pt", Path(tmp) / "out.json"
        frozen = copy.deepcopy(net)
        frozen.restore(frozen.snapshot())  # a frozen copy travels; each variant applies its own scheme
        torch.save({"net": frozen, "variants": variants, "x": x, "y": y, "lr": lr, "momentum": momentum}, payload)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
        errors = open(Path(tmp) / "stderr.txt", "w+b")  # a file, not a pipe: a chatty child cannot block
        process = subprocess.Popen([sys.executable, "-m", __name__, str(payload), str(out)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=errors)
        try:
            deadline = time.monotonic() + timeout_s
            while process.poll() is None:
                if check_cancelled is not None:
                    check_cancelled()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"peak-memory measurement took over {timeout_s:.0f} s")
                time.sleep(0.1)
            if process.returncode != 0:
                errors.seek(0)
                stderr = errors.read().decode(errors="replace")
                raise RuntimeError(f"peak-memory child failed ({process.returncode}): {stderr[-2000:]}")
            result: dict[str, int] = json.loads(out.read_text())
            return result
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            errors.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
