"""LiteRT: the builtin .tflite writer computes what the torch op computes, and the runtime times it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from device_agents.profiling import (
    ConverterMissing,
    LiteRTBackend,
    MeasurementMethod,
    UnsupportedModule,
    build_from_key,
    write_tflite,
)

MBCONV_KEY = "expanded_conv-input:16x16x24-output:8x8x40-expand:6-kernel:5-stride:2-idskip:0"
QUICK = MeasurementMethod(warmup=3, block_size=5, min_blocks=3, max_blocks=6, cv_threshold=0.1)
LITERT_TORCH_INSTALLED = importlib.util.find_spec("litert_torch") is not None


def run_tflite(path: Path, nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], nhwc)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def with_trained_batchnorm(module: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that folding them into the convs is really exercised."""
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return module


@pytest.mark.parametrize(
    "key",
    [
        "expanded_conv-input:16x16x24-output:8x8x40-expand:6-kernel:5-stride:2-idskip:0",
        "expanded_conv-input:15x15x24-output:8x8x24-expand:3-kernel:7-stride:2-idskip:0",
        "expanded_conv-input:8x8x40-output:8x8x40-expand:3-kernel:7-stride:1-idskip:1",
        "expanded_conv-input:16x16x32-output:16x16x16-expand:1-kernel:3-stride:1-idskip:0",
        "Conv-input:32x32x3-output:16x16x32",
        "Conv-input:6x6x3-output:6x6x16",
        "Conv_1-input:4x4x320-output:4x4x1280",
        "Logits-input:4x4x1280-output:10",
    ],
)
def test_written_tflite_computes_what_the_torch_op_computes(key: str, tmp_path: Path) -> None:
    module, input_shape = build_from_key(key)
    with_trained_batchnorm(module)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))

    path = write_tflite(module, input_shape, tmp_path / "op.tflite")
    got = run_tflite(path, x.permute(0, 2, 3, 1).contiguous().numpy())

    with torch.no_grad():
        expected = module(x)
    if expected.ndim == 4:
        expected = expected.permute(0, 2, 3, 1)  # TFLite runs NHWC
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_writer_refuses_a_layer_it_cannot_express_naming_it(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU())

    with pytest.raises(UnsupportedModule, match="GELU"):
        write_tflite(module, (1, 3, 8, 8), tmp_path / "op.tflite")


def test_litert_measures_a_tflite_file_as_it_is(tmp_path: Path) -> None:
    module, input_shape = build_from_key(MBCONV_KEY)
    path = write_tflite(module, input_shape, tmp_path / "op.tflite")

    stats = LiteRTBackend().measure_tflite(path, QUICK)

    assert stats.median_ms > 0
    assert stats.method["backend"] == "litert" and stats.method["num_threads"] == 1


def test_litert_measures_a_module_with_the_builtin_writer_by_default() -> None:
    module, input_shape = build_from_key("Conv-input:32x32x3-output:16x16x32")

    stats = LiteRTBackend().measure_module(module, input_shape, QUICK)

    assert stats.median_ms > 0 and stats.method["converter"] == "builtin"


@pytest.mark.skipif(LITERT_TORCH_INSTALLED, reason="litert-torch is installed here")
def test_asking_for_litert_torch_without_it_names_the_package_to_install() -> None:
    module, input_shape = build_from_key("Conv-input:32x32x3-output:16x16x32")

    with pytest.raises(ConverterMissing, match="pip install litert-torch"):
        LiteRTBackend(converter="litert-torch").measure_module(module, input_shape, QUICK)


@pytest.mark.skipif(LITERT_TORCH_INSTALLED, reason="litert-torch is installed here")
def test_a_module_the_writer_cannot_express_needs_litert_torch() -> None:
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU()).eval()

    with pytest.raises(ConverterMissing, match="pip install litert-torch"):
        LiteRTBackend().measure_module(module, (1, 3, 8, 8), QUICK)


@pytest.mark.skipif(not LITERT_TORCH_INSTALLED, reason="litert-torch is not installed (`pip install litert-torch`)")
def test_litert_torch_converts_and_measures_an_mbconv(tmp_path: Path) -> None:
    module, input_shape = build_from_key(MBCONV_KEY)
    backend = LiteRTBackend(converter="litert-torch")
    x = torch.randn(input_shape)

    path, converter = backend.convert(module, input_shape, tmp_path / "op.tflite")
    got = run_tflite(path, x.permute(0, 2, 3, 1).contiguous().numpy())
    stats = backend.measure_tflite(path, QUICK)

    with torch.no_grad():
        expected = module(x).permute(0, 2, 3, 1).numpy()
    assert converter == "litert-torch"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert stats.median_ms > 0


def test_unknown_converter_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="builtin"):
        LiteRTBackend(converter="tf")


def test_a_whole_search_space_network_is_written_and_measured_without_a_converter(tmp_path: Path) -> None:
    # The calibration networks and a job's verification on a LiteRT device are
    # whole networks; an agent with only ai-edge-litert must run them.
    from search_spaces import build_model, sample_archs

    arch = next(a for a in sample_archs("tiny", 20, seed=0, resolution=16, num_classes=10, in_channels=3)
                if "zero" in a.blocks)  # a skipped cell too
    net = with_trained_batchnorm(build_model(arch)).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    path = write_tflite(net, (1, 3, 16, 16), tmp_path / "net.tflite")
    stats = LiteRTBackend(converter="builtin").measure_module(net, (1, 3, 16, 16), QUICK)

    got = run_tflite(path, x.permute(0, 2, 3, 1).contiguous().numpy())
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert stats.median_ms > 0 and stats.method["converter"] == "builtin"
