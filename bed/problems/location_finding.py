"""Location finding: the standard adaptive-design benchmark (Foster et al. 2021, DAD's setting).

K sources hide at ``theta_k`` in ``R^p``; a sensor at ``xi`` reads the log of the total signal

.. math::

    \\mu(\\theta, \\xi) = b + \\sum_{k=1}^K \\frac{\\alpha_k}{m + \\lVert \\theta_k - \\xi \\rVert^2},
    \\qquad y \\sim \\mathcal{N}(\\log \\mu(\\theta, \\xi), \\sigma^2),

with ``theta_k ~ N(0, I)`` independently, ``K = 2``, ``p = 2``, ``b = 0.1``, ``m = 1e-4``,
``alpha_k = 1``, ``sigma = 0.5`` and a horizon of ``T = 30`` measurements (methods.md §10.2).
Designs live in the box ``[-4, 4]^2``, which covers the prior.

References:
    Deep Adaptive Design: Amortizing Sequential Bayesian Experimental Design
    (Foster, Ivanova, Malik, Rainforth 2021), https://arxiv.org/abs/2103.02438
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal
from torch import Tensor

import priors
from bed.design_space import Box
from bed.experiment import Experiment

__all__ = [
    "NUM_SOURCES",
    "STEPS",
    "LocationFinding",
    "location_finding",
    "random_designs",
    "signal",
    "spce_ceiling",
]

NUM_SOURCES = 2  # K
SPACE_DIM = 2  # p
BACKGROUND = 0.1  # b
MAX_SIGNAL = 1e-4  # m
STRENGTH = 1.0  # alpha_k
NOISE = 0.5  # sigma
STEPS = 30  # T
BOX = 4.0  # designs in [-BOX, BOX]^2


def signal(theta: Tensor, design: Tensor) -> Tensor:
    """The mean signal ``mu(theta, xi)``.

    Args:
        theta: `(..., K, p)` source locations.
        design: `(..., p)` sensor locations; leading dims broadcast against theta's.

    Returns:
        `(...)` the broadcast mean signal (> b).
    """
    diff = theta - design.unsqueeze(-2)  # (..., K, p)
    sq = diff.pow(2).sum(-1)  # (..., K)
    return BACKGROUND + (STRENGTH / (MAX_SIGNAL + sq)).sum(-1)  # (...)


def likelihood(theta: Tensor, design: Tensor) -> Normal:
    """``p(y | theta, xi) = N(log mu(theta, xi), sigma^2)``: reparameterizable, scalar y.

    Args:
        theta: `(..., K, p)`.
        design: `(..., p)`.

    Returns:
        a ``Normal`` with batch shape the broadcast leading dims and event shape ``()``.
    """
    loc = signal(theta, design).log()
    return Normal(loc, torch.full_like(loc, NOISE))


def random_designs(shape, generator: torch.Generator | None = None, like: Tensor | None = None):
    """The random-design baseline: ``xi ~ N(0, I_2)``, clamped to the box ``[-4, 4]^2``.

    (A coordinate leaves the box with probability 6e-5, so the clamp almost never acts.)

    Args:
        shape: leading shape, e.g. ``(R, T)``.
        generator: a ``torch.Generator``.
        like: a tensor whose device and dtype the designs take.

    Returns:
        `(*shape, 2)` designs.
    """
    like = torch.zeros(()) if like is None else like
    z = torch.randn((*shape, SPACE_DIM), generator=generator, device=like.device, dtype=like.dtype)
    return z.clamp(-BOX, BOX)


class LocationFinding:
    """The simulator of the location-finding problem: ``simulate(theta, design) -> y``.

    Draws ``y ~ N(log mu(theta, xi), sigma^2)`` with the noise from ``generator``.
    """

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., K, p)` true source locations.
            design: `(..., p)` sensor locations.
            generator: a ``torch.Generator`` for the measurement noise.

        Returns:
            `(...)` noisy log-signal readings.
        """
        loc = signal(theta, design).log()
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + NOISE * noise

    def __repr__(self) -> str:
        return "LocationFinding()"


def _prior(name: str):
    if name == "gaussian":
        d = NUM_SOURCES * SPACE_DIM
        return priors.analytic.Gaussian(
            torch.zeros(d), torch.eye(d), event_shape=(NUM_SOURCES, SPACE_DIM)
        )
    if name == "sources-2x2":
        return priors.load("sources-2x2")
    raise ValueError(
        f"location-finding: unknown prior {name!r}; choose 'sources-2x2' (the flow prior, "
        "default) or 'gaussian' (the exact N(0, I))"
    )


def location_finding(prior: str = "sources-2x2") -> Experiment:
    """The location-finding ``Experiment``.

    Args:
        prior: ``"sources-2x2"`` (the shipped flow prior trained on N(0, I), default) or
            ``"gaussian"`` (the exact ``priors.analytic.Gaussian`` N(0, I) over `(2, 2)`).

    Returns:
        an ``Experiment`` with event shape `(2, 2)`, scalar observations and design space
        ``Box([-4, -4], [4, 4])``.
    """
    return Experiment(
        _prior(prior),
        likelihood,
        Box([-BOX] * SPACE_DIM, [BOX] * SPACE_DIM),
        name="location-finding",
    )


def spce_ceiling(num_contrastive: int) -> float:
    """``log(L + 1)``: the sPCE bound with ``L`` contrastive samples never exceeds it."""
    return math.log(num_contrastive + 1)
