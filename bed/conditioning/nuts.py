"""NUTS in source space: the classical gradient-based baseline (Pyro's ``NUTS`` kernel).

The target is the source-space posterior of ESS-Flow, written as a potential energy

.. math:: U(z) = \\tfrac12 \\|z\\|^2 - \\sum_i \\log p(y_i \\mid \\mathrm{push}(z), \\xi_i),

so it needs a differentiable ``push`` and likelihood. Pyro's NUTS is a single-chain kernel: each
of the ``C`` chains holds its own ``pyro.infer.mcmc.NUTS`` (step size and diagonal mass matrix
adapted during warm-up), and one :func:`step` advances them one after another. Pyro draws from
torch's global RNG, so each step forks it and seeds it from the ``generator``.

References:
    The No-U-Turn Sampler (Hoffman and Gelman 2014), https://arxiv.org/abs/1111.4246
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.infer.mcmc import NUTS
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

__all__ = ["NUTSInfo", "NUTSState", "kernel", "run"]


class NUTSState(NamedTuple):
    """Per-chain state: ``position`` `C x D` (flat source z) and its ``loglik`` `C`."""

    position: Tensor
    loglik: Tensor


class NUTSInfo(NamedTuple):
    """Per-chain diagnostics of one NUTS transition (all `C` tensors).

    Attributes:
        num_evals: potential-and-gradient evaluations in this transition.
        accept_prob: Pyro's running mean acceptance probability.
        step_size: the current step size.
        diverging: 1 where the transition diverged.
    """

    num_evals: Tensor
    accept_prob: Tensor
    step_size: Tensor
    diverging: Tensor


def _seeded(generator: torch.Generator | None, device: torch.device):
    """Fork torch's global RNG and seed it from ``generator`` (Pyro samples from it)."""
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    class _Ctx:
        def __enter__(self):
            ctx.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Ctx()


def kernel(
    warmup: int,
    generator: torch.Generator,
    *,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    full_mass: bool = False,
) -> Kernel:
    """NUTS as an ``init``/``step`` pair; ``warmup`` is the number of adaptation steps."""
    chains: list[NUTS] = []
    counts: list[int] = []

    def potential(c: int, loglik_fn: Callable[[Tensor], Tensor]):
        def fn(params: dict[str, Tensor]) -> Tensor:
            counts[c] += 1
            z = params["z"]  # (D,)
            return 0.5 * z.pow(2).sum() - loglik_fn(z[None])[0]

        return fn

    def init(position: Tensor, loglik_fn: Callable[[Tensor], Tensor]) -> NUTSState:
        chains.clear()
        counts.clear()
        with _seeded(generator, position.device):
            for c in range(position.shape[0]):
                counts.append(0)
                k = NUTS(
                    potential_fn=potential(c, loglik_fn),
                    target_accept_prob=target_accept_prob,
                    max_tree_depth=max_tree_depth,
                    full_mass=full_mass,
                )
                k.initial_params = {"z": position[c]}
                k.setup(warmup)
                chains.append(k)
        with torch.no_grad():
            loglik = loglik_fn(position)
        return NUTSState(position, loglik)

    def step(state: NUTSState, loglik_fn, gen) -> tuple[NUTSState, NUTSInfo]:
        z = state.position.clone()
        before = list(counts)
        divergences = [len(k._divergences) for k in chains]
        with _seeded(gen, z.device):
            for c, k in enumerate(chains):
                z[c] = k.sample({"z": z[c]})["z"].detach()
        potential_energy = torch.stack([k._potential_energy_last.detach() for k in chains])
        loglik = 0.5 * z.pow(2).sum(-1) - potential_energy.to(z)  # (C,)
        info = NUTSInfo(
            num_evals=z.new_tensor([a - b for a, b in zip(counts, before)]),
            accept_prob=z.new_tensor([float(k._mean_accept_prob) for k in chains]),
            step_size=z.new_tensor([float(k.step_size) for k in chains]),
            diverging=z.new_tensor([len(k._divergences) - n for k, n in zip(chains, divergences)]),
        )
        return NUTSState(z, loglik), info

    return Kernel(init, step)


@register("nuts")
def run(
    problem: Problem,
    *,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    full_mass: bool = False,
) -> Posterior:
    """NUTS posterior in source space.

    Defaults: ``num_chains = 4``; ``warmup = 300`` cold or ``100`` from a warm start (Pyro
    adapts the step size and mass matrix during warm-up).

    Args:
        problem: the validated problem.
        target_accept_prob: dual-averaging target.
        max_tree_depth: cap on the trajectory doubling.
        full_mass: adapt a dense mass matrix.

    Returns:
        A ``Posterior`` with ``source`` set. Diagnostics: ``ess_bulk``, ``rhat`` (on z),
        ``num_evals`` (gradient evaluations, all chains), ``mean_evals_per_step``,
        ``divergences``, ``num_chains``,
        ``num_iterations``, ``warm_start``, ``wall_time``.
    """
    prior = problem.prior
    require_push(prior, "nuts")
    if problem.num_observations == 0:
        return prior_posterior(problem, "nuts")
    loglik = SourceLogLikelihood(problem)
    num_chains = problem.num_chains or 4
    z0, warm = initial_source(problem, num_chains)
    warmup = problem.warmup if problem.warmup is not None else (100 if warm else 300)
    k = kernel(
        warmup,
        problem.generator,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        full_mass=full_mass,
    )
    result = sample_chains(
        k,
        z0,
        loglik,
        num_samples=problem.num_samples,
        warmup=warmup,
        thin=problem.thin,
        generator=problem.generator,
        progress=problem.progress,
        desc="nuts",
    )
    z = result.samples  # (S, D_z)
    t = result.info_totals
    diagnostics = dict(result.diagnostics)
    diagnostics.update(
        num_evals=loglik.num_evals,
        mean_evals_per_step=t["num_evals"] / (result.num_iterations * num_chains),
        divergences=int(t["diverging"]),
        warm_start=warm,
    )
    with torch.no_grad():
        theta = loglik.push(z)
    return Posterior(theta, z.reshape(z.shape[:1] + prior.source_event_shape), diagnostics, "nuts")
