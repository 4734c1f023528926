"""Training-free conditioning: posterior samples of theta from a prior and data.

One entry point, :func:`condition`, dispatches to a registry of methods (one module each):

- ``"ess"``: ESS-Flow, elliptical slice sampling in the prior's source space
  (:mod:`bed.conditioning.ess`);
- ``"nuts"``: Pyro NUTS in source space, the classical baseline (:mod:`bed.conditioning.nuts`);
- ``"exact"``: closed form for a Gaussian prior and linear-Gaussian observations
  (:mod:`bed.conditioning.exact`);
- ``"smc"``: twisted Feynman-Kac SMC for diffusion priors (:mod:`bed.conditioning.smc`);
- ``"dps"``: diffusion posterior sampling, the biased baseline (:mod:`bed.conditioning.dps`);
- ``"fbs"``: forward-backward bridging Gibbs-CSMC for coordinate-subset observations
  (:mod:`bed.conditioning.fbs`);
- ``"irsde"``: an amortised (trained) conditional mean-reverting SDE from a point estimate
  ``mu(y)`` (:mod:`bed.conditioning.irsde`).

A new method module registers ``run(problem, *, option=...) -> Posterior`` with
``@bed.conditioning.base.register("name")`` and is imported below.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from bed.conditioning import dps, ess, exact, fbs, irsde, nuts, smc  # noqa: F401  (registration)
from bed.conditioning.base import (
    Posterior,
    Problem,
    available_methods,
    get_method,
    method_options,
    register,
)
from bed.experiment import Experiment

__all__ = ["Posterior", "available_methods", "condition", "register"]


def condition(
    exp: Experiment,
    designs: Tensor,
    observations: Tensor,
    method: str = "ess",
    num_samples: int = 1000,
    *,
    num_chains: int | None = None,
    warmup: int | None = None,
    thin: int = 1,
    init: Posterior | Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options: Any,
) -> Posterior:
    """Draw ``num_samples`` posterior samples of theta given ``n`` designs and observations.

    Args:
        exp: the experiment (prior, likelihood, design space).
        designs: `n x d` designs (``n`` may be 0: the posterior is then the prior).
        observations: `n x *obs_shape` observations.
        method: one of :func:`available_methods` (``"ess"``, ``"exact"``, ``"nuts"``, ...).
        num_samples: ``S``, draws to return.
        num_chains: MCMC chains ``C`` (default per method: ``min(S, 1000)`` for ESS, 4 for
            NUTS). Each chain keeps ``ceil(S / C)`` draws after warm-up, every ``thin``-th
            iteration, and the last ``S`` kept draws are returned (see
            :mod:`bed.conditioning.runner`).
        warmup: iterations discarded per chain (default per method; shorter after a warm
            start).
        thin: keep every ``thin``-th post-warm-up iteration.
        init: warm start: a ``Posterior`` (its ``source`` is used when set, else its
            ``samples``) or a `N x *event_shape` theta tensor, pulled to source space with
            ``prior.pull``. For a prior without ``pull`` and theta draws, a ``UserWarning`` is
            issued and the chains start cold.
        generator: a ``torch.Generator`` on the prior's device; the same seed gives the same
            samples. ``None`` draws a seed from torch's global RNG.
        progress: show a progress bar.
        **options: method-specific options (e.g. ``max_shrinks``, ``coarse_prior`` for ESS);
            unknown ones raise a ValueError listing the accepted ones.

    Returns:
        A :class:`Posterior` with `S x *event_shape` samples.

    Example:
        >>> import bed, priors, pyro.distributions as dist
        >>> exp = Experiment(
        ...     priors.analytic.Gaussian(torch.zeros(2), torch.eye(2)),
        ...     lambda theta, xi: dist.Normal((theta * xi).sum(-1), 0.5),
        ...     bed.Box([-1.0, -1.0], [1.0, 1.0]),
        ... )
        >>> post = condition(exp, torch.ones(1, 2), torch.ones(1), num_samples=100)
        >>> post.samples.shape
        torch.Size([100, 2])
    """
    start = time.perf_counter()
    run = get_method(method)
    accepted = method_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"condition(method={method!r}): unknown option(s) {unknown}; this method accepts "
            f"{accepted} besides num_chains, warmup, thin, init, generator, progress"
        )
    if int(num_samples) < 1:
        raise ValueError(f"condition: num_samples must be >= 1, got {num_samples}")
    if num_chains is not None and int(num_chains) < 1:
        raise ValueError(f"condition: num_chains must be >= 1, got {num_chains}")
    if init is not None and not isinstance(init, (Posterior, Tensor)):
        raise TypeError(
            f"condition: init must be a Posterior or a theta tensor, got {type(init).__name__}"
        )
    designs, observations = exp.check_data(designs, observations)
    ref = _reference(exp.prior)
    designs = designs.to(ref)
    observations = observations.to(ref)
    if generator is None:
        seed = int(torch.randint(2**62, ()))
        generator = torch.Generator(ref.device).manual_seed(seed)
    problem = Problem(
        exp=exp,
        designs=designs,
        observations=observations,
        num_samples=int(num_samples),
        num_chains=None if num_chains is None else int(num_chains),
        warmup=None if warmup is None else int(warmup),
        thin=int(thin),
        init=init,
        generator=generator,
        progress=progress,
    )
    posterior = run(problem, **options)
    posterior.diagnostics["wall_time"] = time.perf_counter() - start
    posterior.diagnostics["num_observations"] = problem.num_observations
    return posterior


def _reference(prior) -> Tensor:
    """A zero-dim tensor on the prior's device and dtype."""
    if hasattr(prior, "_reference"):
        return prior._reference().new_zeros(())
    for name in ("loc", "mean"):
        t = getattr(prior, name, None)
        if isinstance(t, Tensor) and t.is_floating_point():
            return t.new_zeros(())
    return torch.zeros(())
