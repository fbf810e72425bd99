"""Image quality metrics in plain numpy (no scipy, no torch): PSNR and MS-SSIM.

Conventions, chosen to match how learned-codec papers and CompressAI's evaluation report Kodak:

* inputs are uint8 (or float in [0, 255]) arrays of shape (H, W) or (H, W, C), peak value 255;
* **PSNR** is over all pixels and channels of RGB together (one MSE);
* **MS-SSIM** (Wang, Simoncelli, Bovik 2003) is computed on each RGB channel separately and the
  per-channel values are averaged (as ``pytorch_msssim``, which CompressAI uses, does) — not on
  luma. Five scales with the standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), an
  11x11 Gaussian window with sigma 1.5 applied without padding ("valid"), K1 = 0.01, K2 = 0.03.
  Between scales the image is cropped to even size and averaged over 2x2 blocks. The contrast-
  structure terms of the first scales and the full SSIM of the last are clamped at 0 before the
  weighted product (negative values would make fractional powers undefined).

Images too small for five scales (the coarsest scale must still hold the 11-pixel window, so the
shorter side must be at least 11 * 2**4 = 176) are measured on as many scales as fit, with the
leading weights renormalised to sum to 1; images whose shorter side is below 11 pixels use a
Gaussian window cut to that side. :func:`ms_ssim_scales` says how many scales an image gets.
"""

from __future__ import annotations

import math

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
PEAK = 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """Peak signal-to-noise ratio in dB over every sample; ``inf`` for identical images."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def ms_ssim_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Number of scales an image of this size gets: the coarsest must still hold the window."""
    side, scales = min(height, width), 1
    while scales < max_scales and side // 2 ** scales >= WINDOW_SIZE:
        scales += 1
    return scales


def ms_ssim(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """Multi-scale SSIM in [0, 1] (1 for identical images), channel-wise then averaged."""
    x, y = _pair(a, b)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    scales = ms_ssim_scales(x.shape[0], x.shape[1])
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    weights /= weights.sum()
    channels = [_ms_ssim_channel(np.ascontiguousarray(x[..., c]), np.ascontiguousarray(y[..., c]), weights, peak)
                for c in range(x.shape[2])]
    return float(np.mean(channels))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on the decibel scale papers plot, ``-10 log10(1 - v)`` (``inf`` at 1)."""
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


# -- internals ------------------------------------------------------------------------------


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.ndim not in (2, 3) or x.size == 0:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, C) image, got shape {x.shape}")
    return x, y


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Normalised 1-d Gaussian taps; the 2-d window is their outer product (separable)."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering: one vectorised shifted sum per tap and axis."""
    k = taps.size
    h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
    rows = np.zeros((h, img.shape[1]) + img.shape[2:], dtype=np.float64)
    for i in range(k):
        rows += taps[i] * img[i: i + h]
    out = np.zeros((h, w) + img.shape[2:], dtype=np.float64)
    for i in range(k):
        out += taps[i] * rows[:, i: i + w]
    return out


def _ssim_terms(x: np.ndarray, y: np.ndarray, peak: float) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) of one scale of one channel.

    Each local moment is filtered on its own (H, W) map: stacking them along a channel axis is
    vectorised but several times slower, the stacked temporaries no longer fitting in cache.
    """
    size = min(WINDOW_SIZE, x.shape[0], x.shape[1])
    size -= 1 - size % 2  # odd, so the window has a centre
    taps = gaussian_window(size)
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x * mu_x
    var_y = _filter_valid(y * y, taps) - mu_y * mu_y
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return float(np.mean(luminance * cs_map)), float(np.mean(cs_map))


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 block average after cropping to even size."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    c = img[:h, :w]
    return 0.25 * (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2])


def _ms_ssim_channel(x: np.ndarray, y: np.ndarray, weights: np.ndarray, peak: float) -> float:
    """MS-SSIM of one (H, W) channel."""
    value = 1.0
    for scale, weight in enumerate(weights):
        ssim, cs = _ssim_terms(x, y, peak)
        term = ssim if scale == len(weights) - 1 else cs
        value *= max(term, 0.0) ** weight
        if scale < len(weights) - 1:
            x, y = _downsample(x), _downsample(y)
    return value
