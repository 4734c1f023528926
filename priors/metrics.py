"""Sample-quality statistics of field and image priors (used by model cards, tests, benchmarks).

All functions take batches of single-channel images `(n, H, W)` and compare summary statistics,
not individual draws: the mean image, the radially averaged power spectrum and the pixel
histogram.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pixel_histogram_l1", "radial_power_spectrum", "spectrum_log_error"]


def radial_power_spectrum(x: Tensor) -> Tensor:
    """The radially averaged power spectrum of a batch of images, averaged over the batch.

    Each image has its mean removed, is transformed by ``torch.fft.fft2`` and
    ``|X(k)|^2 / (H W)`` is averaged over the batch and over the integer rings
    ``round(|k|) = r`` for ``r = 1 .. min(H, W) // 2`` (DC excluded).

    Args:
        x: an `(n, H, W)` tensor.

    Returns:
        A `(min(H, W) // 2,)` tensor, entry ``r - 1`` the mean power at radius ``r``.
    """
    if x.dim() != 3:
        raise ValueError(f"radial_power_spectrum: expected (n, H, W) images, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    x = x - x.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(0) / (h * w)  # (H, W)
    ky = torch.fft.fftfreq(h, 1.0 / h, device=x.device)
    kx = torch.fft.fftfreq(w, 1.0 / w, device=x.device)
    radius = (ky[:, None] ** 2 + kx[None, :] ** 2).sqrt().round().long()  # (H, W)
    rings = torch.arange(1, min(h, w) // 2 + 1, device=x.device)
    in_ring = radius[None] == rings[:, None, None]  # (R, H, W)
    return (power[None] * in_ring).sum((-2, -1)) / in_ring.sum((-2, -1))


def spectrum_log_error(x: Tensor, reference: Tensor) -> Tensor:
    """``|log P_x(r) - log P_ref(r)|`` per ring ``r`` (:func:`radial_power_spectrum`), a
    `(min(H, W) // 2,)` tensor; 0.1 means the power at that scale is off by about 10 %."""
    return (radial_power_spectrum(x).log() - radial_power_spectrum(reference).log()).abs()


def pixel_histogram_l1(
    x: Tensor, reference: Tensor, bins: int = 20, low: float = -1.0, high: float = 1.0
) -> float:
    """L1 distance between the pixel-value histograms (``bins`` bins on ``[low, high]``, values
    outside clamped into the end bins) of two image batches; 0 = equal, 2 = disjoint."""
    h_x = torch.histc(x.clamp(low, high).flatten().float(), bins, low, high) / x.numel()
    h_r = torch.histc(reference.clamp(low, high).flatten().float(), bins, low, high)
    return (h_x - h_r / reference.numel()).abs().sum().item()
