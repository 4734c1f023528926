"""Constant elasticity of substitution (CES): which of two baskets of goods a person prefers.

A participant with utility ``U(z) = (sum_i alpha_i z_i^rho)^(1/rho)`` over three goods is shown
two baskets ``z, z'`` in ``[0, 100]^3`` and reports a preference ``y`` in ``(0, 1)``:

.. math::

    \\eta \\sim \\mathcal{N}\\big(u (U(z) - U(z')),\\ (u \\tau (1 + \\lVert z - z' \\rVert))^2\\big),
    \\qquad y = \\mathrm{clip}(\\mathrm{sigmoid}(\\eta), \\epsilon, 1 - \\epsilon),

with ``tau = 0.005`` and ``epsilon = 2^-22``, so ``y`` has point masses at ``epsilon`` and
``1 - epsilon`` (:class:`CensoredSigmoidNormal`). The unknown ``theta = (rho, alpha_1, alpha_2,
alpha_3, log u)`` (event shape `(5,)`) has prior ``rho ~ Beta(1, 1)``, ``alpha ~ Dirichlet(1, 1,
1)``, ``log u ~ N(1, 3^2)`` (:class:`CESPrior`), the design is the 6-vector ``(z, z')`` and the
horizon is ``T = 10`` (methods.md §10.3).

The problem runs in float64 by default (the prior's dtype sets the loop's): a float32 ``y`` near
1 keeps only a few significant bits of ``1 - y``, which throws away most of the information in
``eta`` between about 10 and the censoring point ``logit(1 - epsilon) = 15.2``.

References:
    Foster et al., A Unified Stochastic Gradient Approach to Designing Bayesian-Optimal
    Experiments (AISTATS 2020), https://arxiv.org/abs/1911.00294; Deep Adaptive Design
    (ICML 2021), https://arxiv.org/abs/2103.02438.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pyro.distributions import Beta, Dirichlet, Normal, TorchDistribution, constraints
from torch import Tensor, nn
from torch.distributions.utils import broadcast_all

from bed.design_space import Box
from bed.experiment import Experiment
from priors.base import GenerativePrior

__all__ = [
    "CES",
    "EPSILON",
    "STEPS",
    "TAU",
    "CESPrior",
    "CensoredSigmoidNormal",
    "ces",
    "likelihood",
    "random_designs",
    "utility",
]

TAU = 0.005
EPSILON = 2.0**-22
STEPS = 10
BASKET_MAX = 100.0
LOG_U_LOC, LOG_U_SCALE = 1.0, 3.0
#: ``rho = Phi(z)`` is floored here (prior mass 1e-6 moved), so ``1 / rho`` stays finite.
RHO_MIN = 1e-6
#: goods below this amount count as this amount inside ``z_i^rho`` (keeps gradients finite at 0).
GOOD_MIN = 1e-6


# ----------------------------------------------------------------------------- the prior


class _CESModule(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("ref", torch.zeros((), dtype=dtype))


class CESPrior(GenerativePrior):
    """``rho ~ Beta(1, 1)``, ``alpha ~ Dirichlet(1, 1, 1)``, ``log u ~ N(1, 3^2)`` as a push of
    standard normals, so source-space samplers (ESS, NUTS) run on it.

    ``push`` maps ``z`` `(..., 5)` to ``theta = (rho, alpha_1..3, log u)`` `(..., 5)`:

    - ``rho = Phi(z_0)`` (uniform, i.e. Beta(1, 1); floored at ``RHO_MIN``);
    - ``e_i = -log Phi(z_i)`` for ``i = 1, 2, 3`` are Exp(1) draws, and ``alpha = e / sum(e)``
      is Dirichlet(1, 1, 1);
    - ``log u = 1 + 3 z_4``.

    The map is not invertible (three normals make a 2-simplex point), so there is no ``pull``.
    ``log_prob`` is exact: the sum of the three independent log-densities, the Dirichlet's
    taken (as in torch) with respect to Lebesgue measure on the first two coordinates of the
    simplex, i.e. ``log 2`` on its interior.

    Args:
        dtype: floating dtype of the draws (default float64; see the module docstring).
    """

    def __init__(self, dtype: torch.dtype = torch.float64, validate_args: bool | None = None):
        super().__init__(_CESModule(dtype), event_shape=(5,), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.real_vector

    def push(self, z: Tensor) -> Tensor:
        """``(Phi(z_0), normalized -log Phi(z_1..3), 1 + 3 z_4)``; `(..., 5)` -> `(..., 5)`."""
        self._flatten_source(z)  # shape check
        rho = torch.special.ndtr(z[..., :1]).clamp_min(RHO_MIN)  # (..., 1)
        e = -torch.special.log_ndtr(z[..., 1:4])  # (..., 3) Exp(1)
        e = e.clamp_min(torch.finfo(z.dtype).tiny)  # never all three zero
        alpha = e / e.sum(-1, keepdim=True)  # (..., 3) Dirichlet(1, 1, 1)
        log_u = LOG_U_LOC + LOG_U_SCALE * z[..., 4:]  # (..., 1)
        return torch.cat([rho, alpha, log_u], dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of ``theta`` `(..., 5)`; returns `(...)`."""
        if self._validate_args:
            self._validate_value(x)
        one = x.new_ones(())
        rho, alpha, log_u = x[..., 0], x[..., 1:4], x[..., 4]
        lp = Beta(one, one, validate_args=False).log_prob(rho.clamp(0.0, 1.0))
        lp = torch.where((rho >= 0) & (rho <= 1), lp, -math.inf)
        lp = lp + Dirichlet(one.expand(3), validate_args=False).log_prob(alpha.clamp_min(0.0))
        on_simplex = (alpha >= 0).all(-1) & ((alpha.sum(-1) - 1).abs() < 1e-5)
        lp = torch.where(on_simplex, lp, -math.inf)
        lp = lp + Normal(one * LOG_U_LOC, one * LOG_U_SCALE).log_prob(log_u)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))


# ----------------------------------------------------------------------------- the likelihood


class CensoredSigmoidNormal(TorchDistribution):
    """``y = clip(sigmoid(eta), low, high)`` with ``eta ~ N(loc, scale^2)``.

    The law of ``y`` has an atom at ``low`` of mass ``Phi((logit(low) - loc) / scale)``, an atom
    at ``high`` of mass ``Phi((loc - logit(high)) / scale)``, and between them the density
    ``N(logit y; loc, scale) / (y (1 - y))``. ``log_prob`` returns the log-mass at the atoms
    (computed with ``log_ndtr``, accurate far into the tails) and the log-density elsewhere: a
    density with respect to Lebesgue measure plus the two atoms, so it integrates to one and
    likelihood ratios between thetas are exact.

    Args:
        loc: location of ``eta``.
        scale: scale of ``eta`` (> 0).
        low: the lower clip value (``epsilon``).
        high: the upper clip value (``1 - epsilon``).
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        low: float = EPSILON,
        high: float = 1.0 - EPSILON,
        validate_args: bool | None = None,
    ) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        if not 0.0 < low < high < 1.0:
            raise ValueError(f"CensoredSigmoidNormal: need 0 < low < high < 1, got {low}, {high}")
        self.low, self.high = float(low), float(high)
        self.eta_low = math.log(low) - math.log1p(-low)  # logit(low)
        self.eta_high = math.log(high) - math.log1p(-high)  # logit(high)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CensoredSigmoidNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        new.low, new.high, new.eta_low, new.eta_high = (
            self.low,
            self.high,
            self.eta_low,
            self.eta_high,
        )
        super(CensoredSigmoidNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()) -> Tensor:
        """``clip(sigmoid(loc + scale * eps))``; differentiable in loc and scale off the atoms."""
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.from_noise(eps)

    def from_noise(self, eps: Tensor) -> Tensor:
        """The draw for standard-normal noise ``eps`` (broadcasting against the batch shape)."""
        eta = self.loc + self.scale * eps
        return torch.sigmoid(eta).clamp(self.low, self.high)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self.loc, self.scale
        # mass of each atom: Phi of the standardized clip point, in log space
        log_mass_low = torch.special.log_ndtr((self.eta_low - loc) / scale)
        log_mass_high = torch.special.log_ndtr((loc - self.eta_high) / scale)
        # interior: change of variables y = sigmoid(eta), |d eta / d y| = 1 / (y (1 - y))
        y = value.clamp(self.low, self.high)  # keeps the unused branch finite
        log_y, log_1my = torch.log(y), torch.log1p(-y)
        eta = log_y - log_1my
        z = (eta - loc) / scale
        log_dens = -0.5 * z.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi) - log_y - log_1my
        return torch.where(
            value <= self.low,
            log_mass_low,
            torch.where(value >= self.high, log_mass_high, log_dens),
        )

    @property
    def mean(self) -> Tensor:
        raise TypeError("CensoredSigmoidNormal has no closed-form mean")


def _log_utility(alpha: Tensor, rho: Tensor, basket: Tensor) -> Tensor:
    """``log U(z) = log(sum_i alpha_i z_i^rho) / rho``, `(...)`.

    Computed as ``log1p(sum_i abar_i expm1(rho log z_i)) / rho`` with ``abar = alpha / sum
    alpha``: exact algebra, but accurate for small ``rho`` too, where the naive power loses
    every digit of ``U``'s ratio (the CES -> Cobb-Douglas limit).
    """
    abar = alpha / alpha.sum(-1, keepdim=True)
    log_z = basket.clamp_min(GOOD_MIN).log()  # (..., 3)
    w = (abar * torch.expm1(rho * log_z)).sum(-1)  # (...)
    w = w.clamp_min(torch.finfo(w.dtype).eps - 1.0)  # > -1 exactly; rounding can touch it
    return torch.log1p(w) / rho[..., 0]


def utility(theta: Tensor, basket: Tensor) -> Tensor:
    """``U(z) = (sum_i alpha_i z_i^rho)^(1/rho)`` for theta `(..., 5)` and baskets `(..., 3)`."""
    return _log_utility(theta[..., 1:4], theta[..., :1], basket).exp()


def likelihood(theta: Tensor, design: Tensor) -> CensoredSigmoidNormal:
    """``p(y | theta, (z, z'))``: censored sigmoid of ``N(u (U(z) - U(z')), (u tau (1 + |z -
    z'|))^2)``.

    Args:
        theta: `(..., 5)` ``(rho, alpha_1..3, log u)``.
        design: `(..., 6)` the baskets ``(z, z')``; leading dims broadcast against theta's.

    Returns:
        a ``CensoredSigmoidNormal`` with the broadcast batch shape and event shape ``()``.
    """
    z, z2 = design[..., :3], design[..., 3:]
    u = theta[..., 4].exp()
    diff = utility(theta, z) - utility(theta, z2)
    loc = u * diff
    scale = u * TAU * (1.0 + (z - z2).norm(dim=-1))
    return CensoredSigmoidNormal(loc, scale)


def random_designs(shape, generator: torch.Generator | None = None, like: Tensor | None = None):
    """The random-design baseline: both baskets uniform on ``[0, 100]^3``, `(*shape, 6)`."""
    like = torch.zeros(()) if like is None else like
    u = torch.rand((*shape, 6), generator=generator, device=like.device, dtype=like.dtype)
    return BASKET_MAX * u


class CES:
    """The simulator: ``y = clip(sigmoid(eta), eps, 1 - eps)`` with noise from ``generator``."""

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., 5)` the true parameters.
            design: `(..., 6)` baskets.
            generator: a ``torch.Generator`` for ``eta``'s noise.

        Returns:
            `(...)` censored preferences in ``[eps, 1 - eps]``.
        """
        lik = likelihood(theta, design.to(theta))
        eps = torch.randn(
            lik.batch_shape, generator=generator, device=lik.loc.device, dtype=lik.loc.dtype
        )
        return lik.from_noise(eps)

    def __repr__(self) -> str:
        return "CES()"


def ces(prior_name: str = "ces", dtype: torch.dtype = torch.float64) -> Experiment:
    """The CES ``Experiment``: event shape `(5,)`, scalar y, design box ``[0, 100]^6``.

    Args:
        prior_name: ``"ces"`` (the only prior, :class:`CESPrior`).
        dtype: the prior's dtype, which the loop runs in (default float64).
    """
    if prior_name != "ces":
        raise ValueError(
            f"ces: unknown prior {prior_name!r}; the only choice is 'ces' (rho ~ Beta(1, 1), "
            "alpha ~ Dirichlet(1, 1, 1), log u ~ N(1, 3^2))"
        )
    box = Box([0.0] * 6, [BASKET_MAX] * 6)
    return Experiment(CESPrior(dtype), likelihood, box.to(dtype=dtype), name="ces")
