"""Benchmark (issue 4, part b): accuracy vs cost of conditioning methods on Gaussian-mixture
diffusion priors with exact scores.

Cases: a 2-D and a 16-D Gaussian mixture (``priors.analytic.GaussianMixture``, VP SDE), with a
few coordinates observed under Gaussian noise (so FBS applies in its Gibbs-over-blocks mode).
Metric: SW_ratio = SW1(method, exact_1) / SW1(exact_2, exact_1) on equal sample sizes, 200
fixed projections (seed 0), exact draws from the closed-form mixture posterior. Also wall time
and network evaluations (``num_evals`` of each method; ESS counts map evaluations, each
``2 * ode_steps`` network calls, converted here).

Run: ``OMP_NUM_THREADS=1 python -P benchmarks/conditioning_diffusion.py`` (``-P``: keep
benchmarks/priors.py from shadowing the ``priors`` package); writes
``benchmarks/results/conditioning_diffusion.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import pyro.distributions as dist
import torch

import bed
import priors
from bed.diagnostics import sliced_wasserstein

NUM_SAMPLES = 2000


class Coordinates:
    """Observe the design's coordinates of theta with Gaussian noise."""

    def __init__(self, noise: float) -> None:
        self.noise = noise

    def __call__(self, theta, xi):
        idx = xi.long()
        vals = torch.gather(theta, -1, idx.expand(theta.shape[:-1] + idx.shape[-1:]))
        return dist.Normal(vals, self.noise).to_event(1)

    def observed_index(self, xi):
        return xi.long()


def mixture(d: int, k: int, seed: int) -> priors.analytic.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    locs = 6 * torch.rand(k, d, generator=g) - 3
    r = torch.randn(k, d, d, generator=g) / d**0.5
    covs = 0.3 * r @ r.mT + 0.2 * torch.eye(d)
    return priors.analytic.GaussianMixture(torch.ones(k), locs, covs, ode_steps=20)


def exact_draws(prior, obs_idx, y, noise, n, seed):
    """Draws from the exact mixture posterior under y = x[obs] + N(0, noise^2 I)."""
    w, locs, covs = (t.double() for t in (prior.weights, prior.locs, prior.covariance_matrices))
    a = torch.zeros(len(obs_idx), locs.shape[1], dtype=torch.float64)
    a[torch.arange(len(obs_idx)), obs_idx] = 1.0
    r = noise**2 * torch.eye(len(obs_idx), dtype=torch.float64)
    sy = a @ covs @ a.mT + r
    gain = covs @ a.mT @ torch.linalg.inv(sy)
    means = locs + (gain @ (y.double() - locs @ a.mT)[..., None])[..., 0]
    pc = covs - gain @ a @ covs
    logw = w.log() + dist.MultivariateNormal(locs @ a.mT, sy).log_prob(y.double())
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial((logw - logw.logsumexp(0)).exp(), n, True, generator=g)
    z = torch.randn(n, locs.shape[1], generator=g, dtype=torch.float64)
    return means[comp] + (torch.linalg.cholesky(pc)[comp] @ z[..., None])[..., 0]


def sw(x, y, seed=0, num_projections=200):
    g = torch.Generator().manual_seed(seed)
    return float(sliced_wasserstein(x, y, num_projections, g))


def case(d, k, obs, noise, seed):
    prior = mixture(d, k, seed)
    exp = bed.Experiment(
        prior, Coordinates(noise), bed.Box([0.0] * len(obs), [d - 1.0] * len(obs))
    )
    truth = prior.sample((1,), generator=torch.Generator().manual_seed(seed + 1))[0]
    y = truth[obs] + noise * torch.randn(len(obs), generator=torch.Generator().manual_seed(seed))
    designs = torch.tensor([obs], dtype=torch.float32)
    return prior, exp, designs, y[None], torch.tensor(obs)


METHODS = {
    "ess": {"num_chains": 500, "warmup": 100},
    "smc": {"num_particles": 4000, "steps": 100},
    "fbs": {"num_chains": 64, "num_particles": 16, "steps": 40, "warmup": 10},
    "dps": {"steps": 100},
}


def main() -> None:
    rows = []
    cases = {"gm2d": (2, 3, [1], 0.3, 0), "gm16d": (16, 4, [0, 3, 7, 12], 0.3, 1)}
    for name, (d, k, obs, noise, seed) in cases.items():
        prior, exp, designs, y, obs_t = case(d, k, obs, noise, seed)
        ref1 = exact_draws(prior, obs_t, y[0], noise, NUM_SAMPLES, 100)
        ref2 = exact_draws(prior, obs_t, y[0], noise, NUM_SAMPLES, 101)
        base = sw(ref2, ref1)
        for method, kw in METHODS.items():
            t0 = time.perf_counter()
            post = bed.condition(
                exp,
                designs,
                y,
                method,
                NUM_SAMPLES,
                generator=torch.Generator().manual_seed(7),
                **kw,
            )
            wall = time.perf_counter() - t0
            evals = post.diagnostics["num_evals"]
            if method == "ess":
                evals *= 2 * prior.ode_steps  # Heun: two network calls per ODE step
            row = {
                "case": name,
                "dim": d,
                "method": method,
                "options": kw,
                "sw_ratio": sw(post.samples, ref1) / base,
                "wall_time_s": wall,
                "network_evals": int(evals),
            }
            rows.append(row)
            print(row, flush=True)
    out = {
        "description": __doc__.strip().splitlines()[0],
        "num_samples": NUM_SAMPLES,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    path = Path(__file__).parent / "results" / "conditioning_diffusion.json"
    path.write_text(json.dumps(out, indent=2))
    print("\n| case | method | SW_ratio | wall time (s) | network evals |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['method']} | {r['sw_ratio']:.2f} | {r['wall_time_s']:.1f} | "
            f"{r['network_evals']:.2e} |"
        )


if __name__ == "__main__":
    main()
