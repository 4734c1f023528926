"""Pharmacokinetics: when to draw blood after an oral dose (one-compartment model, methods.md §10.4).

A dose ``D = 400`` is absorbed at rate ``k_a``, eliminated at rate ``k_e`` and distributed in a
volume ``V``; a sample taken ``xi`` hours after the dose reads the concentration

.. math::

    c(\\theta, \\xi) = \\frac{D}{V} \\frac{k_a}{k_a - k_e}
        \\left(e^{-k_e \\xi} - e^{-k_a \\xi}\\right),
    \\qquad y \\sim \\mathcal{N}\\left(c, (0.1 c)^2 + 0.1\\right),

(a multiplicative 10 % error plus an additive one of variance 0.1). The unknown is
``theta = log(k_a, k_e, V)`` with prior ``N(log(1, 0.1, 20), 0.05 I)`` (0.05 is the *variance*
of each coordinate). The prior is ``priors.analytic.Gaussian`` over the log-parameters; the
likelihood exponentiates them. Designs are sampling times in ``[0, 24]`` h; the horizon is
``T = 5`` (``T = 10`` is the other published setting).

References:
    Ryan, Drovandi, Thompson, Pettitt, Towards Bayesian experimental design for nonlinear
    models that require a large number of sampling times (2014),
    https://doi.org/10.1016/j.csda.2013.08.017; the setting of Foster et al. (2021 DAD,
    https://arxiv.org/abs/2103.02438) and Ivanova et al. (2021, iDAD).
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from torch import Tensor

import priors
from bed.design_space import Box
from bed.experiment import Experiment

__all__ = [
    "DOSE",
    "STEPS",
    "Pharmacokinetics",
    "concentration",
    "likelihood",
    "peak_time",
    "pharmacokinetics",
    "prior",
    "random_designs",
]

DOSE = 400.0  # D
PRIOR_LOC = (1.0, 0.1, 20.0)  # (k_a, k_e, V) at the prior median
PRIOR_VAR = 0.05  # variance of each log-parameter
MULT_NOISE = 0.1  # y's standard deviation grows as 0.1 c ...
ADD_VAR = 0.1  # ... plus an additive variance 0.1
T_MAX = 24.0  # designs in [0, 24] h
STEPS = 5  # T (10 is the other published horizon)


def _one_minus_exp_over(x: Tensor) -> Tensor:
    """``(1 - exp(-x)) / x``, equal to 1 at ``x = 0`` and accurate near it (via ``expm1``)."""
    small = x.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x, -torch.expm1(-safe) / safe)


def concentration(theta: Tensor, design: Tensor) -> Tensor:
    """The mean concentration ``c(theta, xi)``.

    Written as ``D/V k_a xi e^{-k_e xi} (1 - e^{-(k_a - k_e) xi}) / ((k_a - k_e) xi)``, which is
    the formula above and stays finite when ``k_a = k_e``.

    Args:
        theta: `(..., 3)` log-parameters ``log(k_a, k_e, V)``.
        design: `(..., 1)` sampling times; leading dims broadcast against theta's.

    Returns:
        `(...)` concentrations (>= 0).
    """
    k_a, k_e, vol = theta.exp().unbind(-1)  # each (...)
    t = design[..., 0]
    delta = k_a - k_e
    return DOSE / vol * k_a * t * torch.exp(-k_e * t) * _one_minus_exp_over(delta * t)


def likelihood(theta: Tensor, design: Tensor) -> Normal:
    """``p(y | theta, xi) = N(c, (0.1 c)^2 + 0.1)``: scalar y, reparameterizable.

    Args:
        theta: `(..., 3)` log-parameters.
        design: `(..., 1)` sampling times.

    Returns:
        a ``Normal`` with batch shape the broadcast leading dims and event shape ``()``.
    """
    c = concentration(theta, design)
    return Normal(c, ((MULT_NOISE * c).pow(2) + ADD_VAR).sqrt())


def prior(dtype: torch.dtype | None = None) -> priors.analytic.Gaussian:
    """``N(log(1, 0.1, 20), 0.05 I)`` over ``theta = log(k_a, k_e, V)``, event shape `(3,)`."""
    loc = torch.tensor(PRIOR_LOC, dtype=dtype).log()
    return priors.analytic.Gaussian(loc, PRIOR_VAR * torch.eye(3, dtype=loc.dtype))


def random_designs(shape, generator: torch.Generator | None = None, like: Tensor | None = None):
    """The random-design baseline: sampling times ``xi ~ U[0, 24]``.

    Args:
        shape: leading shape, e.g. ``(R, T)``.
        generator: a ``torch.Generator``.
        like: a tensor whose device and dtype the designs take.

    Returns:
        `(*shape, 1)` designs.
    """
    like = torch.zeros(()) if like is None else like
    u = torch.rand((*shape, 1), generator=generator, device=like.device, dtype=like.dtype)
    return T_MAX * u


class Pharmacokinetics:
    """The simulator: ``y ~ N(c(theta, xi), (0.1 c)^2 + 0.1)`` with noise from ``generator``."""

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., 3)` true log-parameters.
            design: `(..., 1)` sampling times.
            generator: a ``torch.Generator`` for the measurement noise.

        Returns:
            `(...)` noisy concentrations.
        """
        lik = likelihood(theta, design)
        noise = torch.randn(
            lik.loc.shape, generator=generator, device=lik.loc.device, dtype=lik.loc.dtype
        )
        return lik.loc + lik.scale * noise

    def __repr__(self) -> str:
        return "Pharmacokinetics()"


def pharmacokinetics(prior_name: str = "gaussian") -> Experiment:
    """The pharmacokinetics ``Experiment``: event shape `(3,)`, scalar y, ``Box([0], [24])``.

    Args:
        prior_name: ``"gaussian"`` (the only prior: exact ``N(log(1, 0.1, 20), 0.05 I)``).
    """
    if prior_name != "gaussian":
        raise ValueError(
            f"pharmacokinetics: unknown prior {prior_name!r}; the only choice is 'gaussian' "
            "(N(log(1, 0.1, 20), 0.05 I) over log(k_a, k_e, V))"
        )
    return Experiment(prior(), likelihood, Box([0.0], [T_MAX]), name="pharmacokinetics")


def peak_time(theta: Tensor) -> Tensor:
    """``log(k_a / k_e) / (k_a - k_e)``, the time of the concentration peak, `(...)`."""
    k_a, k_e, _ = theta.exp().unbind(-1)
    return (k_a.log() - k_e.log()) / (k_a - k_e)
