"""Classify one image with this bundle's ONNX model and print its label and probability.

    pip install onnxruntime numpy pillow
    python example_onnxruntime.py photo.jpg

The image is prepared exactly as the training prepared its images
(preprocessing.json): converted to the channels the model takes, resized to
its input size, scaled to [0, 1], then normalised with the training split's
per-channel mean and standard deviation.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent


def prepare(image_path: str, pre: dict[str, Any]) -> np.ndarray:
    """The image as the model's input: float32, NCHW, a batch of one."""
    height, width, channels = pre["height"], pre["width"], pre["channels"]
    image = Image.open(image_path).convert("RGB" if channels == 3 else "L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels)
    x = (pixels * pre["scale"] - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)  # HWC -> NCHW


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python {Path(argv[0]).name} IMAGE_FILE", file=sys.stderr)
        return 2
    pre = json.loads((HERE / "preprocessing.json").read_text())
    labels = json.loads((HERE / "labels.json").read_text())
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {pre["input_name"]: prepare(argv[1], pre)})[0][0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = int(probabilities.argmax())
    print(f"{labels[best]}\t{probabilities[best]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
