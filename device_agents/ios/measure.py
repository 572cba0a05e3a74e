"""Stage latency on this machine, measured as the IOS paper measures it.

Warm-up runs, then ``repeat`` rounds of ``number`` runs each; the latency is
the mean over rounds of each round's mean (the reference's IOSCostModel:
warmup 2, number 6, repeat 6). The stage's inputs are the real tensors of one
sequential run of the model, computed once.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from device_agents.ios.executor import Executor

if TYPE_CHECKING:
    import numpy as np


class LocalStageMeasurer:
    """``measurer(stage) -> ms`` for the scheduler; ``stage`` is a Stage (``to_dict()``) or its dict.
    ``program`` is an OnnxModelProgram or an OrtModelProgram: stages are timed on the kernels they will run on."""

    def __init__(self, program: Any, inputs: Sequence[torch.Tensor | np.ndarray], executor: Executor,
                 warmup: int = 2, number: int = 6, repeat: int = 6) -> None:
        if warmup < 0 or number < 1 or repeat < 1:
            raise ValueError(f"need warmup >= 0, number >= 1, repeat >= 1; got {warmup}, {number}, {repeat}")
        self.program = program
        self.executor = executor
        self.warmup, self.number, self.repeat = warmup, number, repeat
        self.env = program.all_tensors(*inputs)
        self.calls = 0

    def __call__(self, stage: Any) -> float:
        spec: Mapping[str, Any] = stage.to_dict() if hasattr(stage, "to_dict") else stage
        runnable = self.program.stage(spec["kind"], spec["groups"], spec["ops"])
        env = dict(self.env)
        self.calls += 1
        sync = torch.cuda.synchronize if str(self.program.device).startswith("cuda") else (lambda: None)
        with torch.inference_mode():
            for _ in range(self.warmup):
                runnable.run(env, self.executor)
            sync()
            rounds = []
            for _ in range(self.repeat):
                start = time.perf_counter()
                for _ in range(self.number):
                    runnable.run(env, self.executor)
                sync()
                rounds.append((time.perf_counter() - start) / self.number)
        return 1000.0 * sum(rounds) / len(rounds)


def time_runs(fn: Any, warmup: int = 2, number: int = 6, repeat: int = 6) -> float:
    """Mean milliseconds per call of ``fn()`` in the same shape (for whole networks)."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return 1000.0 * sum(rounds) / len(rounds)
