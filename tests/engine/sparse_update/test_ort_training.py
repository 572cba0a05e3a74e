"""On-device sparse update with ONNX Runtime training: the exported model computes
what the network computes, its trainable names are the scheme's, and N SGD steps
run by ONNX Runtime training (in its own environment, as a subprocess) follow
PyTorch's loss curve from the same weights on the same batches, leaving every
frozen tensor untouched."""
from __future__ import annotations

import ast
import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from automl_server.engine.data import SplitData
from automl_server.engine.train.sparse_update import SparseNet, SparseScheme
from automl_server.engine.train.sparse_update.on_device import (
    LOSS_TOLERANCE,
    DeviceRunPlan,
    batch_indices,
    compare_loss_curves,
    device_report,
    plan_device_run,
    run_in_training_env,
    torch_steps,
)
from automl_server.engine.train.sparse_update.ort_export import (
    export_for_ort_training,
    load_trained_values,
    trainable_names,
)
from automl_server.engine.train.sparse_update.scheme import bias_only
from tests.engine.sparse_update.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[3]
TRAINING_PYTHON = ROOT / ".venv-ort-training" / "bin" / "python"
STEPS, BATCH, LR, SAMPLES = 8, 8, 0.05, 24


def mixed_scheme(n_layers: int) -> SparseScheme:
    """Every kind of update: biases of the last 4 layers, the last weight at half of its
    input channels, the one before at a quarter, the one before that fully."""
    return SparseScheme(4, ((n_layers - 1, 0.5), (n_layers - 2, 0.25), (n_layers - 3, 1.0)))


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def net(pretrained: dict[str, torch.Tensor]) -> SparseNet:
    model = tiny_model()
    model.load_state_dict(pretrained)
    return SparseNet(model.eval(), 8)


def test_the_export_computes_the_networks_logits_and_names_the_schemes_tensors(net, new_classes: SplitData,
                                                                               tmp_path):
    scheme = mixed_scheme(len(net.layers))
    x = new_classes.x_train[:5]

    export = export_for_ort_training(net, scheme, tmp_path / "model.onnx")

    session = ort.InferenceSession(str(export.model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {export.input_name: x.numpy()})[0]
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(logits - expected).max() < 1e-4
    written = initializers(export.model_path)
    last = net.infos[-1]  # 1x1 conv, half of its input channels trained
    assert written[f"net.{last.name}.conv.weight_part"].shape[1] == last.in_ch // 2
    assert written[f"net.{last.name}.conv.weight_rest"].shape[1] == last.in_ch - last.in_ch // 2
    assert f"net.{last.name}.conv.weight" not in written
    assert set(export.trainable) <= set(written)
    assert set(export.trainable) == set(trainable_names(net, scheme))
    assert not set(export.trainable) & set(export.frozen)


def test_a_bias_only_scheme_trains_the_last_biases_and_the_classifier(net):
    names = trainable_names(net, bias_only(2))

    expected = {f"net.{info.name}.conv.bias" for info in net.infos[-2:]} | {"net.classifier.weight",
                                                                              "net.classifier.bias"}
    assert set(names) == expected


def require_training_venv() -> None:
    if TRAINING_PYTHON.exists():
        return
    message = f"the ONNX Runtime training environment {TRAINING_PYTHON.parent.parent} is missing " \
              "(`make ort-training-venv` builds it)"
    if os.environ.get("AUTOML_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}, and AUTOML_TEST_REQUIRE_SERVICES=1 forbids skipping this test")
    pytest.skip(message)


@dataclass
class DeviceRun:
    result: dict[str, Any]
    params: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    plan: DeviceRunPlan

    @property
    def trainable(self) -> list[str]:
        return self.plan.trainable


@pytest.fixture(scope="module")
def device_run(net, new_classes: SplitData, tmp_path_factory) -> DeviceRun:
    require_training_venv()
    folder = tmp_path_factory.mktemp("ort-training")
    plan = plan_device_run(net, mixed_scheme(len(net.layers)), folder, new_classes.x_train[:SAMPLES],
                           new_classes.y_train[:SAMPLES], steps=STEPS, lr=LR, batch=BATCH)
    result = run_in_training_env(plan, TRAINING_PYTHON, folder, cwd=ROOT, timeout_s=120, params_out=True)
    with np.load(folder / "device_params.npz") as params:
        trained = {name: params[name] for name in params.files}
    return DeviceRun(result, trained, initializers(plan.model_path), plan)


def test_onnx_runtime_training_follows_pytorchs_loss_curve(net, new_classes: SplitData, device_run: DeviceRun):
    x, y = new_classes.x_train[:SAMPLES], new_classes.y_train[:SAMPLES]
    scheme = mixed_scheme(len(net.layers))

    report = device_report(net, scheme, x, y, device_run.plan, device_run.result)

    assert report["comparison"]["within_tolerance"], (report["pytorch"]["losses"], report["device"]["losses"])
    assert report["comparison"]["max_abs_loss_diff"] <= LOSS_TOLERANCE
    assert report["comparison"]["steps"] == STEPS
    # The tensors the device trained are PyTorch's, partial weight channels included.
    reference = torch_steps(net, scheme, x, y, steps=STEPS, lr=LR, batch=BATCH)
    torch_params = dict(reference.net.named_parameters())
    for name in device_run.trainable:
        assert np.abs(device_run.params[name] - torch_params[name].detach().numpy()).max() < 1e-4, name


def test_frozen_tensors_stay_as_exported_and_trained_ones_move(device_run: DeviceRun):
    frozen = [name for name in device_run.params if name not in device_run.trainable]

    assert frozen and device_run.result["frozen_max_abs_change"] == 0.0
    for name in frozen:  # the rest of each partial weight among them
        np.testing.assert_array_equal(device_run.params[name], device_run.initial[name], err_msg=name)
    assert sorted(device_run.result["trainable"]) == sorted(device_run.trainable)
    for name in device_run.trainable:
        assert not np.array_equal(device_run.params[name], device_run.initial[name]), name


def test_the_device_reports_loss_accuracy_and_peak_memory_per_step(device_run: DeviceRun):
    steps = device_run.result["steps"]

    assert [s["step"] for s in steps] == list(range(STEPS))
    assert all(0.0 <= s["accuracy"] <= 1.0 and s["loss"] > 0 for s in steps)
    peaks = [s["peak_rss_kb"] for s in steps]
    assert peaks == sorted(peaks) and peaks[0] > 0  # a high-water mark only grows
    assert device_run.result["peak_rss_kb"] >= peaks[-1]
    assert 0.0 <= device_run.result["final_accuracy"] <= 1.0
    assert device_run.result["runtime"].startswith("onnxruntime-training 1.19")


def test_device_trained_values_load_back_into_the_network(net, device_run: DeviceRun):
    scheme = mixed_scheme(len(net.layers))
    target = copy.deepcopy(net)

    loaded = load_trained_values(target, scheme, {n: device_run.params[n] for n in device_run.trainable})

    assert loaded == sorted(device_run.trainable)
    last = target.layers[-1]
    assert last.keep is not None and last.weight_part is not None
    kept = last.weight.detach().index_select(1, last.keep).numpy()
    np.testing.assert_allclose(kept, device_run.params[f"net.{target.infos[-1].name}.conv.weight_part"])


def test_the_on_device_package_imports_only_the_training_runtime_onnx_and_numpy():
    allowed_tops = {"onnxruntime", "onnx", "numpy", "__future__"}
    found = {}
    for path in sorted((ROOT / "device_agents" / "ort_training").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        bad = sorted(name for name in names if name.split(".")[0] not in allowed_tops | sys.stdlib_module_names
                     and not name.startswith("device_agents.ort_training"))
        if bad:
            found[path.name] = bad

    assert found == {}


def test_batches_wrap_around_and_the_loss_comparison_takes_the_largest_step_difference():
    assert batch_indices(2, 8, 20).tolist() == [16, 17, 18, 19, 0, 1, 2, 3]

    close = compare_loss_curves([2.0, 1.5, 1.25], [2.0, 1.5004, 1.2498], tolerance=1e-3)
    apart = compare_loss_curves([2.0, 1.5], [2.0, 1.4], tolerance=1e-3)

    assert close["within_tolerance"] and abs(close["max_abs_loss_diff"] - 4e-4) < 1e-9
    assert not apart["within_tolerance"] and abs(apart["max_abs_loss_diff"] - 0.1) < 1e-9


def test_a_cancelled_device_run_leaves_no_process_behind(net, new_classes: SplitData, tmp_path):
    require_training_venv()
    plan = plan_device_run(net, bias_only(1), tmp_path, new_classes.x_train[:8], new_classes.y_train[:8],
                           steps=1, lr=LR, batch=8)
    seen: list[int] = []

    def cancel() -> None:
        # This test's own run only: under pytest -n 2 the other worker may be running one too.
        seen.extend(int(pid) for pid in os.listdir("/proc") if pid.isdigit()
                    and "device_agents.ort_training" in _cmdline(pid) and _parent(pid) == os.getpid())
        if seen:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        run_in_training_env(plan, TRAINING_PYTHON, tmp_path, cwd=ROOT, check_cancelled=cancel)

    assert seen
    assert not [pid for pid in seen if os.path.exists(f"/proc/{pid}") and _cmdline(str(pid))]


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])  # the field after the state
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
