"""A FedGKT train stage as a process of its own, for the test that kills it mid-round:

    python -m tests.engine.fedgkt.stage_process WORK_DIR ROUNDS
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from automl_server.engine.train.registry import get_pipeline

from .conftest import digits_split
from .test_flower_run import SMALL, FakeCallbacks, inputs_for

if __name__ == "__main__":
    torch.set_num_threads(1)
    pipeline = get_pipeline("fedgkt")
    pipeline.run(inputs_for(digits_split(), Path(sys.argv[1])),
                 pipeline.parse({**SMALL, "rounds": int(sys.argv[2])}), FakeCallbacks())
