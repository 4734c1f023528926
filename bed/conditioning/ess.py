"""ESS-Flow: elliptical slice sampling in the prior's source space.

For a prior ``theta = push(z)``, ``z ~ N(0, I)``, the posterior in source space is

.. math:: \\pi(z) \\propto \\mathcal{N}(z; 0, I) \\prod_i p(y_i \\mid \\mathrm{push}(z), \\xi_i),

because the Jacobian of ``push`` cancels (methods.md section 4.1). Elliptical slice sampling
(Murray, Adams and MacKay 2010) samples it with forward evaluations of ``push`` only: no
gradients, no step size. Here all chains move at once: each has its own angle bracket, and the
map is evaluated only for the chains still shrinking (an active index set), as in the
pseudocode of methods.md section 4.3.

References:
    Elliptical slice sampling (Murray, Adams, MacKay 2010), https://arxiv.org/abs/1001.0175
    ESS-Flow: training-free conditioning of flow-based generative priors (Kalaivanan, Zhao,
    Sjolund, Lindsten 2025), https://arxiv.org/abs/2510.05849
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from bed.conditioning.base import (
    Posterior,
    Problem,
    SourceLogLikelihood,
    initial_source,
    prior_posterior,
    register,
    require_push,
)
from bed.conditioning.runner import Kernel, sample_chains

__all__ = ["ESSInfo", "ESSState", "init", "kernel", "run", "step"]

#: a bracket narrower than this (radians) has collapsed onto the current point.
COLLAPSE_WIDTH = 1e-12


class ESSState(NamedTuple):
    """Per-chain state: ``position`` `C x D` (flat source z) and its ``loglik`` `C`."""

    position: Tensor
    loglik: Tensor


class ESSInfo(NamedTuple):
    """Per-chain diagnostics of one ESS iteration (all `C` tensors).

    Attributes:
        num_shrinks: rejected proposals before acceptance (the bracket shrinks once each).
        num_evals: likelihood (map) evaluations, ``num_shrinks + 1``.
        collapsed: 1 where the bracket collapsed and the chain kept its position.
        angle: the accepted angle (0 for a collapsed bracket).
    """

    num_shrinks: Tensor
    num_evals: Tensor
    collapsed: Tensor
    angle: Tensor


def init(position: Tensor, loglik_fn: Callable[[Tensor], Tensor]) -> ESSState:
    """Start chains at `C x D` ``position``; the log-likelihoods must be finite."""
    loglik = loglik_fn(position)  # (C,)
    bad = ~torch.isfinite(loglik)
    if bad.any():
        raise ValueError(
            f"ess.init: {int(bad.sum())} of {loglik.shape[0]} chains start where the "
            "likelihood is zero or NaN; start them inside the likelihood's support"
        )
    return ESSState(position, loglik)


def step(
    state: ESSState,
    loglik_fn: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
    max_shrinks: int = 100,
) -> tuple[ESSState, ESSInfo]:
    """One elliptical slice sampling iteration for every chain.

    Args:
        state: `C x D` positions and their `C` log-likelihoods.
        loglik_fn: ``M x D -> M``; called only on the chains still shrinking.
        generator: source of randomness.
        max_shrinks: a chain still rejecting after this many shrinks raises a RuntimeError.

    Returns:
        The new state and an :class:`ESSInfo`.
    """
    z, loglik = state
    c = z.shape[0]
    nu = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)  # (C, D)
    u = torch.rand(c, generator=generator, device=z.device, dtype=z.dtype)
    log_level = loglik + u.log()  # (C,) slice level
    theta = 2 * math.pi * torch.rand(c, generator=generator, device=z.device, dtype=z.dtype)
    lo, hi = theta - 2 * math.pi, theta

    new_z, new_loglik = z.clone(), loglik.clone()
    num_shrinks = torch.zeros(c, dtype=torch.long, device=z.device)
    collapsed = torch.zeros(c, dtype=torch.bool, device=z.device)
    angle = torch.zeros_like(loglik)
    idx = torch.arange(c, device=z.device)  # active chains; theta/lo/hi/z0/nu0 are aligned
    z0, nu0, level = z, nu, log_level
    for _ in range(max_shrinks + 1):
        prop = z0 * theta.cos()[:, None] + nu0 * theta.sin()[:, None]  # (A, D)
        lp = loglik_fn(prop)  # (A,)
        acc = lp > level  # NaN -> reject
        done_idx = idx[acc]
        new_z[done_idx] = prop[acc]
        new_loglik[done_idx] = lp[acc]
        angle[done_idx] = theta[acc]
        rej = ~acc
        # shrink the bracket towards 0 (theta = 0 is the current point)
        neg = theta < 0
        lo = torch.where(rej & neg, theta, lo)
        hi = torch.where(rej & ~neg, theta, hi)
        gone = rej & (hi - lo < COLLAPSE_WIDTH)  # bracket collapsed: keep the current z
        collapsed[idx[gone]] = True
        keep = rej & ~gone
        num_shrinks[idx[rej]] += 1
        if not keep.any():
            break
        idx, z0, nu0, level = idx[keep], z0[keep], nu0[keep], level[keep]
        lo, hi = lo[keep], hi[keep]
        r = torch.rand(idx.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        theta = lo + (hi - lo) * r
    else:
        raise RuntimeError(
            f"ess.step: {idx.shape[0]} of {c} chains still rejected after max_shrinks="
            f"{max_shrinks} shrinks (likelihood too sharp or NaN around the chain); raise "
            "max_shrinks, check the likelihood, or use a tempered/annealed method"
        )
    num_evals = num_shrinks + (~collapsed).long()
    info = ESSInfo(num_shrinks, num_evals, collapsed.long(), angle)
    return ESSState(new_z, new_loglik), info


def kernel(max_shrinks: int = 100) -> Kernel:
    """The ESS kernel as an ``init``/``step`` pair for :func:`~bed.conditioning.runner.sample_chains`."""

    def step_(state, loglik_fn, generator):
        return step(state, loglik_fn, generator, max_shrinks=max_shrinks)

    return Kernel(init, step_)


def _start(problem: Problem, loglik: SourceLogLikelihood, num_chains: int, max_tries: int):
    """Initial positions; cold chains with zero likelihood are redrawn from the prior."""
    z, warm = initial_source(problem, num_chains)
    with torch.no_grad():
        ll = loglik(z)
        for _ in range(max_tries):
            bad = ~torch.isfinite(ll)
            if not bad.any():
                return z, warm
            fresh = torch.randn(
                (int(bad.sum()), z.shape[1]),
                generator=problem.generator,
                device=z.device,
                dtype=z.dtype,
            )
            z[bad] = fresh
            ll[bad] = loglik(fresh)
    raise ValueError(
        f"ess: {int((~torch.isfinite(ll)).sum())} of {num_chains} chains found no start with "
        f"non-zero likelihood in {max_tries} prior draws; pass init= with points where the "
        "likelihood is positive"
    )


@register("ess")
def run(
    problem: Problem,
    *,
    max_shrinks: int = 100,
    coarse_prior=None,
    init_tries: int = 100,
    chain_blocks: int = 1,
    devices: list[str] | None = None,
) -> Posterior:
    """ESS-Flow posterior (methods.md section 4.3).

    Defaults: ``num_chains = min(num_samples, 1000)``; ``warmup = 200`` from the prior or
    ``25`` from a warm start. Starting chains whose likelihood is zero are redrawn from the
    prior (up to ``init_tries`` times), which is rejection sampling for indicator likelihoods.

    Args:
        problem: the validated problem.
        max_shrinks: cap on shrink iterations per ESS step (a RuntimeError past it).
        coarse_prior: multi-fidelity (methods.md section 4.4): a prior with the same source
            whose ``push`` is a cheaper approximation of ``problem.prior``'s. ESS runs on the
            coarse map; its draws are then importance-reweighted to the fine map with weights
            ``p(y | push_fine(z)) / p(y | push_coarse(z))`` and resampled (multinomial), and
            ``importance_ess`` (effective sample size of the weights over the number of
            draws, in (0, 1]) is reported.
        init_tries: redraws for chains starting at zero likelihood.
        chain_blocks: ``B``, blocks of chains with their own generators derived from the
            problem's generator (see :mod:`bed.conditioning.runner`): for a seed and ``B`` the
            draws are the same however many ``devices`` run the blocks.
        devices: where the blocks run concurrently (round-robin), e.g. ``["cuda:0",
            "cuda:1"]`` or ``["cpu", "cpu"]`` (two CPU threads); the prior, designs and
            observations are copied to each device. Default: the prior's device.

    Returns:
        A ``Posterior`` with ``source`` set. Diagnostics: ``ess_bulk``, ``rhat`` (on z),
        ``mean_shrinks`` (per ESS iteration and chain), ``num_evals`` (map and likelihood
        evaluations, all chains), ``collapsed`` (collapsed brackets), ``num_chains``,
        ``num_iterations``, ``warm_start``, ``wall_time``; with ``coarse_prior`` also
        ``importance_ess`` and ``num_fine_evals``.
    """
    prior = problem.prior
    require_push(prior, "ess")
    if problem.num_observations == 0:
        return prior_posterior(problem, "ess")
    if coarse_prior is not None:
        require_push(coarse_prior, "ess")
        if coarse_prior.source_event_shape != prior.source_event_shape:
            raise ValueError(
                f"ess: coarse_prior's source shape {tuple(coarse_prior.source_event_shape)} "
                f"differs from the prior's {tuple(prior.source_event_shape)}"
            )
    loglik = SourceLogLikelihood(problem, coarse_prior)
    num_chains = problem.num_chains or min(problem.num_samples, 1000)
    z0, warm = _start(problem, loglik, num_chains, init_tries)
    warmup = problem.warmup if problem.warmup is not None else (25 if warm else 200)
    block_logliks: list[SourceLogLikelihood] = []

    def loglik_for(device: torch.device) -> SourceLogLikelihood:
        on = problem
        if device != z0.device:
            on = dataclasses.replace(
                problem,
                exp=problem.exp.to(device=device),
                designs=problem.designs.to(device),
                observations=problem.observations.to(device),
            )
        coarse = coarse_prior
        if coarse is not None and device != z0.device:
            coarse = coarse.to(device=device)
        fn = SourceLogLikelihood(on, coarse)
        block_logliks.append(fn)
        return fn

    with torch.no_grad():
        result = sample_chains(
            kernel(max_shrinks),
            z0,
            loglik,
            num_samples=problem.num_samples,
            warmup=warmup,
            thin=problem.thin,
            generator=problem.generator,
            progress=problem.progress,
            desc="ess",
            blocks=chain_blocks,
            devices=devices,
            loglik_for=loglik_for,
        )
        z = result.samples  # (S, D_z)
        diagnostics = dict(result.diagnostics)
        t = result.info_totals
        steps = result.num_iterations * num_chains
        diagnostics.update(
            mean_shrinks=t["num_shrinks"] / steps,
            num_evals=loglik.num_evals + sum(f.num_evals for f in block_logliks),
            collapsed=int(t["collapsed"]),
            warm_start=warm,
        )
        if coarse_prior is not None:
            fine = SourceLogLikelihood(problem)
            log_w = fine(z) - loglik(z)  # (S,)
            w = (log_w - log_w.logsumexp(0)).exp()
            diagnostics["importance_ess"] = float(1.0 / (w.pow(2).sum() * z.shape[0]))
            diagnostics["num_fine_evals"] = fine.num_evals
            idx = torch.multinomial(w, z.shape[0], replacement=True, generator=problem.generator)
            z = z[idx]
        theta = SourceLogLikelihood(problem).push(z)
    source = z.reshape(z.shape[:1] + prior.source_event_shape)
    return Posterior(theta, source, diagnostics, "ess")
