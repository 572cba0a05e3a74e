"""The machine around a measurement: what ``method.measure`` sets up and reads
besides the clock. CPU affinity for every thread of the process, the garbage
collector paused during timed blocks, and the device's temperature.

Kept apart from the timing loops (``method``) so that each file has one job;
``method`` re-exports ``cpu_affinity`` and ``read_temperature_c`` for the
import paths that name them there.
"""
from __future__ import annotations

import contextlib
import gc
import glob
import os
import threading
from collections.abc import Iterator

THERMAL_GLOB = "/sys/class/thermal/thermal_zone*/temp"


def read_temperature_c(pattern: str = THERMAL_GLOB) -> float | None:
    """The hottest readable thermal zone in degrees Celsius, or None where none can be read (VMs, containers)."""
    readings = []
    for path in glob.glob(pattern):
        try:
            with open(path) as zone:
                readings.append(int(zone.read().strip()) / 1000.0)  # the kernel reports millidegrees
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None


@contextlib.contextmanager
def cpu_affinity(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Pin every thread of this process to ``cpus`` for the block, then restore each thread's own mask.

    All threads, not just the caller: runtimes run ops on thread pools made
    before the measurement starts (torch's OpenMP pool, an ONNX Runtime
    session's), and pinning only the calling thread would leave them roaming.
    Threads started inside the block inherit the pinned mask and are given
    the caller's original mask on the way out (a runtime may keep a pool it
    started there). None leaves the affinity as it is.
    """
    if cpus is None:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"CPU affinity {list(cpus)} was requested, but this platform cannot set it")
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise ValueError(
            f"CPU affinity {list(cpus)} names CPUs {outside} this process may not use; allowed: {sorted(allowed)}"
        )
    saved: dict[int, set[int]] = {}
    try:
        for tid in _thread_ids():
            try:
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread ended meanwhile
                saved.pop(tid, None)
        yield
    finally:
        caller_mask = saved.get(0, allowed)
        for tid in _thread_ids():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, saved.get(tid, caller_mask))


def _thread_ids() -> list[int]:
    # 0 is the calling thread; it goes first so that threads it starts meanwhile inherit the new mask.
    own = threading.get_native_id()
    try:
        others = [int(name) for name in os.listdir("/proc/self/task") if int(name) != own]
    except OSError:  # no procfs: only the calling thread can be pinned
        others = []
    return [0, *others]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Garbage collection off for the block, then as it was."""
    # As timeit does: a collection in the middle of a block would be charged to the op.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
