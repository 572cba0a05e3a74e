"""Import ONNX Runtime's training API without PyTorch.

``onnxruntime/training/__init__.py`` (1.19.2) imports ``training.optim``, which
imports ``torch`` (microsoft/onnxruntime#22070), although the on-device API
(``training.api``) and the artifact generator (``training.artifacts``,
``training.onnxblock``) never use it. A device has no PyTorch, so the package
is registered here as a bare namespace over its own folder: its submodules
import as usual and its ``__init__`` (the only place that needs torch) never runs.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

_PACKAGE = "onnxruntime.training"


def _bare_training_package() -> None:
    if _PACKAGE in sys.modules:
        return
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: the graph builders log every pass at INFO
    folder = os.path.join(os.path.dirname(onnxruntime.__file__), "training")
    if not os.path.isdir(folder):
        raise ImportError(f"{onnxruntime.__file__} is plain onnxruntime, without training: install "
                          "device_agents/ort_training/requirements.txt in its own environment "
                          "(`make ort-training-venv`)")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [folder]
    package.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = package
    setattr(onnxruntime, "training", package)


def training_api() -> Any:
    """``onnxruntime.training.api`` (CheckpointState, Module, Optimizer)."""
    _bare_training_package()
    return importlib.import_module(f"{_PACKAGE}.api")


def training_artifacts() -> Any:
    """``onnxruntime.training.artifacts`` (generate_artifacts, LossType, OptimType)."""
    _bare_training_package()
    return importlib.import_module(f"{_PACKAGE}.artifacts")
