"""Export a trained network to ONNX (one file) and TFLite, and check each
export computes what the PyTorch model computes.

ONNX uses the TorchScript-based exporter with opset 17: it writes a single
self-contained file (the dynamo exporter may spill weights to external data).
TFLite uses the device agents' flatbuffer writer, which expresses every op
of the search spaces (conv + folded BatchNorm + ReLU6, depthwise conv, add,
mean, fully connected) without TensorFlow; ``litert-torch`` (the optional
``tflite`` extra) converts anything else. The writer is passed in by the
caller (the job's export stage), so the engine never imports the agent and
keeps no second copy of it.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

ONNX_OPSET = 17


@dataclass(frozen=True)
class ExportCheck:
    path: Path
    max_abs_diff: float  # largest |runtime - torch| over the check images' logits
    agree_top1: float  # share of check images with the same predicted class


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int, int], path: Path, *,
                dynamic_batch: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as one ONNX file (input "input", output "logits").

    ``dynamic_batch``: the first dimension of both is named ``batch`` and any
    batch size runs; False keeps ``input_shape``'s batch fixed. The latency
    is still measured at batch 1 (the agents feed 1 for a named dimension).
    ``metadata``: strings written into the file's ``metadata_props`` (e.g.
    ``labels`` and ``preprocessing`` as JSON), which any ONNX runtime reads
    (onnxruntime: ``session.get_modelmeta().custom_metadata_map``)."""
    model.eval()
    example = torch.zeros(input_shape)
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dynamic_axes)
    if metadata:
        write_onnx_metadata(path, metadata)
    return path


def write_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` entries of the ONNX file at ``path`` (others are kept)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def check_onnx(model: nn.Module, path: Path, images: torch.Tensor) -> ExportCheck:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # Image by image: a static-batch export takes batch 1 only.
    got = np.concatenate([session.run(None, {"input": image[None].numpy().astype(np.float32)})[0]
                          for image in images])
    return _compare(model, images, got, path)


class TFLiteWriter(Protocol):
    def __call__(self, module: nn.Module, input_shape: tuple[int, ...], path: Path, *,
                 metadata: dict[str, bytes] | None = None) -> Path: ...


def export_tflite(model: nn.Module, input_shape: tuple[int, int, int, int], path: Path,
                  writer: TFLiteWriter, metadata: dict[str, str] | None = None) -> tuple[Path, str]:
    """Returns the path and the converter used ("builtin" or "litert-torch").

    ``writer`` is the built-in TFLite writer (``device_agents.profiling.tflite_writer.write_tflite``,
    which the agent also uses to build op models); it is passed in so that the
    engine never imports the agent. A NotImplementedError from it (a module it
    cannot write) falls back to litert-torch where that is installed.
    ``metadata``: named entries of the model's metadata table (the built-in
    writer only; see ``tflite_metadata``)."""
    model.eval()
    try:
        entries = {k: v.encode() for k, v in (metadata or {}).items()}
        return writer(model, input_shape, path, metadata=entries or None), "builtin"
    except NotImplementedError:
        if importlib.util.find_spec("litert_torch") is None:
            raise
    import litert_torch

    litert_torch.convert(model, (torch.zeros(input_shape),)).export(str(path))
    return path, "litert-torch"


def tflite_metadata(path: Path) -> dict[str, bytes]:
    """The named entries of a TFLite file's metadata table (``Model.metadata``: name -> buffer)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = (entry.Name() or b"").decode()
        buffer = model.Buffers(entry.Buffer())
        entries[name] = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return entries


def check_tflite(model: nn.Module, path: Path, images: torch.Tensor) -> ExportCheck:
    """Runs the TFLite model image by image (its input is NHWC, batch 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image.permute(1, 2, 0).unsqueeze(0).numpy().astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]).reshape(-1))
    return _compare(model, images, np.stack(rows), path)


def _compare(model: nn.Module, images: torch.Tensor, got: np.ndarray, path: Path) -> ExportCheck:
    model.eval()
    with torch.no_grad():
        expected = model(images).numpy()
    return ExportCheck(path=path, max_abs_diff=float(np.abs(got - expected).max()),
                       agree_top1=float((got.argmax(1) == expected.argmax(1)).mean()))


def count_macs(model: nn.Module, input_shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of one inference (convolutions and linear layers)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: object, _output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape[1:]))
    for handle in handles:
        handle.remove()
    return int(total)
