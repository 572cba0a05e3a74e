"""Training artifacts for ONNX Runtime training from an inference ONNX model:
training, eval and optimizer models and a checkpoint, with only the named
parameters trainable and a cross-entropy loss over the model's output.

Run as a module to generate them in a process of its own (``python -m
device_agents.ort_training.artifacts MODEL OUT_DIR NAME,NAME,...``): the
fine-tune's peak resident memory then excludes the graph building.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from device_agents.ort_training._runtime import training_artifacts

LABELS_NAME = "labels"


@dataclass(frozen=True)
class ArtifactPaths:
    directory: Path

    @property
    def training_model(self) -> Path:
        return self.directory / "training_model.onnx"

    @property
    def eval_model(self) -> Path:
        return self.directory / "eval_model.onnx"

    @property
    def optimizer_model(self) -> Path:
        return self.directory / "optimizer_model.onnx"

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint"

    def exist(self) -> bool:
        return all(p.exists() for p in (self.training_model, self.eval_model, self.optimizer_model, self.checkpoint))


def float_initializers(model: onnx.ModelProto) -> list[str]:
    return [init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT]


def generate(model_path: Path, trainable: list[str], out_dir: Path) -> ArtifactPaths:
    """Only ``trainable`` initializers get gradients and optimizer updates; every other
    float initializer is a frozen parameter of the checkpoint (readable, never updated).

    The loss is cross-entropy (softmax + mean negative log-likelihood, as
    ``torch.nn.functional.cross_entropy``) of the model's first output against
    int64 ``labels``; the logits stay an output of the training and eval models
    (for accuracy). The optimizer is plain SGD (ONNX Runtime's SGDOptimizerV2:
    no momentum, no weight decay), the reference's on-device setting."""
    artifacts = training_artifacts()
    model = onnx.load(str(model_path))
    params = float_initializers(model)
    unknown = sorted(set(trainable) - set(params))
    if unknown:
        raise ValueError(f"not float initializers of {model_path.name}: {unknown}; it has {len(params)} "
                         f"(e.g. {params[:3]})")
    if not trainable:
        raise ValueError("no trainable parameters named")
    frozen = [name for name in params if name not in set(trainable)]
    output = model.graph.output[0].name
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.WARNING)  # generate_artifacts logs every file at INFO
    artifacts.generate_artifacts(model, requires_grad=list(trainable), frozen_params=frozen,
                                 loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
                                 artifact_directory=str(out_dir), additional_output_names=[output])
    paths = ArtifactPaths(out_dir)
    if not paths.exist():
        raise RuntimeError(f"generate_artifacts wrote no complete set of artifacts in {out_dir}")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("trainable", help="comma-separated initializer names")
    args = parser.parse_args(argv)
    generate(args.model, [n for n in args.trainable.split(",") if n], args.out_dir)


if __name__ == "__main__":
    main()
