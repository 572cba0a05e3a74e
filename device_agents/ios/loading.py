"""The device side's entry point: an ONNX file and its schedule JSON, ready to run.

Its own module because it picks between the PyTorch program (``program.py``)
and the ONNX Runtime one (``ort_program.py``), which would otherwise import
each other.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch

from device_agents.ios.ort_program import OrtModelProgram
from device_agents.ios.program import OnnxModelProgram, ScheduledModel


def load_scheduled(model_path: Path | str, schedule_path: Path | str, device: torch.device | str = "cpu",
                   backend: str = "torch", threads: int = 1) -> ScheduledModel:
    """The device side's entry: an ONNX file and the schedule JSON beside it, run on
    PyTorch kernels (``backend="torch"``, CPU or CUDA) or ONNX Runtime's (``"ort"``, CPU)."""
    model = onnx.load(str(model_path))
    schedule = json.loads(Path(schedule_path).read_text())
    if backend == "ort":
        return ScheduledModel(OrtModelProgram(model, threads), schedule)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'ort', got {backend!r}")
    return ScheduledModel(OnnxModelProgram(model, device), schedule)
