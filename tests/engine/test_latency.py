"""Latency models (LUT YAML, MACs proxy, key parsing) and the latency-aware losses."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from automl_server.engine import (
    DEFAULT_GMACS_PER_S,
    FlopsLatencyModel,
    LatencyModel,
    LutLatencyModel,
    MissingLatencyError,
    key_macs,
    latency_loss,
    parse_key,
)

MB_KEY = "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0"


def mb_key(expand: int, kernel: int) -> str:
    return f"expanded_conv-input:28x28x40-output:28x28x40-expand:{expand}-kernel:{kernel}-stride:1-idskip:1"


def test_reference_lut_yaml_with_var_reads_and_round_trips(tmp_path: Path) -> None:
    # arrange: the reference mobile LUT format (count, mean, var)
    reference = tmp_path / "mobile_lut.yaml"
    reference.write_text(
        f"{MB_KEY}:\n  count: 50\n  mean: 6.25\n  var: 0.04\n"
        "Conv-input:224x224x3-output:112x112x32:\n  count: 50\n  mean: 2.5\n  var: 0.0\n",
        encoding="utf-8",
    )
    # act
    lut = LutLatencyModel.from_yaml(reference)
    lut.set("Logits-input:7x7x1280-output:1000", 0.9, std_ms=0.05, count=20)
    lut.to_yaml(tmp_path / "round_trip.yaml")
    again = LutLatencyModel.from_yaml(tmp_path / "round_trip.yaml")
    # assert
    assert isinstance(lut, LatencyModel)
    assert lut.latency_ms(MB_KEY) == 6.25
    assert lut.entry(MB_KEY).std == pytest.approx(0.2)
    assert again.to_dict() == lut.to_dict()
    assert again.entry("Logits-input:7x7x1280-output:1000").count == 20
    assert len(again) == 3


def test_missing_key_names_it_and_suggests_profiling(tmp_path: Path) -> None:
    lut = LutLatencyModel.from_dict({MB_KEY: {"count": 1, "mean": 1.0, "std": 0.0}}, source="pixel1.yaml")
    with pytest.raises(KeyError) as excinfo:
        lut.latency_ms(mb_key(6, 7))
    assert isinstance(excinfo.value, MissingLatencyError)
    message = str(excinfo.value)
    assert mb_key(6, 7) in message and "profile" in message and "pixel1.yaml" in message
    assert lut.missing([MB_KEY, mb_key(6, 7)]) == [mb_key(6, 7)]


def test_malformed_lut_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a mapping with count, mean"):
        LutLatencyModel.from_dict({MB_KEY: 3.0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a mapping"):
        LutLatencyModel.from_yaml(bad)


def test_parse_key_fields() -> None:
    assert parse_key(MB_KEY) == {
        "type": "expanded_conv",
        "input": (112, 112, 16),
        "output": (56, 56, 24),
        "expand": 3,
        "kernel": 5,
        "stride": 2,
        "idskip": 0,
    }
    assert parse_key("Logits-input:7x7x1280-output:1000") == {
        "type": "Logits",
        "input": (7, 7, 1280),
        "output": (1000,),
    }
    with pytest.raises(ValueError, match="accepted: expanded_conv, Conv, Conv_1, Logits"):
        parse_key("Pool-input:7x7x8-output:1x1x8")
    with pytest.raises(ValueError, match="bad field 'kernel=5'"):
        parse_key("expanded_conv-input:8x8x8-output:8x8x8-expand:3-kernel=5-stride:1")


def test_flops_model_macs_and_ordering() -> None:
    model = FlopsLatencyModel()
    # expand 1x1 + depthwise 5x5 + project 1x1, by hand
    mid = 16 * 3
    by_hand = 112 * 112 * 16 * mid + 56 * 56 * mid * 25 + 56 * 56 * mid * 24
    assert key_macs(MB_KEY) == by_hand
    assert model.latency_ms(MB_KEY) == pytest.approx(by_hand / (DEFAULT_GMACS_PER_S * 1e6))
    assert key_macs("Conv-input:224x224x3-output:112x112x32") == 112 * 112 * 3 * 32 * 9
    assert key_macs("Conv_1-input:7x7x320-output:7x7x1280") == 7 * 7 * 320 * 1280
    assert key_macs("Logits-input:7x7x1280-output:1000") == 7 * 7 * 1280 + 1280 * 1000
    # no expand conv for MBConv1
    assert key_macs(mb_key(1, 3)) == 28 * 28 * 40 * 9 + 28 * 28 * 40 * 40
    ms = {(e, k): model.latency_ms(mb_key(e, k)) for e in (3, 6) for k in (3, 5, 7)}
    for e in (3, 6):
        assert ms[(e, 3)] < ms[(e, 5)] < ms[(e, 7)]
    for k in (3, 5, 7):
        assert ms[(3, k)] < ms[(6, k)]
    assert FlopsLatencyModel(gmacs_per_s=8.0).latency_ms(MB_KEY) == pytest.approx(model.latency_ms(MB_KEY) / 2)
    with pytest.raises(ValueError, match="gmacs_per_s must be a finite positive"):
        FlopsLatencyModel(gmacs_per_s=0.0)


def test_mul_log_loss_value_and_gradient_sign() -> None:
    ce = torch.tensor(2.0, dtype=torch.float64)
    expected_ms = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    loss = latency_loss(ce, expected_ms, target_ms=80.0, kind="mul#log", a=0.2, beta=0.3)
    assert loss.item() == pytest.approx(0.2 * 2.0 * (math.log(100.0) / math.log(80.0)) ** 0.3, rel=1e-12)
    loss.backward()
    assert expected_ms.grad.item() > 0  # slower => larger loss


def test_mul_log_loss_in_microseconds_for_sub_millisecond_targets() -> None:
    ce = torch.tensor(1.5)
    with pytest.raises(ValueError, match="log_unit_ms=1e-3|smaller log_unit_ms"):
        latency_loss(ce, torch.tensor(0.8), target_ms=0.5, kind="mul#log")
    loss = latency_loss(ce, torch.tensor(0.8), target_ms=0.5, kind="mul#log", log_unit_ms=1e-3)
    # the defaults are the reference search script's a = 0.2, beta = 0.3
    assert loss.item() == pytest.approx(0.2 * 1.5 * (math.log(800.0) / math.log(500.0)) ** 0.3, rel=1e-6)
    with pytest.raises(ValueError, match="expected latency > log_unit_ms"):
        latency_loss(ce, torch.tensor(0.9), target_ms=5.0, kind="mul#log")


def test_add_linear_and_none_losses() -> None:
    ce = torch.tensor(2.0, dtype=torch.float64)
    expected_ms = torch.tensor(60.0, dtype=torch.float64, requires_grad=True)
    loss = latency_loss(ce, expected_ms, target_ms=80.0, kind="add#linear", lam=0.2)
    assert loss.item() == pytest.approx(2.0 + 0.2 * (60.0 - 80.0) / 80.0)
    loss.backward()
    assert expected_ms.grad.item() == pytest.approx(0.2 / 80.0)
    assert latency_loss(ce, expected_ms, 80.0, kind="none") is ce
    assert latency_loss(ce, expected_ms, 80.0, kind=None) is ce


@pytest.mark.parametrize(("expected", "sign"), [(60.0, -1.0), (100.0, 1.0)])
def test_add_abs_pulls_towards_the_target_from_both_sides(expected: float, sign: float) -> None:
    ce = torch.tensor(2.0, dtype=torch.float64)
    expected_ms = torch.tensor(expected, dtype=torch.float64, requires_grad=True)

    loss = latency_loss(ce, expected_ms, target_ms=80.0, kind="add#abs", lam=0.5)
    loss.backward()

    assert loss.item() == pytest.approx(2.0 + 0.5 * abs(expected - 80.0) / 80.0)
    # Below the target the gradient says "slower is fine" (negative), above it "be faster".
    assert expected_ms.grad.item() == pytest.approx(sign * 0.5 / 80.0)


def test_unknown_loss_kind_lists_accepted() -> None:
    with pytest.raises(ValueError, match=r"'mul#exp'.*accepted: mul#log, add#linear, add#abs, none"):
        latency_loss(torch.tensor(1.0), torch.tensor(10.0), 8.0, kind="mul#exp")
