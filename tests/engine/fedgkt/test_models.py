"""The edge model is the searched network cut in two; the settings refuse what cannot run."""
from __future__ import annotations

import pytest
import torch

from automl_server.engine.train.fedgkt.costs import count_macs, count_parameters
from automl_server.engine.train.fedgkt.models import ExtractorAndServer, ServerModel, default_cut, split_edge_model
from automl_server.engine.train.fedgkt.pipeline import FedGKTSettings, check_fedgkt
from automl_server.engine.train.registry import DataFacts, InvalidPipelineSettings
from search_spaces import Arch, build_model

from .conftest import tiny_arch


def test_edge_model_computes_exactly_the_searched_network(digits):
    arch = tiny_arch(digits)
    model = build_model(arch).eval()
    edge = split_edge_model(model, arch, default_cut(arch.layout())).eval()

    features, logits = edge.features_and_logits(digits.x_holdout[:5])

    assert torch.allclose(edge(digits.x_holdout[:5]), model(digits.x_holdout[:5]))
    assert torch.allclose(logits, model(digits.x_holdout[:5]))
    assert features.shape == (5, 8, 4, 4)  # the first stage's output on 8x8 digits


def test_default_cut_is_the_first_stage_at_a_quarter_of_the_resolution():
    assert default_cut(Arch("tiny", 28, 10, 1, ("mb3_k3",) * 8).layout()) == 0  # 28 -> 14 -> 7
    assert default_cut(Arch("tiny", 64, 10, 1, ("mb3_k3",) * 8).layout()) == 0  # 64 -> 32 -> 16
    assert default_cut(Arch("proxyless-mobile", 224, 10, 3, ("mb3_k3",) * 21).layout()) == 0  # 112 -> 56


def test_server_size_model_costs_many_times_the_edge(digits):
    arch = tiny_arch(digits)
    edge = split_edge_model(build_model(arch), arch, 0)
    big = ExtractorAndServer(edge.extractor, ServerModel(arch, 0))
    shape = (1, 8, 8)

    assert count_macs(big, shape) >= 9 * count_macs(edge, shape)
    assert count_parameters(big) >= 50 * count_parameters(edge)


def test_linear_and_conv_macs_match_a_hand_count():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))

    assert count_macs(net, (2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3


def test_more_clients_than_ten_samples_each_is_refused_naming_the_field():
    facts = DataFacts(train_samples=95, num_classes=10, resolution=8, epochs=1)
    check_fedgkt(FedGKTSettings(clients=9), facts)

    with pytest.raises(InvalidPipelineSettings) as refused:
        check_fedgkt(FedGKTSettings(clients=10), facts)

    assert refused.value.field == "fedgkt.clients" and "at most 9" in refused.value.detail
