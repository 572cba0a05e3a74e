"""On-device sparse-update fine-tuning with ONNX Runtime training.

Runs in its own environment (``.venv-ort-training``: onnxruntime-training-cpu,
onnx and numpy from ``requirements.txt``; no PyTorch, nothing of the server),
because onnxruntime-training and the server's onnxruntime overwrite each other.
``artifacts.generate`` builds the training, eval and optimizer models and the
checkpoint from an inference model with only the named parameters trainable;
``finetune.fine_tune`` runs the steps; ``python -m device_agents.ort_training``
does both and writes a result JSON.
"""
from __future__ import annotations

from device_agents.ort_training.artifacts import ArtifactPaths, generate
from device_agents.ort_training.finetune import FineTuneRun, StepRecord, batch_indices, fine_tune

__all__ = ["ArtifactPaths", "FineTuneRun", "StepRecord", "batch_indices", "fine_tune", "generate"]
