"""DLG, iDLG and FedGKT's feature inversion on tiny networks (seconds each).

The attack itself is checked on the paper's own setting (a LeNet with Sigmoid,
digits): it must rebuild an image from an undefended gradient and fail once
90% of the gradient is pruned. Thresholds: 30 dB rebuilt (the rebuild is the
image: RMS error 3% of the range), under 15 dB at 90% pruning (the audit's
"not recognisable")."""
from __future__ import annotations

import copy

import torch

from automl_server.engine.privacy import (
    dlg_attack,
    idlg_label,
    idlg_label_set,
    invert_features,
    last_linear_weight_index,
    prune,
    psnr,
    shared_gradient,
    to_pixels,
    top_k,
)
from automl_server.engine.privacy.lenet import lenet_sigmoid
from automl_server.engine.train.fedgkt.models import default_cut, split_edge_model
from search_spaces import Arch, build_model

ITERATIONS = 25  # the LeNet attack converges in ~20 iterations on 8x8 digits; the job default is the paper's 300


def _rebuild_psnr(data, model, gradient, image, label):  # type: ignore[no-untyped-def]
    rebuild = dlg_attack(model, gradient, tuple(image.shape), 10, iterations=ITERATIONS, known_labels=label)
    return psnr(to_pixels(image, data.mean, data.std)[0], to_pixels(rebuild.x, data.mean, data.std)[0])


def test_dlg_rebuilds_one_image_from_its_gradient_and_fails_at_90_percent_pruning(digits):
    model = lenet_sigmoid(1, 8, 10)
    image, label = digits.x_train[:1], digits.y_train[:1]
    gradient = shared_gradient(model, image, label, 10)

    assert _rebuild_psnr(digits, model, gradient, image, label) > 30.0
    assert _rebuild_psnr(digits, model, prune(gradient, 0.9), image, label) < 15.0


def test_dlg_with_soft_labels_recovers_the_label_too(digits):
    model = lenet_sigmoid(1, 8, 10)
    image, label = digits.x_train[1:2], digits.y_train[1:2]

    rebuild = dlg_attack(model, shared_gradient(model, image, label, 10), tuple(image.shape), 10,
                         iterations=ITERATIONS)

    assert int(rebuild.labels[0]) == int(label[0])


def test_idlg_reads_the_label_from_the_last_layers_gradient_of_a_searched_network(digits):
    arch = Arch("tiny", 8, 10, 1, ("mb3_k3",) * 8)
    torch.manual_seed(0)
    model = build_model(arch)
    labels = digits.y_train[:10]
    found = [idlg_label(shared_gradient(model, digits.x_train[i:i + 1], labels[i:i + 1], 10, train_mode=False)
                        [last_linear_weight_index(model)]) for i in range(10)]
    batch = shared_gradient(model, digits.x_train[:4], labels[:4], 10)[last_linear_weight_index(model)]

    assert found == labels.tolist()
    assert idlg_label_set(batch) == set(labels[:4].tolist())


def test_the_attack_leaves_the_attacked_network_as_it_was(digits):
    model = lenet_sigmoid(1, 8, 10)
    before = copy.deepcopy(model.state_dict())
    gradient = shared_gradient(model, digits.x_train[:1], digits.y_train[:1], 10)

    dlg_attack(model, gradient, (1, 1, 8, 8), 10, iterations=2)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dgc_top_k_sends_only_its_share_of_each_weight_and_every_bias():
    weight, bias = torch.arange(1.0, 101.0).view(10, 10), torch.ones(10)

    sent = top_k([weight, bias], 0.05)

    assert int((sent[0] != 0).sum()) == 5 and sorted(sent[0][sent[0] != 0].tolist()) == [96, 97, 98, 99, 100]
    assert torch.equal(sent[1], bias)


def test_feature_inversion_on_a_fedgkt_extractor_gets_closer_to_the_image(digits):
    arch = Arch("tiny", 8, 10, 1, ("mb3_k3",) * 8)
    torch.manual_seed(0)
    edge = split_edge_model(build_model(arch), arch, default_cut(arch.layout()))
    image = digits.x_train[:1]
    with torch.no_grad():
        features = edge.extractor.eval()(image)

    start = invert_features(edge.extractor, features, tuple(image.shape), iterations=0)
    rebuilt = invert_features(edge.extractor, features, tuple(image.shape), iterations=15)

    original = to_pixels(image, digits.mean, digits.std)[0]
    assert rebuilt.trace.losses[-1] < 0.5 * rebuilt.trace.losses[0]
    assert psnr(original, to_pixels(rebuilt.x, digits.mean, digits.std)[0]) > psnr(
        original, to_pixels(start.x, digits.mean, digits.std)[0])
