"""The export an app receives: an ONNX model that takes any batch size unless
asked for a fixed one, labels and preprocessing inside the ONNX and TFLite
files, and an IOS graph of the dynamic-batch file equal to the batch-1 one."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from automl_server.engine.deploy.export import (
    check_tflite,
    export_onnx,
    export_tflite,
    tflite_metadata,
)
from automl_server.engine.deploy.ios import graph_from_onnx
from device_agents.profiling.tflite_writer import write_tflite
from search_spaces import Arch, build_model, get_space

METADATA = {"labels": json.dumps(["cat", "dog", "émeu"]), "preprocessing": json.dumps({"height": 8, "mean": [0.5]})}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    # Skipped ("zero") layers wherever the space allows them, the largest block elsewhere.
    layout = get_space("tiny").layout(8, 3, 1)
    torch.manual_seed(0)
    return build_model(Arch("tiny", 8, 3, 1, tuple(cell.candidates[-1] for cell in layout.cells))).eval()


def session(path) -> ort.InferenceSession:  # type: ignore[no-untyped-def]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_onnx_takes_a_batch_of_four_and_carries_labels_and_preprocessing(model, tmp_path):
    path = export_onnx(model, (1, 1, 8, 8), tmp_path / "model.onnx", metadata=METADATA)
    images = torch.randn(4, 1, 8, 8)

    (logits,) = session(path).run(None, {"input": images.numpy()})

    with torch.no_grad():
        np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4)
    assert session(path).get_modelmeta().custom_metadata_map == METADATA


def test_a_static_batch_export_refuses_a_batch_of_four(model, tmp_path):
    path = export_onnx(model, (1, 1, 8, 8), tmp_path / "model.onnx", dynamic_batch=False)

    assert [d for d in session(path).get_inputs()[0].shape] == [1, 1, 8, 8]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session(path).run(None, {"input": np.zeros((4, 1, 8, 8), np.float32)})


def test_the_schedule_graph_of_a_dynamic_batch_export_is_the_batch_one_graph(model, tmp_path):
    import onnx

    dynamic = graph_from_onnx(onnx.load(str(export_onnx(model, (1, 1, 8, 8), tmp_path / "d.onnx"))))
    static = graph_from_onnx(onnx.load(str(export_onnx(model, (1, 1, 8, 8), tmp_path / "s.onnx",
                                                       dynamic_batch=False))))

    # A skipped layer is the identity, not zeros shaped like its input (no Shape arithmetic).
    assert not [op for op in dynamic.ops if "Shape" in op.signature]
    assert [op.signature for op in dynamic.ops] == [op.signature for op in static.ops]
    assert dynamic.preds == static.preds


def test_the_tflite_file_carries_labels_and_preprocessing_and_still_runs(model, tmp_path):
    path, converter = export_tflite(model, (1, 1, 8, 8), tmp_path / "model.tflite", write_tflite, METADATA)

    assert converter == "builtin"
    assert tflite_metadata(path) == {k: v.encode() for k, v in METADATA.items()}
    check = check_tflite(model, path, torch.randn(3, 1, 8, 8))
    assert check.max_abs_diff < 1e-4 and check.agree_top1 == 1.0
