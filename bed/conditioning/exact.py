"""Closed-form posteriors: Gaussian prior, linear-Gaussian observations (methods.md section 7.1).

With prior ``N(m0, S0)`` and observations ``y = A theta + b + e``, ``e ~ N(0, R)``:

.. math::

    K = S_0 A^T (A S_0 A^T + R)^{-1}, \\quad m = m_0 + K (y - A m_0 - b), \\quad
    S = S_0 - K A S_0 = (S_0^{-1} + A^T R^{-1} A)^{-1}.

**How A, b and R are found: by probing the likelihood.** ``likelihood(theta, design)`` is
called once on a batch of ``D + 2`` thetas (``m0``, ``m0 + s_j e_j`` with ``s_j`` the prior
standard deviation, and one random point) at all ``n`` designs. The returned distribution must
be a ``Normal`` or ``MultivariateNormal`` (possibly wrapped in ``Independent``); ``A`` is read
from the finite differences of its mean, ``R`` from its (diagonal or block) covariance. The
method then checks that the mean is affine (the random point is predicted by ``A`` to within
``1e3`` machine epsilons of the mean's scale) and that the covariance does not depend on
theta, and raises a ValueError naming the failed check otherwise. The linear algebra runs in
float64 (``S0 - K A S0`` cancels badly for informative data) and the results are cast back.

The Gaussian-mixture prior branch (``priors.analytic.GaussianMixture``) is not implemented
here: that prior did not exist when this module was written.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal

from bed.conditioning.base import Posterior, Problem, available_methods, prior_posterior, register

__all__ = ["gaussian_posterior", "probe_linear_gaussian", "run"]


def _mean_and_cov(lik, n: int, batch: int) -> tuple[Tensor, Tensor]:
    """Mean `B x P` and per-observation covariance `B x n x k x k` of the probed likelihood."""
    base = lik
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, MultivariateNormal):
        mean = lik.mean  # (B, n, ..., k)
        k = base.event_shape[-1]
        cov = base.covariance_matrix.expand(mean.shape + (k,))
        cov = cov.reshape(batch, -1, k, k)  # (B, n * m, k, k)
    elif isinstance(base, Normal):
        mean = lik.mean  # (B, n, *obs)
        var = base.scale.pow(2).expand(base.batch_shape)
        cov = var.reshape(batch, -1, 1, 1)  # (B, n * prod(obs), 1, 1)
    else:
        raise TypeError(
            f"exact: the likelihood returns {type(base).__name__}; the closed form needs a "
            "Normal or MultivariateNormal likelihood with a mean affine in theta. Other "
            f"methods: {available_methods()}"
        )
    return mean.reshape(batch, -1), cov  # (B, P), (B, blocks, k, k)


def probe_linear_gaussian(problem: Problem) -> tuple[Tensor, Tensor, Tensor]:
    """Find ``A`` (`P x D`), the mean at the prior mean ``c`` (`P`) and ``R`` (`P x P`).

    ``P = n * prod(obs_shape)``; the mean of the likelihood is ``c + A (theta - m0)``.
    """
    prior, exp = problem.prior, problem.exp
    m0 = prior.loc  # (D,)
    d = m0.numel()
    s = prior.covariance_matrix.diagonal().sqrt()  # (D,)
    v = torch.randn(d, generator=problem.generator, device=m0.device, dtype=m0.dtype)
    check_point = m0 + prior.scale_tril @ v  # (D,)
    thetas = torch.cat([m0[None], m0 + torch.diag(s), check_point[None]])  # (D + 2, D)
    thetas = thetas.reshape((d + 2, 1) + tuple(exp.event_shape))  # (D + 2, 1, *event)
    n = problem.num_observations
    with torch.no_grad():
        lik = exp.likelihood(thetas, problem.designs)  # batch (D + 2, n)
    mean, cov = _mean_and_cov(lik, n, d + 2)  # (D + 2, P), (D + 2, blocks, k, k)
    c = mean[0]
    a = ((mean[1 : d + 1] - c) / s[:, None]).mT  # (P, D)
    predicted = c + a @ (check_point - m0)
    scale = 1.0 + mean.abs().max()
    tol = 1e3 * torch.finfo(mean.dtype).eps * scale
    err = (predicted - mean[-1]).abs().max()
    if not err <= tol:
        raise ValueError(
            f"exact: the likelihood's mean is not affine in theta (error {float(err):.3g} at a "
            f"random theta, tolerance {float(tol):.3g}); the closed form needs linear-Gaussian "
            f"observations. Other methods: {available_methods()}"
        )
    cov_err = (cov - cov[:1]).abs().max()
    if not cov_err <= 1e3 * torch.finfo(cov.dtype).eps * (1.0 + cov[0].abs().max()):
        raise ValueError(
            f"exact: the likelihood's covariance depends on theta (max change "
            f"{float(cov_err):.3g}); the closed form needs a fixed noise covariance. Other "
            f"methods: {available_methods()}"
        )
    r = torch.block_diag(*cov[0])  # (P, P)
    return a, c, r


def gaussian_posterior(
    m0: Tensor, s0: Tensor, a: Tensor, c: Tensor, r: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Posterior mean `D`, covariance `D x D` and log evidence of the linear-Gaussian model.

    Args:
        m0: prior mean `D`; s0: prior covariance `D x D`.
        a: `P x D`; c: `P` mean of y at ``m0``; r: `P x P` noise covariance; y: `P`.
    """
    m0, s0, a, c, r, y = (t.double() for t in (m0, s0, a, c, r, y))
    sy = a @ s0 @ a.mT + r  # (P, P)
    ly = torch.linalg.cholesky(sy)
    gain = torch.cholesky_solve(a @ s0, ly).mT  # (D, P) = S0 A^T Sy^{-1}
    innov = y - c  # (P,)
    m = m0 + gain @ innov
    s = s0 - gain @ a @ s0
    s = 0.5 * (s + s.mT)
    white = torch.linalg.solve_triangular(ly, innov[:, None], upper=False)[:, 0]
    p = y.numel()
    log_evidence = (
        -0.5 * white.pow(2).sum() - ly.diagonal().log().sum() - 0.5 * p * math.log(2 * math.pi)
    )
    return m, s, log_evidence


@register("exact")
def run(problem: Problem) -> Posterior:
    """Exact posterior for a ``priors.analytic.Gaussian`` prior and linear-Gaussian likelihood.

    Draws are ``m + S^{1/2} eps`` (symmetric square root by ``eigh``, robust when ``S`` is
    near-singular) with ``eps`` from the problem's generator; ``source`` is ``prior.pull`` of
    the draws. Diagnostics: ``loc`` (`D`), ``covariance_matrix`` (`D x D`), ``log_evidence``,
    ``num_evals`` (probe thetas), ``wall_time``.
    """
    from priors.analytic import Gaussian

    prior = problem.prior
    if not isinstance(prior, Gaussian):
        raise TypeError(
            f"condition(method='exact') needs a priors.analytic.Gaussian prior, got "
            f"{type(prior).__name__}; available methods: {available_methods()}"
        )
    if problem.num_observations == 0:
        post = prior_posterior(problem, "exact")
        post.diagnostics.update(loc=prior.loc, covariance_matrix=prior.covariance_matrix)
        return post
    a, c, r = probe_linear_gaussian(problem)
    y = problem.observations.reshape(-1)  # (P,)
    m, s, log_evidence = gaussian_posterior(prior.loc, prior.covariance_matrix, a, c, r, y)
    evals, evecs = torch.linalg.eigh(s)
    root = evecs * evals.clamp_min(0).sqrt()  # (D, D), root @ root.T = S
    d = m.numel()
    eps = torch.randn(
        (problem.num_samples, d), generator=problem.generator, device=m.device, dtype=m.dtype
    )
    flat = (m + eps @ root.mT).to(prior.dtype)  # (S, D)
    theta = flat.reshape((problem.num_samples,) + tuple(prior.event_shape))
    diagnostics = {
        "loc": m.to(prior.dtype),
        "covariance_matrix": s.to(prior.dtype),
        "log_evidence": float(log_evidence),
        "num_evals": d + 2,
    }
    return Posterior(theta, prior.pull(theta), diagnostics, "exact")
