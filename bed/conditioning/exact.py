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

For a Gaussian-mixture prior (``priors.analytic.GaussianMixture``) the same probe (at the
mixture mean, steps of the mixture's standard deviation) gives ``A`` and ``R``, and each
component is updated in closed form (methods.md section 7.1).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal

from bed.conditioning.base import Posterior, Problem, available_methods, register

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


def probe_linear_gaussian(
    problem: Problem, m0: Tensor, s: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Find ``A`` (`P x D`), the mean ``c`` (`P`) at ``m0`` and ``R`` (`P x P`).

    ``P = n * prod(obs_shape)``; the mean of the likelihood is ``c + A (theta - m0)``. Probes
    are ``m0``, ``m0 + s_j e_j`` and ``m0 + s * v`` with ``v ~ N(0, I)`` (`D` each).
    """
    exp = problem.exp
    d = m0.numel()
    v = torch.randn(d, generator=problem.generator, device=m0.device, dtype=m0.dtype)
    check_point = m0 + s * v  # (D,)
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
    """Posterior mean `D`, covariance `D x D` and log evidence (a 0-dim tensor) of the
    linear-Gaussian model.

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


def _sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of PSD `(..., D, D)` by ``eigh`` (robust when near-singular)."""
    evals, evecs = torch.linalg.eigh(s)
    return evecs * evals.clamp_min(0).sqrt()[..., None, :]


@register("exact")
def run(problem: Problem) -> Posterior:
    """Exact posterior for a ``priors.analytic.Gaussian`` or ``priors.analytic.GaussianMixture``
    prior and a linear-Gaussian likelihood.

    Gaussian: draws ``m + S^{1/2} eps`` with ``eps`` from the problem's generator; ``source`` is
    ``prior.pull`` of the draws. Diagnostics: ``loc`` (`D`), ``covariance_matrix`` (`D x D`),
    ``log_evidence``, ``num_evals`` (probe thetas), ``wall_time``.

    Gaussian mixture (methods.md 7.1): component ``k`` is updated by the Kalman formulas above
    and its weight becomes ``w_k N(y; A m_k + b, A S_k A^T + R)`` (normalised); draws pick a
    component (multinomial) and then draw from it. ``source`` is ``None`` (the mixture's
    ``push`` is an ODE). Diagnostics: ``weights`` (`K`), ``locs`` (`K x D`),
    ``covariance_matrices`` (`K x D x D`), ``log_evidence``, ``num_evals``.
    """
    from priors.analytic import Gaussian, GaussianMixture

    prior, gen = problem.prior, problem.generator
    if not isinstance(prior, (Gaussian, GaussianMixture)):
        raise TypeError(
            f"condition(method='exact') needs a priors.analytic.Gaussian or GaussianMixture "
            f"prior, got {type(prior).__name__}; available methods: {available_methods()}"
        )
    if isinstance(prior, Gaussian):
        w0, m0, s0 = prior.loc.new_ones(1), prior.loc[None], prior.covariance_matrix[None]
    else:
        w0, m0, s0 = prior.weights, prior.locs, prior.covariance_matrices
    d, num = m0.shape[1], problem.num_samples
    if problem.num_observations == 0:
        w, m, s, log_evidence = w0.double(), m0.double(), s0.double(), 0.0
    else:
        center = (w0[:, None] * m0).sum(0)  # (D,) prior mean
        second = (w0[:, None, None] * (s0 + m0[:, :, None] * m0[:, None, :])).sum(0)
        scale = (second.diagonal() - center.pow(2)).clamp_min(1e-12).sqrt()  # (D,) prior sd
        a, c, r = probe_linear_gaussian(problem, center, scale)
        y = problem.observations.reshape(-1)  # (P,)
        c_k = c + (m0 - center) @ a.mT  # (K, P): the mean of y at each component mean
        parts = [gaussian_posterior(m0[k], s0[k], a, c_k[k], r, y) for k in range(len(w0))]
        m = torch.stack([p[0] for p in parts])  # (K, D)
        s = torch.stack([p[1] for p in parts])  # (K, D, D)
        log_w = w0.double().log() + torch.stack([p[2] for p in parts])  # (K,)
        log_evidence = float(log_w.logsumexp(0))
        w = (log_w - log_w.logsumexp(0)).exp()
    comp = torch.multinomial(w.to(prior.dtype), num, replacement=True, generator=gen)  # (S,)
    eps = torch.randn((num, d), generator=gen, device=m.device, dtype=m.dtype)
    root = _sqrt(s)  # (K, D, D)
    flat = (m[comp] + (root[comp] @ eps[:, :, None])[..., 0]).to(prior.dtype)  # (S, D)
    theta = flat.reshape((num,) + tuple(prior.event_shape))
    evals = 0 if problem.num_observations == 0 else d + 2
    if isinstance(prior, Gaussian):
        diagnostics = {
            "loc": m[0].to(prior.dtype),
            "covariance_matrix": s[0].to(prior.dtype),
            "log_evidence": log_evidence,
            "num_evals": evals,
        }
        return Posterior(theta, prior.pull(theta), diagnostics, "exact")
    diagnostics = {
        "weights": w.to(prior.dtype),
        "locs": m.to(prior.dtype),
        "covariance_matrices": s.to(prior.dtype),
        "log_evidence": log_evidence,
        "num_evals": evals,
    }
    return Posterior(theta, None, diagnostics, "exact")
