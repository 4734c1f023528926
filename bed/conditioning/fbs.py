r"""Forward-backward bridging: Gibbs with conditional SMC for inpainting-type data (methods.md 3).

The prior is a ``DiffusionPrior`` over theta whose forward SDE is elementwise (both of
``priors.sde`` are), so noising is *separable*: any split of theta's flat coordinates into a
latent block ``u`` and a conditioning block ``v`` noises independently. The reverse model (the
Euler-Maruyama chain on ``prior.time_grid(steps)``, ``t_0 = T > ... > t_K = t_min``, with noise
at every step) is then a state-space model: the latent path ``u_k`` moves by the ``u`` part of
the Euler kernel, and the ``v`` path is "observed" through the ``v`` part,

.. math::
    u_k \sim N(m_u(u_{k-1}, v_{k-1}), \sigma_{k-1}^2 I), \qquad
    g_k = N(v_k;\, m_v(u_{k-1}, v_{k-1}), \sigma_{k-1}^2 I),

both from one score call at the joint state. One Gibbs sweep of a block (Corenflos et al.,
methods.md section 3.3, the "in-place" variant):

1. *forward*: draw the exact forward-noising path of the current theta (both blocks) on the
   grid; its ``u`` part is the reference path ``u*``, its ``v`` part the observations;
2. *backward*: conditional SMC with ``N`` particles started at ``u*_0`` (no reference law
   needed), multinomial conditional resampling every step (the reference keeps index 0),
   particles moved by the Euler kernel, reference set to ``u*_k``, weights ``g_k`` (times a
   final potential at ``k = K``, see below);
3. *select*: a forced-move (Metropolised) choice of the final particle ``J`` that prefers
   leaving the reference; the block becomes ``u_K^J``.

**Observations and noise.** ``observed_index(design)`` gives the flat coordinates of theta a
measurement reveals (``y_i.flatten() = theta.flatten()[observed_index(xi_i)]`` + noise).

- ``noiseless=True``: the observations *are* those coordinates (inpainting, or a joint model
  over ``(theta, y)`` with ``y`` observed). Only the unobserved block is sampled, with ``v`` =
  the observed coordinates; the likelihood is not used. Target: ``p_model(theta_U |
  theta_O = y)``. Observed coordinates must not repeat.
- ``noiseless=False`` (default): exact for any likelihood. The sweep alternates two block
  updates: the unobserved block given the observed coordinates, then the observed coordinates
  given the rest; each block's CSMC multiplies its final weights by ``p(y | theta)``
  (``exp.log_likelihood``) -- an extra observation at ``t = t_min`` -- so the pair is a Gibbs
  sampler for ``p_model(theta) p(y | theta)``. Cost: two CSMC passes per sweep; the observed
  coordinates start at ``y``.

Exactness is w.r.t. the reverse model up to the mismatch between the Euler reverse kernel and
the exact forward noising used in step 1 (O(step)), as in the paper. Mixing degrades when the
``v`` block is large (sharp ``g_k``): watch ``autocorrelation_lag1`` and ``ess_bulk``.

References:
    Conditioning diffusion models by explicit forward-backward bridging (Corenflos, Zhao,
    Sarkka, Sjolund, Schon 2025), https://arxiv.org/abs/2405.13794
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.ops.stats import autocorrelation
from torch import Tensor

from bed.conditioning.base import Posterior, Problem, available_methods, register
from bed.conditioning.runner import Kernel, sample_chains
from bed.conditioning.smc import euler_step, require_diffusion

__all__ = ["FBSInfo", "FBSState", "csmc_block", "observed_coordinates", "run"]


class FBSState(NamedTuple):
    """``position``: `C x D_s` sampled coordinates of theta (flat) for ``C`` chains."""

    position: Tensor


class FBSInfo(NamedTuple):
    """One Gibbs sweep, per chain (`C` tensors), averaged over the sweep's block updates.

    Attributes:
        moved: fraction of block updates whose selection left the reference.
        csmc_ess: effective sample size of the final CSMC weights (out of ``N``).
        num_evals: network evaluations.
    """

    moved: Tensor
    csmc_ess: Tensor
    num_evals: Tensor


def observed_coordinates(
    observed_index: Callable[[Tensor], Tensor], designs: Tensor, observations: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """Flat indices `M` into theta and the values `M` the observations give them.

    Args:
        observed_index: ``design (d,) -> LongTensor (m,)``, ``m = prod(obs_shape)``.
        designs: `n x d`; observations: `n x *obs_shape`; size: ``prod(event_shape)``.
    """
    idx, vals = [], []
    for xi, y in zip(designs, observations):
        i = torch.as_tensor(observed_index(xi), device=designs.device).reshape(-1).long()
        if i.numel() != y.numel():
            raise ValueError(
                f"fbs: observed_index(design) returned {i.numel()} indices for an observation "
                f"with {y.numel()} entries (shape {tuple(y.shape)}); they must match"
            )
        if ((i < 0) | (i >= size)).any():
            raise ValueError(f"fbs: observed_index(design) out of range [0, {size}): {i.tolist()}")
        idx.append(i)
        vals.append(y.reshape(-1))
    return torch.cat(idx), torch.cat(vals)


def _forward_path(prior, theta: Tensor, ts: Tensor, generator) -> Tensor:
    """Exact forward noising of `C x D` theta (at ``ts[-1]``) on the grid: `K+1 x C x D`."""
    sde = prior.sde
    mu = torch.as_tensor(sde.mu, device=theta.device, dtype=theta.dtype).reshape(-1)
    path = [theta]
    for k in range(ts.shape[0] - 2, -1, -1):  # forward in time: ts[k + 1] -> ts[k]
        coeff, std = sde.transition(ts[k + 1], ts[k])
        eps = torch.randn(theta.shape, generator=generator, device=theta.device, dtype=theta.dtype)
        path.append(mu + coeff * (path[-1] - mu) + std * eps)
    return torch.stack(path[::-1])  # (K + 1, C, D), index k at time ts[k]


def csmc_block(
    prior,
    theta: Tensor,
    latent: Tensor,
    ts: Tensor,
    num_particles: int,
    generator: torch.Generator | None = None,
    final_log_potential: Callable[[Tensor], Tensor] | None = None,
    reference: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward-backward update of the ``latent`` coordinates of every chain.

    Args:
        prior: the ``DiffusionPrior``.
        theta: `C x D` current flat states (the other coordinates are conditioned on).
        latent: `L` flat indices of the block to update.
        ts: the decreasing `K + 1` grid.
        num_particles: ``N``.
        generator: source of randomness.
        final_log_potential: ``theta (C, N, D) -> (C, N)`` extra log-weight at ``k = K``.
        reference: conditional SMC (``True``) or a plain bootstrap particle filter started
            from the reference law with a weight-proportional pick (``False``; the biased
            "filter" of the paper, used to initialise chains).

    Returns:
        ``(theta_new (C, D), moved (C,), ess (C,))``.
    """
    c, d = theta.shape
    n = num_particles
    dev, dt = theta.device, theta.dtype
    event = tuple(prior.event_shape)
    cond = torch.ones(d, dtype=torch.bool, device=dev)
    cond[latent] = False
    path = _forward_path(prior, theta, ts, generator)  # (K + 1, C, D)
    u_star, v = path[..., latent], path[..., cond]  # (K + 1, C, L), (K + 1, C, M)
    if reference:
        u = u_star[0][:, None].expand(c, n, -1).clone()  # (C, N, L)
    else:
        z0 = torch.randn((c, n, d), generator=generator, device=dev, dtype=dt)
        u = prior.sde.prior_sample(z0)[..., latent]
    log_w = theta.new_zeros(c, n)
    chain = torch.arange(c, device=dev)[:, None]
    for k in range(1, ts.shape[0]):
        w = (log_w - log_w.logsumexp(-1, keepdim=True)).exp()  # (C, N)
        anc = torch.multinomial(w, n, replacement=True, generator=generator)  # (C, N)
        if reference:
            anc[:, 0] = 0
        z = theta.new_empty(c, n, d)
        z[..., latent] = u[chain, anc]
        z[..., cond] = v[k - 1][:, None]
        zf = z.reshape((c * n,) + event)  # (C N, *event)
        score = prior.score(zf, ts[k - 1])
        mean, var = euler_step(prior, zf, score, ts[k - 1], ts[k])
        mean = mean.reshape(c, n, d)
        eps = torch.randn((c, n, int(latent.numel())), generator=generator, device=dev, dtype=dt)
        u = mean[..., latent] + var.sqrt() * eps  # (C, N, L)
        if reference:
            u[:, 0] = u_star[k]
        log_w = -0.5 * (v[k][:, None] - mean[..., cond]).pow(2).sum(-1) / var  # (C, N)
    if final_log_potential is not None:
        z = theta.new_empty(c, n, d)
        z[..., latent] = u
        z[..., cond] = v[-1][:, None]
        log_w = log_w + final_log_potential(z)
    log_w = torch.nan_to_num(log_w, nan=-math.inf)
    w = (log_w - log_w.logsumexp(-1, keepdim=True)).exp()  # (C, N)
    ess = 1.0 / w.pow(2).sum(-1)
    if reference and n > 1:  # forced move: propose j != 0 from w, accept min(1, (1-w0)/(1-wj))
        w_other = w.clone()
        w_other[:, 0] = 0.0
        w_other = torch.where(w_other.sum(-1, keepdim=True) > 0, w_other, torch.ones_like(w))
        w_other[:, 0] = 0.0
        j = torch.multinomial(w_other, 1, generator=generator)[:, 0]  # (C,)
        acc = (1 - w[:, 0]) / (1 - w[chain[:, 0], j]).clamp_min(1e-30)
        r = torch.rand(c, generator=generator, device=dev, dtype=dt)
        j = torch.where(r < acc.clamp_max(1.0), j, torch.zeros_like(j))
    elif reference:
        j = torch.zeros(c, dtype=torch.long, device=dev)
    else:
        j = torch.multinomial(w, 1, generator=generator)[:, 0]
    new = theta.clone()
    new[:, latent] = u[chain[:, 0], j]
    return new, (j != 0).to(dt), ess


@register("fbs")
def run(
    problem: Problem,
    *,
    observed_index: Callable[[Tensor], Tensor] | None = None,
    noiseless: bool = False,
    num_particles: int = 32,
    steps: int | None = None,
    num_sweeps: int | None = None,
) -> Posterior:
    """Forward-backward bridging Gibbs sampler (see the module docstring).

    Chains: ``num_chains`` (default ``min(num_samples, 64)``), each started from one bootstrap
    particle-filter pass (or from ``init`` draws), then ``warmup`` sweeps (default 20) are
    discarded.

    Args:
        problem: the validated problem.
        observed_index: ``design (d,) -> LongTensor`` of the flat theta coordinates the
            measurement reveals, in the order of the flattened observation; default: the
            likelihood's ``observed_index`` attribute.
        noiseless: condition on ``theta_O = y`` exactly (likelihood unused) instead of Gibbs
            over both blocks with the likelihood as a final weight.
        num_particles: CSMC particles ``N``.
        steps: reverse-diffusion steps ``K`` (default ``prior.sde_steps``).
        num_sweeps: kept sweeps per chain after warm-up (default ``ceil(num_samples /
            num_chains)``); diagnostics use all of them, the last ``num_samples`` are returned.

    Returns:
        A ``Posterior`` (``source`` is ``None``). Diagnostics: ``ess_bulk``, ``rhat`` (on the
        sampled coordinates), ``autocorrelation_lag1`` (max over coordinates of the
        chain-averaged lag-1 autocorrelation of the kept sweeps), ``move_rate`` (fraction of
        block updates that left the reference), ``mean_csmc_ess``, ``num_evals`` (network
        evaluations), ``num_chains``, ``num_iterations``, ``num_particles``, ``steps``.
    """
    prior = problem.prior
    require_diffusion(prior, "fbs")
    if observed_index is None:
        observed_index = getattr(problem.exp.likelihood, "observed_index", None)
    if observed_index is None or not callable(observed_index):
        raise ValueError(
            "condition(method='fbs') needs observed_index: a function design -> flat indices "
            "of theta that the measurement reveals (or an observed_index attribute on the "
            f"likelihood). Methods for general likelihoods: {available_methods()}"
        )
    if num_particles < 1:
        raise ValueError(f"fbs: num_particles must be >= 1, got {num_particles}")
    gen = problem.generator
    d = prior.event_shape.numel()
    ref = problem.observations.new_zeros(())
    obs_idx, obs_val = observed_coordinates(
        observed_index, problem.designs, problem.observations, d
    )
    if noiseless and obs_idx.unique().numel() != obs_idx.numel():
        raise ValueError(
            "fbs(noiseless=True): a coordinate is observed more than once; noiseless "
            "conditioning needs distinct coordinates (use noiseless=False)"
        )
    observed = torch.zeros(d, dtype=torch.bool, device=ref.device)
    observed[obs_idx] = True
    hidden_idx = (~observed).nonzero()[:, 0]
    seen_idx = observed.nonzero()[:, 0]
    k_steps = int(steps or prior.sde_steps)
    ts = prior.time_grid(k_steps, like=ref)
    c = problem.num_chains or min(problem.num_samples, 64)
    event = tuple(prior.event_shape)

    def log_potential(z: Tensor) -> Tensor:  # (C, N, D) -> (C, N)
        theta = z.reshape(z.shape[:2] + event)
        return problem.exp.log_likelihood(theta, problem.designs, problem.observations)

    # blocks updated per sweep: (latent indices, final potential)
    if noiseless or problem.num_observations == 0:
        blocks = [(hidden_idx, None)]
        sampled = hidden_idx
    else:
        blocks = [(hidden_idx, log_potential), (seen_idx, log_potential)]
        sampled = torch.arange(d, device=ref.device)
    blocks = [(b, f) for b, f in blocks if b.numel()]

    def full(position: Tensor, base: Tensor) -> Tensor:
        theta = base.clone()
        theta[:, sampled] = position
        return theta

    base = ref.new_zeros(c, d)
    base[:, obs_idx] = obs_val  # observed coordinates start at (the last value of) y

    def step(state: FBSState, _loglik, generator) -> tuple[FBSState, FBSInfo]:
        theta = full(state.position, base)
        moved, ess = [], []
        for latent, pot in blocks:
            theta, m, e = csmc_block(prior, theta, latent, ts, num_particles, generator, pot)
            moved.append(m)
            ess.append(e)
        evals = theta.new_full((c,), float(num_particles * k_steps * len(blocks)))
        info = FBSInfo(torch.stack(moved).mean(0), torch.stack(ess).mean(0), evals)
        return FBSState(theta[:, sampled]), info

    def init(position: Tensor, _loglik) -> FBSState:
        return FBSState(position)

    with torch.no_grad():
        init_evals = 0
        if problem.init is not None:
            draws = problem.init.samples if isinstance(problem.init, Posterior) else problem.init
            draws = torch.as_tensor(draws, device=ref.device, dtype=ref.dtype).reshape(-1, d)
            pick = torch.randint(draws.shape[0], (c,), generator=gen, device=gen.device)
            theta0 = draws[pick.to(ref.device)].clone()
            theta0[:, obs_idx] = obs_val if noiseless else theta0[:, obs_idx]
        else:  # one bootstrap particle-filter pass per block ("filter" initialisation)
            theta0 = base.clone()
            for latent, pot in blocks:
                theta0, _, _ = csmc_block(
                    prior, theta0, latent, ts, num_particles, gen, pot, reference=False
                )
                init_evals += c * num_particles * k_steps
        warm = problem.init is not None
        warmup = problem.warmup if problem.warmup is not None else (5 if warm else 20)
        kept = int(num_sweeps) if num_sweeps else -(-problem.num_samples // c)
        if kept * c < problem.num_samples:
            raise ValueError(
                f"fbs: num_sweeps={kept} x num_chains={c} draws < num_samples="
                f"{problem.num_samples}"
            )
        result = sample_chains(
            Kernel(init, step),
            theta0[:, sampled],
            None,
            num_samples=kept * c,
            warmup=warmup,
            thin=problem.thin,
            generator=gen,
            progress=problem.progress,
            desc="fbs",
        )
        draws = result.samples.reshape(kept, c, -1)  # (K, C, D_s), draw-major
        if kept >= 4:
            rho = autocorrelation(draws.double(), dim=0)[1].mean(0)  # (D_s,) lag 1, chain mean
            lag1 = float(rho.max())
        else:
            lag1 = float("nan")
        samples = full(
            result.samples[-problem.num_samples :], base[:1].expand(problem.num_samples, d)
        )
    t = result.info_totals
    sweeps = result.num_iterations * c
    diagnostics = dict(result.diagnostics)
    diagnostics.update(
        autocorrelation_lag1=lag1,
        move_rate=t["moved"] / sweeps,
        mean_csmc_ess=t["csmc_ess"] / sweeps,
        num_evals=int(t["num_evals"]) + init_evals,
        num_particles=num_particles,
        steps=k_steps,
        noiseless=bool(noiseless),
        warm_start=warm,
    )
    return Posterior(samples.reshape((-1,) + event), None, diagnostics, "fbs")
