"""Executors: how the groups of one stage run side by side.

CPU: the groups of a stage run on a pool of threads. Threads are split so the
stage never asks for more intra-op threads than the executor owns: with T
threads and g groups, group i gets T // g threads plus one for the first
T % g groups, and at least one (g > T oversubscribes, which the stage's
measured latency then shows and the scheduler avoids). The caller's thread
runs the first group (a stage of one group runs inline), the pool the
others. PyTorch's OpenMP
thread count is per calling thread (an OpenMP ICV), so each worker sets its own
with ``torch.set_num_threads``; ONNX Runtime kernels read the count through
``current_threads()``. On a CPU shared with other work, set
OMP_WAIT_POLICY=PASSIVE before torch loads: spinning OpenMP barriers on
oversubscribed cores cost several times the work (measured 4x here). Each worker enters inference mode
itself because grad mode is thread-local too.

CUDA: one stream per group (the reference's design). Each stream first waits
for the work queued before the stage, the host launches the groups in turn
(launches are asynchronous), and the caller's stream waits for every group's
stream before the next stage. Tensors stay referenced until the run ends, so
the caching allocator never recycles memory another stream still reads.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol

import torch

Task = Callable[[], None]


class Executor(Protocol):
    """What runs the groups of one stage (here so that both programs import it without a circle)."""

    def run(self, tasks: Sequence[Task]) -> None: ...


_current = threading.local()


def current_threads(default: int) -> int:
    """Intra-op threads the executor gave the group running on this thread
    (for kernels that take a count per call, as ONNX Runtime sessions do)."""
    return getattr(_current, "threads", None) or default


def split_threads(total: int, groups: int) -> list[int]:
    """Intra-op threads for each of ``groups`` concurrent groups out of ``total``."""
    return [max(1, total // groups + (1 if i < total % groups else 0)) for i in range(groups)]


class SequentialExecutor:
    """Runs the groups of a stage one after the other (the reference point)."""

    def run(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            task()

    def close(self) -> None:
        pass


class CpuExecutor:
    def __init__(self, threads: int | None = None, max_workers: int = 8) -> None:
        self.threads = threads or torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ios-group")
        self._local = threading.local()

    def _in_worker(self, task: Task, threads: int) -> None:
        _current.threads = threads
        if getattr(self._local, "threads", None) != threads:
            # Read first: a thread's first read initialises its count from the
            # process-wide value, which would otherwise overwrite ours later.
            torch.get_num_threads()
            torch.set_num_threads(threads)
            self._local.threads = threads
        with torch.inference_mode():
            task()

    def run(self, tasks: Sequence[Task]) -> None:
        if len(tasks) == 1:
            _current.threads = self.threads
            tasks[0]()
            return
        counts = split_threads(self.threads, len(tasks))
        # The caller runs the first group itself instead of idling on the others: one thread
        # hand-off fewer per stage, which is most of a stage's overhead when its operators are small.
        futures = [self._pool.submit(self._in_worker, task, n) for task, n in zip(tasks[1:], counts[1:])]
        try:
            self._on_caller(tasks[0], counts[0])
        finally:
            wait(futures)  # every group ends before an error propagates: no work outlives the stage
        for future in futures:
            future.result()

    def _on_caller(self, task: Task, threads: int) -> None:
        before = torch.get_num_threads()
        _current.threads = threads
        if before != threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                task()
        finally:
            _current.threads = self.threads
            if before != threads:
                torch.set_num_threads(before)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> CpuExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CudaExecutor:
    """One CUDA stream per group; needs a GPU (``torch.cuda.is_available()``)."""

    def __init__(self, device: str = "cuda", max_streams: int = 8) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CudaExecutor needs a CUDA device; torch.cuda.is_available() is False")
        self.device = torch.device(device)
        self.streams = [torch.cuda.Stream(device=self.device) for _ in range(max_streams)]

    def run(self, tasks: Sequence[Task]) -> None:
        if len(tasks) == 1:
            tasks[0]()
            return
        caller = torch.cuda.current_stream(self.device)
        ready = caller.record_event()
        used = []
        for i, task in enumerate(tasks):
            stream = self.streams[i % len(self.streams)]
            stream.wait_event(ready)
            with torch.cuda.stream(stream):
                task()
            used.append(stream)
        for stream in used:
            caller.wait_stream(stream)

    def close(self) -> None:
        pass

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)
