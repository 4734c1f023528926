r"""Diffusion posterior sampling (DPS): the biased guidance baseline (methods.md section 6).

DPS (Chung et al. 2023) replaces the intractable posterior score
:math:`\nabla \log p_t(x \mid y)` by :math:`s(x, t) + \zeta \nabla_x \log p(y \mid \hat x_0(x, t))`
with Tweedie's :math:`\hat x_0` and runs the reverse SDE with it. Here that is the prior's own
Euler-Maruyama path (``DiffusionPrior.sample``: grid ``prior.time_grid(steps)``, noiseless last
step) with the guidance added to the drift:

.. math::
    x_{k+1} = x_k - h_k [f(x_k, t_k) - g(t_k)^2 s(x_k, t_k)]
        + \zeta\, g(t_k)^2 h_k\, \nabla \log p(y \mid \hat x_0(x_k, t_k))
        + g(t_k) \sqrt{h_k}\, \varepsilon_k,

so ``guidance_scale`` :math:`\zeta = 1` is the DPS approximation of the posterior score and
equals the TDS proposal of :mod:`bed.conditioning.smc` without weights or resampling. (The
original paper rescales the step by :math:`1/\|y - A\hat x_0\|`; that heuristic is not used.)
Particles are independent; the result is biased for any :math:`\zeta` because
:math:`p(y \mid \hat x_0)` is not :math:`p(y \mid x_t)`.

References:
    Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung, Kim, Mccann, Klasky,
    Ye 2023), https://arxiv.org/abs/2209.14687
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from bed.conditioning.base import Posterior, Problem, register
from bed.conditioning.smc import TweedieTwist, euler_step, require_diffusion, resolve_tempering

__all__ = ["DPSInfo", "DPSState", "init", "run", "step"]


class DPSState(NamedTuple):
    """Particles ``x`` (`N x *event`) at grid index ``k``."""

    x: Tensor
    k: int


class DPSInfo(NamedTuple):
    """One DPS step: ``guidance_norm`` (`N`), the norm of the guidance displacement."""

    guidance_norm: Tensor


def init(x: Tensor) -> DPSState:
    """Start from particles `N x *event` drawn from the reference law at ``T``."""
    return DPSState(x, 0)


def step(
    state: DPSState,
    twist: TweedieTwist,
    ts: Tensor,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
) -> tuple[DPSState, DPSInfo]:
    """One guided reverse Euler-Maruyama step from ``ts[k]`` to ``ts[k + 1]``."""
    x, k = state
    t, t_next = ts[k], ts[k + 1]
    score, _, grad = twist(x, t)
    mean, var = euler_step(twist.prior, x, score, t, t_next)
    shift = guidance_scale * var * grad  # (N, *event)
    x_new = mean + shift
    if k + 2 < ts.shape[0]:  # the last step adds no noise, as DiffusionPrior.sample
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_new = x_new + var.sqrt() * eps
    info = DPSInfo(shift.reshape(x.shape[0], -1).norm(dim=-1))
    return DPSState(x_new, k + 1), info


@register("dps")
def run(
    problem: Problem,
    *,
    steps: int | None = None,
    guidance_scale: float = 1.0,
    tempering: str = "none",
) -> Posterior:
    """DPS draws: ``num_samples`` independent guided reverse-SDE paths (biased baseline).

    ``num_chains``, ``warmup``, ``thin`` and ``init`` of :func:`bed.condition` are ignored.

    Args:
        problem: the validated problem.
        steps: reverse-diffusion steps (default ``prior.sde_steps``).
        guidance_scale: :math:`\\zeta` (0 gives prior draws).
        tempering: ``"none"`` (plain DPS) or ``"snr"``: the guidance of
            :math:`\\alpha_t^2 \\log p(y \\mid \\hat x_0)`, as SMC's twist. Plain DPS can
            diverge when the noisiest steps' Tweedie estimate is amplified by
            :math:`1/\\alpha_t` (measured on digits-16 inpainting: 15 of 16 images,
            ``benchmarks/inpainting.py``); ``"snr"`` is stable there.

    Returns:
        A ``Posterior`` (``source`` is ``None``). Diagnostics: ``num_evals`` (network
        evaluations), ``num_vjp`` (backward passes), ``mean_guidance_norm``, ``steps``,
        ``wall_time``.
    """
    prior = problem.prior
    require_diffusion(prior, "dps")
    k_steps = int(steps or prior.sde_steps)
    if k_steps < 1:
        raise ValueError(f"dps: steps must be >= 1, got {k_steps}")
    gen = problem.generator
    ref = problem.observations.new_zeros(())

    def loglik_fn(theta: Tensor) -> Tensor:
        return problem.exp.log_likelihood(theta, problem.designs, problem.observations)

    tempering, elements = resolve_tempering(problem, tempering)
    tw = TweedieTwist(prior, loglik_fn, True, tempering, elements)
    ts = prior.time_grid(k_steps, like=ref)  # (K + 1,) from T down to t_min
    shape = (problem.num_samples,) + tuple(prior.event_shape)
    norms = ref.new_zeros(())
    with torch.no_grad():
        x = prior.sde.prior_sample(
            torch.randn(shape, generator=gen, device=ref.device, dtype=ref.dtype)
        )
        state = init(x)
        for _ in tqdm(range(k_steps), desc="dps", disable=not problem.progress, leave=False):
            state, info = step(state, tw, ts, gen, float(guidance_scale))
            norms = norms + info.guidance_norm.mean()
    diagnostics = {
        "num_evals": tw.num_evals,
        "num_vjp": tw.num_vjp,
        "mean_guidance_norm": float(norms / k_steps),
        "steps": k_steps,
    }
    return Posterior(state.x, None, diagnostics, "dps")
