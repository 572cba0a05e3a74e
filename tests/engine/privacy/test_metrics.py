"""PSNR and SSIM against hand computations; rebuilt batches paired with their originals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from automl_server.engine.privacy.metrics import (
    SSIM_K1,
    SSIM_K2,
    gaussian_window,
    match_rebuilds,
    psnr,
    ssim,
    ssim_window_size,
)


def test_psnr_is_ten_log10_of_range_squared_over_mse():
    original = np.zeros((1, 4, 4))
    rebuilt = np.full((1, 4, 4), 0.1)  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB

    assert psnr(original, rebuilt) == pytest.approx(20.0)
    assert psnr(original, original) == math.inf


def test_ssim_of_two_flat_images_is_the_luminance_term_by_hand():
    a, b = np.full((1, 8, 8), 0.2), np.full((1, 8, 8), 0.6)
    c1 = (SSIM_K1 * 1.0) ** 2
    by_hand = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)  # no variance: the contrast term is c2 / c2

    assert ssim(a, b) == pytest.approx(by_hand, rel=1e-9)


def test_ssim_of_one_window_matches_the_gaussian_weighted_formula_by_hand():
    rng = np.random.default_rng(0)
    a = rng.random((11, 11))
    b = np.clip(a + 0.1 * rng.standard_normal((11, 11)), 0, 1)
    w = gaussian_window(11, 1.5)  # the 11x11 image holds exactly one window position
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a, var_b = (w * a * a).sum() - mu_a ** 2, (w * b * b).sum() - mu_b ** 2
    cov = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    by_hand = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))

    assert ssim(a, b) == pytest.approx(by_hand, rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 0  # structure inverted


def test_the_window_shrinks_to_fit_an_8x8_digit_and_stays_normalised():
    assert ssim_window_size(8, 8) == 7 and ssim_window_size(28, 28) == 11
    assert gaussian_window(7, 1.5).sum() == pytest.approx(1.0)


def test_a_shuffled_rebuilt_batch_is_paired_with_its_originals():
    originals = np.stack([np.full((1, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    rebuilds = originals[[2, 0, 1]] + 0.01

    assert match_rebuilds(originals, rebuilds) == [1, 2, 0]
