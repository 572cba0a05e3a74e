"""How close a rebuilt image is to the original: PSNR, SSIM, and which rebuild
belongs to which original when a whole batch is rebuilt at once.

Images are float arrays in pixel units scaled to [0, 1] (``to_pixels`` undoes
the job's normalisation), shape (C, H, W); ``data_range`` is 1.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.signal import convolve2d

# Wang, Bovik, Sheikh, Simoncelli (2004), "Image quality assessment: from error
# visibility to structural similarity": an 11x11 Gaussian window of sigma 1.5,
# K1 = 0.01, K2 = 0.03, the mean SSIM over the window positions inside the image.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_pixels(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised NCHW model inputs back to pixels in [0, 1] (clipped: a rebuild may overshoot)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x.detach() * s + m).clamp(0.0, 1.0).cpu().numpy().astype(np.float64)


def psnr(original: np.ndarray, rebuilt: np.ndarray, data_range: float = 1.0) -> float:
    """10 log10(range^2 / MSE) in dB; infinite for identical images."""
    mse = float(np.mean((np.asarray(original, np.float64) - np.asarray(rebuilt, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """A normalised 2-D Gaussian window (sums to 1)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    line = np.exp(-(offsets ** 2) / (2.0 * sigma ** 2))
    window = np.outer(line, line)
    return window / window.sum()


def ssim_window_size(height: int, width: int) -> int:
    """11, or the largest odd size that fits a smaller image. Deviation: Wang et al.'s
    11x11 window does not fit an 8x8 digit; we shrink it (same sigma, truncated) rather
    than pad the image, which would invent pixels."""
    size = min(SSIM_WINDOW, height, width)
    return size if size % 2 == 1 else size - 1


def ssim(original: np.ndarray, rebuilt: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over every window position inside the image, averaged over channels."""
    a = np.asarray(original, np.float64)
    b = np.asarray(rebuilt, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs two images of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    window = gaussian_window(ssim_window_size(a.shape[-2], a.shape[-1]), SSIM_SIGMA)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2

    def local(image: np.ndarray) -> np.ndarray:
        return convolve2d(image, window, mode="valid")  # the window is symmetric: convolution = correlation

    values = []
    for x, y in zip(a, b):
        mu_x, mu_y = local(x), local(y)
        var_x = local(x * x) - mu_x ** 2
        var_y = local(y * y) - mu_y ** 2
        cov = local(x * y) - mu_x * mu_y
        score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        values.append(float(score.mean()))
    return float(np.mean(values))


def match_rebuilds(originals: np.ndarray, rebuilds: np.ndarray) -> list[int]:
    """For each original, the index of its rebuild. A batch's gradient is a sum over
    its images, so a rebuilt batch comes back in any order: pair them by the least
    total squared error (Hungarian assignment)."""
    n = len(originals)
    flat_o = originals.reshape(n, -1)
    flat_r = rebuilds.reshape(len(rebuilds), -1)
    cost = ((flat_o[:, None, :] - flat_r[None, :, :]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    order = [0] * n
    for r, c in zip(rows, cols):
        order[int(r)] = int(c)
    return order
