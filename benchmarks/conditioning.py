"""Conditioning benchmark, part (a): ESS-Flow vs NUTS on one location-finding posterior.

Both samplers target the same source-space posterior: prior ``sources-2x2`` (the analytic
N(0, I_4) prior with event shape (2, 2) when the checkpoint is missing), 10 observations at
designs uniform in [-4, 4]^2 from a true theta drawn from the prior, y ~ N(log mu, 0.5^2)
(methods.md 10.2). The score is bulk ESS (rank-normalised, min over the 4 coordinates of theta,
computed on the kept draws of all chains, with the two sources sorted by their first
coordinate so that the label-switching symmetry does not count as non-mixing) per second of wall time, warm-up included, and the
ratio ESS/NUTS from one run. A second table row measures the sequential-loop case: a
warm-started ESS call for 500 draws.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m benchmarks.conditioning`` (writes
``benchmarks/results/conditioning.json`` and prints a markdown table).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import pyro.distributions as dist
import torch

import bed
import priors
from bed.conditioning.runner import mcmc_diagnostics

RESULTS = Path(__file__).parent / "results" / "conditioning.json"


def likelihood(theta, xi):
    d2 = (theta - xi.unsqueeze(-2)).pow(2).sum(-1)  # (..., K)
    return dist.Normal((0.1 + (1.0 / (1e-4 + d2)).sum(-1)).log(), 0.5)


def canonical(theta):
    """Sources sorted by their first coordinate: `S x 2 x 2` -> `S x 4`. The likelihood is
    symmetric under swapping the two sources, so the posterior has a mirrored mode per
    labelling; ESS is scored on the label-free ordering for both samplers."""
    order = theta[..., 0].argsort(-1)  # (S, 2)
    return theta.gather(-2, order[..., None].expand(theta.shape)).reshape(theta.shape[0], -1)


def score(post, num_chains: int) -> dict:
    """Bulk ESS and R-hat on the kept draws, reshaped `chains x draws x 4`."""
    s = canonical(post.samples)  # (S, 4), draw-major over chains
    trace = s.reshape(-1, num_chains, s.shape[-1]).transpose(0, 1)  # (C, K, 4)
    diag = mcmc_diagnostics(trace)
    wall = post.diagnostics["wall_time"]
    return {
        "num_chains": num_chains,
        "draws_per_chain": trace.shape[1],
        "num_iterations": post.diagnostics["num_iterations"],
        "wall_time_s": round(wall, 3),
        "ess_bulk": float(f"{diag['ess_bulk']:.4g}"),
        "rhat": round(diag["rhat"], 3),
        "ess_per_s": float(f"{diag['ess_bulk'] / wall:.3g}"),
        "likelihood_evals": post.diagnostics["num_evals"],
        "posterior_mean": [round(v, 3) for v in s.mean(0).tolist()],
        "posterior_sd": [round(v, 3) for v in s.std(0).tolist()],
    }


def reference(exp, designs, y, seed: int) -> tuple:
    """Posterior mean and sd (canonical order) by self-normalised importance sampling."""
    gen = torch.Generator().manual_seed(seed + 2)
    xs, log_w = [], []
    with torch.no_grad():
        for _ in range(20):
            x = exp.prior.sample_with_generator((200_000,), gen)  # (N, 2, 2)
            log_w.append(exp.log_likelihood(x, designs, y))
            xs.append(canonical(x))
    x, log_w = torch.cat(xs).double(), torch.cat(log_w).double()  # (4e6, 4), (4e6,)
    w = (log_w - log_w.logsumexp(0)).exp()
    mean = (w[:, None] * x).sum(0)
    sd = (w[:, None] * (x - mean).pow(2)).sum(0).sqrt()
    return mean, sd, float(1.0 / w.pow(2).sum())


def main(seed: int = 0) -> dict:
    torch.set_num_threads(1)
    name = "sources-2x2" if "sources-2x2" in priors.available() else "analytic N(0, I_4)"
    prior = (
        priors.load("sources-2x2")
        if name == "sources-2x2"
        else priors.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=(2, 2))
    )
    exp = bed.Experiment(prior, likelihood, bed.Box([-4.0, -4.0], [4.0, 4.0]))
    gen = torch.Generator().manual_seed(seed)
    theta = prior.sample_with_generator((), gen)
    designs = exp.design_space.sample(10, gen)
    y = likelihood(theta, designs).loc + 0.5 * torch.randn(10, generator=gen)

    runs = {}
    ess_cfg = {"num_chains": 1000, "warmup": 200}
    post = bed.condition(exp, designs, y, "ess", 1000 * 100, generator=gen, **ess_cfg)
    runs["ess"] = score(post, 1000) | {"mean_shrinks": round(post.diagnostics["mean_shrinks"], 2)}
    nuts_cfg = {"num_chains": 4, "warmup": 300}
    gen_nuts = torch.Generator().manual_seed(seed + 1)  # NUTS's draws do not depend on ESS's
    post_nuts = bed.condition(exp, designs, y, "nuts", 4 * 500, generator=gen_nuts, **nuts_cfg)
    runs["nuts"] = score(post_nuts, 4) | {"divergences": post_nuts.diagnostics["divergences"]}
    # the sequential loop's case: 500 draws warm-started from the previous posterior
    t = time.perf_counter()
    warm = bed.condition(exp, designs, y, "ess", 500, init=post, generator=gen)
    warm_s = time.perf_counter() - t
    runs["ess_warm_500"] = {
        "num_chains": warm.diagnostics["num_chains"],
        "num_iterations": warm.diagnostics["num_iterations"],
        "wall_time_s": round(warm_s, 3),
        "likelihood_evals": warm.diagnostics["num_evals"],
        "mean_shrinks": round(warm.diagnostics["mean_shrinks"], 2),
    }
    ratio = runs["ess"]["ess_per_s"] / runs["nuts"]["ess_per_s"]
    ref_mean, ref_sd, ref_ess = reference(exp, designs, y, seed)
    for key in ("ess", "nuts"):
        err = (torch.tensor(runs[key]["posterior_mean"]) - ref_mean).abs() / ref_sd
        runs[key]["max_mean_error_in_sd"] = round(float(err.max()), 3)
        sd_ratio = torch.tensor(runs[key]["posterior_sd"]) / ref_sd
        runs[key]["sd_over_reference_sd"] = [round(v, 3) for v in sd_ratio.tolist()]
    result = {
        "benchmark": "conditioning (a): ESS vs NUTS, bulk ESS per second",
        "prior": name,
        "problem": "location finding, K=2 sources in 2-D, 10 observations, sigma=0.5",
        "seed": seed,
        "config": {
            "ess": ess_cfg | {"draws_per_chain": 100},
            "nuts": nuts_cfg | {"draws_per_chain": 500},
        },
        "runs": runs,
        "ess_over_nuts_ess_per_s": float(f"{ratio:.3g}"),
        "reference": {
            "how": "self-normalised importance sampling from 4e6 prior draws (canonical order)",
            "importance_ess": round(ref_ess, 1),
            "mean": [round(v, 3) for v in ref_mean.tolist()],
            "sd": [round(v, 3) for v in ref_sd.tolist()],
        },
        "target": ">= 10x",
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cpu",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    return result


def table(result: dict) -> str:
    rows = [
        (
            "| method | chains x draws | iterations | wall (s) | bulk ESS | R-hat | bulk ESS/s | "
            "max mean error (ref sd) | sd / ref sd | likelihood evals |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("ess", "nuts"):
        r = result["runs"][key]
        rows.append(
            f"| {key} | {r['num_chains']} x {r['draws_per_chain']} | {r['num_iterations']} | "
            f"{r['wall_time_s']} | {r['ess_bulk']} | {r['rhat']} | {r['ess_per_s']} | "
            f"{r['max_mean_error_in_sd']} | {r['sd_over_reference_sd']} | "
            f"{r['likelihood_evals']} |"
        )
    w = result["runs"]["ess_warm_500"]
    rows.append(
        f"| ess, warm start, 500 draws | {w['num_chains']} x 1 | {w['num_iterations']} | "
        f"{w['wall_time_s']} | - | - | - | - | - | {w['likelihood_evals']} |"
    )
    rows.append(
        f"\nESS/NUTS ratio of bulk ESS per second: **{result['ess_over_nuts_ess_per_s']}x** "
        f"(target {result['target']}); prior {result['prior']}; reference: "
        f"{result['reference']['how']}, importance ESS {result['reference']['importance_ess']}."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(main()))
