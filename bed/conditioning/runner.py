"""The chain loop, written once: warm-up, thinning, progress bar and MCMC diagnostics.

A kernel is a pair of functions (BlackJAX style, STYLE point 2)::

    init(position, loglik_fn) -> State
    step(state, loglik_fn, generator) -> (State, Info)

``position`` is a `C x D` tensor (``C`` chains of flat positions), ``State`` and ``Info`` are
NamedTuples of tensors whose leading dim is the chain, ``State.position`` is the chain's current
`C x D` position, and every Info field is a `C` tensor of per-chain counts or statistics.

**Which iterations become samples.** With ``C`` chains and ``S`` requested samples, each chain
keeps ``K = ceil(S / C)`` draws: the loop runs ``warmup + K * thin`` iterations and keeps the
states after iterations ``warmup + thin, warmup + 2 thin, ..., warmup + K thin``. The kept draws
are ordered draw-major (all chains' first kept draw, then all chains' second, ...) and the
*last* ``S`` of these ``K * C`` draws are returned, so with ``C >= S`` the result is the final
state of ``S`` chains.

**Diagnostics** use the last ``L = max(K * thin, min(50, warmup + K * thin))`` iterations of
every chain (unthinned; reaching back into the end of warm-up when few draws are kept, so that
one-draw-per-chain runs still get an R-hat): bulk ESS (rank-normalised, Vehtari et al. 2021,
computed with ``pyro.ops.stats.effective_sample_size``) and split R-hat (``split_gelman_rubin``
on the rank-normalised draws), each per coordinate of the chain position, summarised by the
minimum ESS and maximum R-hat.

**Chain blocks on several devices.** With ``blocks = B > 1`` the ``C`` chains are cut into ``B``
contiguous blocks; block ``b`` draws from its own generator, seeded from ``(s, b)`` where ``s``
is one number drawn from ``generator``, and runs the whole chain loop alone. The blocks are
spread round-robin over ``devices`` (CUDA devices, or the CPU repeated to use CPU threads) and
run concurrently, one thread per device entry; the draws are moved back to ``position``'s device
and joined in block order. A block's draws depend only on its seed and its chains, so for a
given seed and ``B`` the result does not depend on how many devices share the work (on devices
of one kind). ``B = 1`` is the single-generator loop above.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["ChainResult", "Kernel", "mcmc_diagnostics", "sample_chains"]


class Kernel(NamedTuple):
    """An MCMC kernel: ``init(position, loglik_fn) -> State`` and
    ``step(state, loglik_fn, generator) -> (State, Info)``."""

    init: Callable[..., Any]
    step: Callable[..., tuple[Any, Any]]


class ChainResult(NamedTuple):
    """What :func:`sample_chains` returns.

    Attributes:
        samples: `S x D` kept positions (the rule in the module docstring).
        final_state: the kernel state after the last iteration.
        info_totals: each Info field summed over chains and all iterations (warm-up included),
            as a float.
        num_iterations: iterations run per chain (warm-up included).
        diagnostics: ``ess_bulk`` (min over coordinates), ``rhat`` (max), their per-coordinate
            tensors ``ess_bulk_per_dim``/``rhat_per_dim``, ``num_chains``, ``num_iterations``,
            ``draws_per_chain``, ``wall_time``.
    """

    samples: Tensor
    final_state: Any
    info_totals: dict[str, float]
    num_iterations: int
    diagnostics: dict[str, Any]


def _rank_normalize(x: Tensor) -> Tensor:
    """Rank-normalise `C x L x D` draws jointly over chains and iterations, per coordinate."""
    c, n, d = x.shape
    flat = x.reshape(c * n, d)
    ranks = flat.argsort(0).argsort(0).to(x.dtype) + 1.0  # (C*L, D), 1..C*L
    u = (ranks - 0.375) / (c * n + 0.25)
    return (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)).reshape(c, n, d)


def mcmc_diagnostics(trace: Tensor) -> dict[str, Any]:
    """Bulk ESS and split R-hat of a `C x L x D` trace (chains x iterations x coordinates)."""
    _, n, d = trace.shape
    if n < 4:
        nan = trace.new_full((d,), float("nan"))
        ess, rhat = nan, nan
    else:
        z = _rank_normalize(trace.double())  # float64: ranks of long traces are exact
        ess = effective_sample_size(z, chain_dim=0, sample_dim=1).to(trace.dtype)
        rhat = split_gelman_rubin(z, chain_dim=0, sample_dim=1).to(trace.dtype)
    return {
        "ess_bulk": float(ess.min()),
        "rhat": float(rhat.max()),
        "ess_bulk_per_dim": ess,
        "rhat_per_dim": rhat,
    }


def sample_chains(
    kernel: Kernel,
    position: Tensor,
    loglik_fn: Callable[[Tensor], Tensor],
    *,
    num_samples: int,
    warmup: int,
    thin: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "mcmc",
    blocks: int = 1,
    devices: Sequence[str | torch.device] | None = None,
    loglik_for: Callable[[torch.device], Callable[[Tensor], Tensor]] | None = None,
) -> ChainResult:
    """Run ``C`` chains of ``kernel`` from `C x D` ``position`` and keep ``num_samples`` draws.

    Args:
        kernel: the ``init``/``step`` pair.
        position: `C x D` initial positions.
        loglik_fn: ``M x D -> M`` log-likelihood (or log-potential) passed to the kernel.
        num_samples: ``S``, draws to return.
        warmup: iterations discarded first.
        thin: keep every ``thin``-th iteration after warm-up.
        generator: source of all randomness.
        progress: show a ``tqdm`` progress bar.
        desc: the progress bar's label.
        blocks: ``B``, chain blocks with their own generators (see the module docstring).
        devices: where the blocks run, round-robin (default: ``position``'s device); e.g.
            ``["cuda:0", "cuda:1"]``, or ``["cpu"] * 4`` for four CPU threads.
        loglik_for: ``device -> loglik_fn`` on that device; called once per block, so a
            counting log-likelihood is never shared between threads (default: ``loglik_fn``,
            which then must accept positions on every device in ``devices``).

    Returns:
        A :class:`ChainResult` with `S x D` samples.
    """
    if num_samples < 1 or warmup < 0 or thin < 1:
        raise ValueError(
            f"sample_chains: need num_samples >= 1, warmup >= 0, thin >= 1; got "
            f"num_samples={num_samples}, warmup={warmup}, thin={thin}"
        )
    start = time.perf_counter()
    c = position.shape[0]
    k = -(-num_samples // c)  # draws kept per chain
    total = warmup + k * thin
    window = max(k * thin, min(50, total))  # iterations recorded for diagnostics
    if not 1 <= blocks <= c:
        raise ValueError(f"sample_chains: need 1 <= blocks <= num_chains = {c}, got {blocks}")
    if blocks == 1 and devices is None:
        draws, trace, totals, state = _run_block(
            kernel, position, loglik_fn, warmup, thin, total, window, generator, progress, desc
        )
    else:
        draws, trace, totals, state = _run_blocks(
            kernel,
            position,
            loglik_fn,
            warmup,
            thin,
            total,
            window,
            generator,
            blocks,
            devices,
            loglik_for,
        )
    samples = draws.reshape(k * c, -1)[-num_samples:]  # (S, D): the last S draws
    diagnostics = mcmc_diagnostics(trace)  # trace (C, L, D)
    diagnostics.update(
        num_chains=c,
        num_iterations=total,
        draws_per_chain=k,
        wall_time=time.perf_counter() - start,
    )
    info_totals = {name: float(v) for name, v in totals.items()}
    return ChainResult(samples, state, info_totals, total, diagnostics)


def _run_block(
    kernel, position, loglik_fn, warmup, thin, total, window, generator, progress, desc
):
    """The chain loop on one block: `K x C x D` kept draws, `C x L x D` trace, Info totals
    (tensors) and the final state."""
    state = kernel.init(position, loglik_fn)
    kept: list[Tensor] = []
    trace: list[Tensor] = []
    totals: dict[str, Tensor] = {}
    for it in tqdm(range(1, total + 1), desc=desc, disable=not progress, leave=False):
        state, info = kernel.step(state, loglik_fn, generator)
        for name, value in info._asdict().items():
            s = value.sum()
            totals[name] = totals[name] + s if name in totals else s
        if it > total - window:
            trace.append(state.position)
        if it > warmup and (it - warmup) % thin == 0:
            kept.append(state.position)
    return torch.stack(kept), torch.stack(trace, 1), totals, state  # (K, C, D), (C, L, D)


def _block_seed(base: int, b: int) -> int:
    """A 63-bit seed for block ``b`` from the run's ``base`` seed."""
    ss = np.random.SeedSequence(entropy=base, spawn_key=(b,))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _run_blocks(
    kernel,
    position,
    loglik_fn,
    warmup,
    thin,
    total,
    window,
    generator,
    blocks,
    devices,
    loglik_for,
):
    """Chain blocks with their own generators, run concurrently over ``devices``."""
    home = position.device
    devices = [torch.device(d) for d in (devices or [home])]
    if generator is None:
        base = int(torch.randint(2**62, ()))
    else:
        base = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    parts = position.tensor_split(blocks)  # B blocks of ~C/B chains, in order

    def run(b: int):
        dev = devices[b % len(devices)]
        gen = torch.Generator(dev).manual_seed(_block_seed(base, b))
        fn = loglik_fn if loglik_for is None else loglik_for(dev)
        draws, trace, totals, state = _run_block(
            kernel, parts[b].to(dev), fn, warmup, thin, total, window, gen, False, ""
        )
        return draws.to(home), trace.to(home), {n: v.to(home) for n, v in totals.items()}, state

    grad = torch.is_grad_enabled()

    def run_in_thread(b: int):
        with torch.set_grad_enabled(grad):  # grad mode is per thread
            return run(b)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        results = list(pool.map(run_in_thread, range(blocks)))
    draws = torch.cat([r[0] for r in results], 1)  # (K, C, D)
    trace = torch.cat([r[1] for r in results], 0)  # (C, L, D)
    totals = {n: sum(r[2][n] for r in results) for n in results[0][2]}
    states = [r[3] for r in results]
    state = type(states[0])(*(torch.cat([f.to(home) for f in fields]) for fields in zip(*states)))
    return draws, trace, totals, state
