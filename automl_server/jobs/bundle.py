"""What an app needs to use a job's model: the class names in output order,
the preprocessing the training applied, and the deployment bundle (one zip:
the models, those two files, the report and two short examples).

The export stage computes ``labels`` and ``preprocessing`` (``deployment_info``)
and writes them into the ONNX metadata and the TFLite metadata table; the
bundle is built when it is requested (``build_bundle``), from the job's stored
files: the files are small (a model of the search spaces is kilobytes to a
few megabytes), a zip at the report stage would keep a second copy of each,
and a bundle built on request always holds the files the job has now.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).parent / "bundle_files"
PYTHON_EXAMPLE = "example_onnxruntime.py"
ANDROID_EXAMPLE = "android/Classifier.kt"

README = """\
Deployment bundle of job {job_id}: {dataset} on {device} ({runtime}), space {space}.
Test accuracy {accuracy}; measured latency {measured} per image on {device}.

model.onnx              the model for ONNX Runtime (opset {opset}); input "{input_name}" float32 NCHW
                        {onnx_shape}, output "logits" (one score per class, labels.json order).
                        labels and preprocessing are also in its metadata (metadata_props).
{tflite_line}labels.json             the class names, in the order of the model's outputs.
preprocessing.json      how to turn an image into the model's input, exactly as the training did:
                        {channel_words}, resized to {height}x{width} (bilinear), pixels * {scale:.6g}, then
                        (x - mean) / std per channel (mean and std of the training images).
report.json             the job's report: accuracy, predicted and measured latency, size, the architecture.
example_onnxruntime.py  classifies one image:  pip install onnxruntime numpy pillow
                        python example_onnxruntime.py IMAGE_FILE   (prints the label and its probability)
android/Classifier.kt   the same with LiteRT on Android (Kotlin; the file's comments say how to add it to an app).
"""


def deployment_info(classes: list[str], normalisation: dict[str, Any], input_shape: tuple[int, ...],
                    static_batch: bool) -> tuple[list[str], dict[str, Any]]:
    """The labels (class names in output order) and the preprocessing of a model
    trained on images of ``input_shape`` (NCHW) normalised with ``normalisation``
    (the train stage's ``mean``, ``std`` of pixels scaled by 1/255)."""
    _n, channels, height, width = (int(v) for v in input_shape)
    preprocessing = {
        "input_name": "input",
        "output_name": "logits",
        "height": height,
        "width": width,
        "channels": channels,
        # Uploaded images are decoded to RGB (or grayscale, "L": ITU-R 601-2 luma) by Pillow;
        # .npz arrays are taken in the channel order they hold.
        "channel_order": "RGB" if channels == 3 else ("grayscale" if channels == 1 else "as stored"),
        "resize": "bilinear",
        "scale": 1.0 / 255.0,
        "mean": [float(v) for v in normalisation["mean"]],
        "std": [float(v) for v in normalisation["std"]],
        "formula": "x = (pixel * scale - mean[c]) / std[c]",
        "layout": {"onnx": "NCHW", "tflite": "NHWC"},
        "dtype": "float32",
        "batch": {"onnx": 1 if static_batch else "any", "tflite": 1},
        "output": "logits; softmax gives the probabilities; output i is labels[i]",
    }
    return list(classes), preprocessing


def deployment_of(job_dir: Path, result: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The labels and preprocessing of a job's export (computed again from the
    job's dataset for a job exported before the export stage kept them)."""
    export = result["export"]
    if "labels" in export and "preprocessing" in export:
        return export["labels"], export["preprocessing"]
    import numpy as np

    with np.load(job_dir / "dataset.npz") as arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
    # Exports made before the export stage kept these had a fixed batch of 1.
    return deployment_info(classes, export["input"]["normalisation"], tuple(export["input"]["shape"]), True)


def build_bundle(job_id: str, files: dict[str, Path], result: dict[str, Any],
                 labels: list[str], preprocessing: dict[str, Any]) -> bytes:
    """The zip of a job's deployment bundle. ``files``: the job's stored files by
    kind (``onnx`` is required; ``tflite`` and ``report`` are added when present)."""
    report = result.get("report") or {}
    tflite = files.get("tflite")
    tflite_line = ("model.tflite            the model for LiteRT (TFLite): input float32 NHWC "
                   f"[1, {preprocessing['height']}, {preprocessing['width']}, {preprocessing['channels']}]; "
                   "labels and preprocessing\n                        are in its metadata table too.\n") if tflite else ""
    accuracy = (report.get("accuracy") or {}).get("test")
    measured = (report.get("latency") or {}).get("measured_ms")
    batch = preprocessing["batch"]["onnx"]
    readme = README.format(
        job_id=job_id, dataset=report.get("dataset", "?"), device=report.get("device", "?"),
        runtime=report.get("runtime", "?"), space=report.get("space", "?"),
        accuracy="?" if accuracy is None else f"{accuracy:.1%}",
        measured="?" if measured is None else f"{measured:.4g} ms",
        opset=result["export"]["onnx"].get("opset", 17), input_name=preprocessing["input_name"],
        onnx_shape=f"[{'batch' if batch == 'any' else 1}, {preprocessing['channels']}, {preprocessing['height']}, "
                   f"{preprocessing['width']}]" + (" (any batch size)" if batch == "any" else ""),
        tflite_line=tflite_line, height=preprocessing["height"], width=preprocessing["width"],
        scale=preprocessing["scale"],
        channel_words={"RGB": "RGB", "grayscale": "converted to grayscale"}.get(preprocessing["channel_order"],
                                                                             "channels as stored"),
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", readme)
        zf.write(files["onnx"], "model.onnx")
        if tflite:
            zf.write(tflite, "model.tflite")
        zf.writestr("labels.json", json.dumps(labels, indent=2) + "\n")
        zf.writestr("preprocessing.json", json.dumps(preprocessing, indent=2) + "\n")
        if "report" in files:
            zf.write(files["report"], "report.json")
        zf.write(EXAMPLES / PYTHON_EXAMPLE, PYTHON_EXAMPLE)
        zf.write(EXAMPLES / ANDROID_EXAMPLE, ANDROID_EXAMPLE)
    return buffer.getvalue()
