"""Sparse update: what it saves for backward, that its gradients are autograd's, that
reordering changes nothing but memory, and the registered pipeline end to end."""
from __future__ import annotations

import base64
import json

import pytest
import torch
import torch.nn.functional as F

from automl_server.engine.train.registry import InvalidPipelineSettings, PipelineInputs, get_pipeline
from automl_server.engine.train.sparse_update import (
    SparseNet,
    SparseScheme,
    SparseUpdater,
    count_saved_tensors,
    minimum_budget_kb,
    predict_memory,
)
from automl_server.engine.train.sparse_update.comparison import measure_step
from automl_server.engine.train.sparse_update.live_memory import PeakTensorMemory
from automl_server.engine.train.sparse_update.on_device import PLAN_FILE, report_from_plan
from automl_server.engine.train.sparse_update.pipeline import DEVICE_FOLDER
from automl_server.engine.train.sparse_update.peak_rss import Variant
from automl_server.engine.train.sparse_update.scheme import bias_only, classifier_only, full
from automl_server.engine.train.sparse_update.sparse_conv import pack_mask, unpack_mask
from device_agents import tasks
from device_agents.protocol import FineTuneReply, FineTuneRequest, ModelFile, TargetPayload
from tests.engine.sparse_update.conftest import RecordingCallbacks

BATCH = 16


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 1, 8, 8, generator=generator), torch.randint(0, 5, (BATCH,), generator=generator)


def saved_bytes(net: SparseNet, x: torch.Tensor, y: torch.Tensor) -> int:
    with count_saved_tensors(net) as counter:
        F.cross_entropy(net(x), y)
    return counter.bytes


def test_a_frozen_layer_saves_nothing_for_backward_and_a_bias_only_layer_not_its_input(parent):
    x, y = batch()
    net = SparseNet(parent, 8)
    last = net.layers[-1]  # feature_mix: 1x1 conv + ReLU6, followed by pooling and the classifier
    classifier_alone = classifier_only()
    net.apply_scheme(classifier_alone)
    base = saved_bytes(net, x, y)  # the classifier's input and the loss

    with count_saved_tensors(net) as counter:
        features_input = torch.randn(BATCH, last.in_channels, 4, 4, requires_grad=True)
        last(features_input)  # frozen, but a gradient must flow through it to its input
    frozen_passthrough = counter.bytes
    net.apply_scheme(bias_only(1))
    bias_layer = saved_bytes(net, x, y) - base

    out_elems = BATCH * last.out_channels * 4 * 4
    assert frozen_passthrough == out_elems // 8  # only the ReLU6 mask, 1 bit an element, never the float input
    assert bias_layer == out_elems // 8  # the mask alone: none of the layer's float input
    net.apply_scheme(full(len(net.layers)), plain_autograd=True)
    assert saved_bytes(net, x, y) > 10 * saved_bytes(SparseNet(parent, 8), x, y)  # PyTorch keeps every input


def test_a_frozen_network_prefix_records_no_graph(parent):
    x, y = batch()
    net = SparseNet(parent, 8)
    net.apply_scheme(bias_only(3))
    first_trained = len(net.layers) - 3
    seen = []
    handles = [layer.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad)) for layer in net.layers]

    net(x)

    for handle in handles:
        handle.remove()
    assert seen == [False] * first_trained + [True] * 3


def test_gradients_of_the_updated_tensors_equal_full_autograd(parent):
    x, y = batch()
    reference = SparseNet(parent, 8)
    reference.apply_scheme(full(len(reference.layers)), plain_autograd=True)
    F.cross_entropy(reference(x), y).backward()
    n = len(reference.layers)
    sparse = SparseNet(parent, 8)
    sparse.apply_scheme(SparseScheme(10, ((n - 10, 0.25), (n - 8, 0.5), (n - 5, 1.0), (n - 3, 0.125))))

    F.cross_entropy(sparse(x), y).backward()

    checked = 0
    for mine, theirs in zip(sparse.layers, reference.layers):
        if mine.bias.requires_grad:
            torch.testing.assert_close(mine.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-6)
            checked += 1
        if mine.weight.requires_grad:
            torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-6)
            checked += 1
        if mine.weight_part is not None:
            full_grad = theirs.weight.grad.index_select(0 if mine.depthwise else 1, mine.keep)
            torch.testing.assert_close(mine.weight_part.grad, full_grad, rtol=1e-4, atol=1e-6)
            checked += 1
        else:
            assert not mine.weight.requires_grad or mine.weight.grad is not None
    torch.testing.assert_close(sparse.classifier.weight.grad, reference.classifier.weight.grad)
    assert checked == 10 + 4
    # No gradient buffer exists for a frozen tensor.
    assert all(p.grad is None for p in sparse.parameters() if not p.requires_grad)


def test_reordered_and_ordinary_updates_give_the_same_weights(parent):
    x, y = batch()
    n = len(SparseNet(parent, 8).layers)
    scheme = SparseScheme(6, ((n - 6, 0.5), (n - 2, 1.0)))
    results = {}
    for reorder in (False, True):
        net = SparseNet(parent, 8)
        net.apply_scheme(scheme)
        updater = SparseUpdater(net.trainable_parameters(), lr=0.1, momentum=0.9, reorder=reorder)
        for _ in range(3):
            updater.step(F.cross_entropy(net(x), y))
        updater.close()
        results[reorder] = (net.snapshot(), updater.grad_peak_bytes)

    (ordinary, ordinary_grads), (reordered, reordered_grads) = results[False], results[True]
    for name, value in ordinary.items():
        assert torch.equal(value, reordered[name]), name
    assert reordered_grads < ordinary_grads  # one gradient alive at a time


def test_a_relu_mask_packed_to_bits_unpacks_to_itself():
    mask = torch.rand(3, 5, 7) > 0.5  # 105 elements: the last byte is padded

    packed = pack_mask(mask)

    assert packed.dtype == torch.uint8 and packed.numel() == 14
    assert torch.equal(unpack_mask(packed, (3, 5, 7)), mask)


def test_the_peak_of_a_step_counts_what_is_alive_at_once():
    params = [torch.nn.Parameter(torch.zeros(256))]  # 1 kB
    with PeakTensorMemory(params) as tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = torch.ones(500)  # 2,000 bytes
        del a
        c = torch.ones(250)  # 1,000 bytes: a is gone, b and c are alive
        params[0].grad = torch.ones(256)  # 1,024 bytes, held as a gradient
        d = torch.ones(10)
        del b, c, d
    peak = tracker.result()

    assert peak.peak_bytes == 6000 and peak.grad_bytes_at_peak == 0 and peak.max_grad_bytes == 1024
    assert tracker.live_bytes == 1024  # only the gradient is left


def test_reordering_drops_every_gradient_as_it_is_applied_and_lowers_the_peak(parent):
    x, y = batch()
    net = SparseNet(parent, 8)
    peaks = {reorder: measure_step(net, Variant("full", full(len(net.layers)), reorder, plain_autograd=True), x, y,
                                   lr=0.1, momentum=0.0)[1] for reorder in (False, True)}
    grad_bytes = [p.numel() * 4 for p in net.parameters()]  # a full update trains them all
    every_grad_bytes, largest_grad_bytes = sum(grad_bytes), max(grad_bytes)

    assert peaks[True].max_grad_bytes == largest_grad_bytes  # one gradient at a time, dropped once applied
    assert peaks[False].max_grad_bytes == every_grad_bytes  # all of them, until optimizer.step()
    assert peaks[True].peak_bytes < peaks[False].peak_bytes


def test_predicted_memory_matches_the_measured_step(parent):
    x, y = batch()
    net = SparseNet(parent, 8)
    n = len(net.layers)
    scheme = SparseScheme(8, ((n - 7, 0.25), (n - 1, 1.0)))
    net.apply_scheme(scheme)

    predicted = predict_memory(net.infos, net.classifier.in_features, 5, scheme, BATCH)

    assert saved_bytes(net, x, y) == predicted.saved_bytes
    assert minimum_budget_kb(parent, 8, BATCH) * 1024 == predict_memory(
        net.infos, net.classifier.in_features, 5, bias_only(1), BATCH).total(True)


def inputs_for(model, data, work_dir, epochs=1):  # type: ignore[no-untyped-def]
    return PipelineInputs(arch=model.arch, model=model, data=data, x_test=data.x_holdout, y_test=data.y_holdout,
                          epochs=epochs, batch_size=32, seed=0, work_dir=work_dir)


def test_the_pipeline_fine_tunes_within_the_budget_and_reports_the_comparison(parent, new_classes, tmp_path):
    pipeline = get_pipeline("sparse-update")
    settings = pipeline.parse({"memory_budget_kb": 300, "analysis_steps": 1, "epochs": 1})
    callbacks = RecordingCallbacks()
    before = {k: v.clone() for k, v in parent.state_dict().items()}

    outcome = pipeline.run(inputs_for(parent, new_classes, tmp_path), settings, callbacks)

    report = outcome.report
    assert outcome.model is parent and outcome.epochs == 1 and len(callbacks.metrics) == 1
    assert report["memory"]["scheme"]["predicted_bytes"] <= 300 * 1024
    assert report["memory"]["scheme"]["measured_bytes"] <= 300 * 1024
    assert report["memory"]["full_update"]["measured_bytes"] > 5 * report["memory"]["scheme"]["measured_bytes"]
    assert set(report["accuracy"]) == {"sparse_update", "full_update", "last_layer_only"}
    assert report["memory"]["scheme"]["peak_rss_step_kb"] is not None
    assert any(row["update"] != "frozen" for row in report["scheme"]["layers"])
    changed = {name for name, value in parent.state_dict().items() if not torch.equal(value, before[name])}
    assert "classifier.weight" in changed
    plan = json.loads((tmp_path / "sparse_update_plan.json").read_text())
    assert plan["contributions"]["bias_gain"]  # the analysis ran on the job's data


def test_a_budget_below_the_smallest_scheme_says_what_it_needs(parent, new_classes, tmp_path):
    pipeline = get_pipeline("sparse-update")
    needed = minimum_budget_kb(parent, 8, 32)

    with pytest.raises(InvalidPipelineSettings) as error:
        pipeline.run(inputs_for(parent, new_classes, tmp_path), pipeline.parse({"memory_budget_kb": 10, "batch_size": 32}),
                     RecordingCallbacks())

    assert error.value.field == "sparse_update.memory_budget_kb" and f"{needed:.1f}" in error.value.detail


def test_an_agent_without_the_training_environment_answers_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_ORT_TRAINING_PYTHON", str(tmp_path / "missing" / "bin" / "python"))
    request = FineTuneRequest(TargetPayload("local-cpu", "onnxruntime", ""), ModelFile.from_bytes("onnx", b"x"),
                              ("classifier.bias",), "", steps=1, lr=0.1, batch=1)

    reply = FineTuneReply.from_dict(json.loads(json.dumps(tasks.finetune_on_device(*request.to_args()))))

    assert reply.result is None and reply.error is not None and "make ort-training-venv" in reply.error


def test_the_on_device_plan_runs_through_the_agents_task_and_follows_pytorchs_steps(parent, new_classes, tmp_path):
    from tests.engine.sparse_update.test_ort_training import require_training_venv

    require_training_venv()
    pipeline = get_pipeline("sparse-update")
    settings = pipeline.parse({"scheme": "bias-only", "on_device": True, "on_device_steps": 6,
                               "compare_baselines": False, "measure_peak_rss": False, "memory_budget_kb": 4096})
    outcome = pipeline.run(inputs_for(parent, new_classes, tmp_path), settings, RecordingCallbacks())
    folder = tmp_path / DEVICE_FOLDER
    plan = json.loads((folder / PLAN_FILE).read_text())
    # What the device-finetune stage sends, through JSON as the broker carries it.
    request = FineTuneRequest(TargetPayload("local-cpu", "onnxruntime", ""),
                              ModelFile.from_bytes("onnx", (folder / plan["model_file"]).read_bytes()),
                              tuple(plan["trainable"]), base64.b64encode((folder / plan["data_file"]).read_bytes()).decode(),
                              plan["steps"], plan["lr"], plan["batch"])

    reply = FineTuneReply.from_dict(json.loads(json.dumps(tasks.finetune_on_device(
        *json.loads(json.dumps(request.to_args()))))))

    assert reply.error is None and reply.result is not None
    report = report_from_plan(plan, reply.result)
    assert outcome.report["on_device"]["pytorch"]["losses"] == plan["pytorch"]["losses"]
    assert len(report["device"]["losses"]) == len(report["pytorch"]["losses"]) == 6
    assert report["comparison"]["within_tolerance"], report["comparison"]
    assert report["device"]["peak_rss_kb"] > 0


def test_a_cancelled_fine_tune_resumes_from_its_checkpoint_with_the_same_scheme(parent, new_classes, tmp_path):
    pipeline = get_pipeline("sparse-update")
    settings = pipeline.parse({"scheme": "bias-only", "memory_budget_kb": 400, "epochs": 2,
                               "compare_baselines": False, "measure_peak_rss": False})
    (tmp_path / "straight").mkdir()
    straight_model = type(parent)(parent.arch)
    straight_model.load_state_dict(parent.state_dict())
    straight = pipeline.run(inputs_for(straight_model, new_classes, tmp_path / "straight"), settings,
                            RecordingCallbacks())
    resumed_model = type(parent)(parent.arch)
    resumed_model.load_state_dict(parent.state_dict())
    work = tmp_path / "resumed"
    work.mkdir()

    with pytest.raises(KeyboardInterrupt):  # cancelled in the second epoch (7 steps an epoch)
        pipeline.run(inputs_for(resumed_model, new_classes, work), settings, RecordingCallbacks(cancel_after_steps=9))
    again = type(parent)(parent.arch)
    again.load_state_dict(parent.state_dict())
    outcome = pipeline.run(inputs_for(again, new_classes, work), settings, RecordingCallbacks())

    assert outcome.report["scheme"]["bias_layers"] == straight.report["scheme"]["bias_layers"]
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[name], rtol=0, atol=0)
