"""Training data for the shipped priors, generated in the package (no downloads).

Every generator has the signature ``fn(n, generator=None, **options) -> Tensor`` returning
``n`` draws of shape ``(n, *event_shape)`` in the default float dtype on the CPU, with all
randomness drawn from ``generator`` (a CPU ``torch.Generator``), so a seed reproduces the data
on any machine. ``priors.train`` recipes refer to these functions; add new data sets here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["location_finding_sources", "two_moons"]


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """Two interleaving half circles, as ``sklearn.datasets.make_moons``, centred and doubled.

    Half the points lie on the upper moon ``(cos t, sin t)`` and half on the lower moon
    ``(1 - cos t, 0.5 - sin t)``, ``t ~ U(0, pi)``, plus isotropic Gaussian noise of standard
    deviation ``noise``; the result is then mapped by ``x -> 2 (x - (0.5, 0.25))`` so that it
    lies in about ``[-3, 3] x [-1.7, 1.7]`` with mean near zero.

    Args:
        n: number of points.
        generator: CPU random generator.
        noise: noise standard deviation before scaling (sklearn's ``noise``).

    Returns:
        An `n x 2` tensor.
    """
    t = torch.rand(n, generator=generator) * math.pi  # (n,)
    upper = torch.rand(n, generator=generator) < 0.5  # (n,)
    x = torch.where(upper, t.cos(), 1.0 - t.cos())  # (n,)
    y = torch.where(upper, t.sin(), 0.5 - t.sin())  # (n,)
    points = torch.stack([x, y], dim=-1)  # (n, 2)
    points = points + noise * torch.randn(n, 2, generator=generator)
    return 2.0 * (points - torch.tensor([0.5, 0.25]))


def location_finding_sources(
    n: int, generator: torch.Generator | None = None, num_sources: int = 2, dim: int = 2
) -> Tensor:
    """Draws from the location-finding prior: ``num_sources`` independent ``N(0, I_dim)``
    source locations (methods.md section 10.2).

    Args:
        n: number of draws.
        generator: CPU random generator.
        num_sources: number of sources `K`.
        dim: spatial dimension `d`.

    Returns:
        An `n x K x d` tensor.
    """
    return torch.randn(n, num_sources, dim, generator=generator)
