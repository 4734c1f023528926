"""EIG benchmark on location finding: bed.eig vs pyro.contrib.oed.nmc_eig, and scaling.

Location finding (methods.md 10.2): K = 2 sources theta_k ~ N(0, I_2), mean signal
mu = b + sum_k alpha / (m + |theta_k - xi|^2), y ~ N(log mu, sigma^2) with b = 0.1, m = 1e-4,
alpha = 1, sigma = 0.5. Designs: a 16 x 16 grid over [-4, 4]^2 (256 candidates).

Both libraries get the same budget: N outer samples and L inner samples per design. pyro's
``nmc_eig`` draws its own prior samples (its API takes a model, not samples); ours take N prior
samples and use L of the others as contrasts. Error at equal budget is measured as the RMS
difference between two independent runs of the same estimator (sqrt(2) x its Monte Carlo error)
and the agreement as the RMS difference between the libraries' estimates.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.eig`` (writes benchmarks/results/eig.json and prints
a markdown table).
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.contrib.oed.eig import nmc_eig

import priors
from bed import Box, Experiment, eig, optimize_design, qEIG

B, M_FLOOR, ALPHA, SIGMA = 0.1, 1e-4, 1.0, 0.5


def log_mu(theta: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """theta `(..., K, 2)`, xi `(..., 2)` -> `(...)`."""
    sq = (theta - xi.unsqueeze(-2)).pow(2).sum(-1)  # (..., K)
    return torch.log(B + (ALPHA / (M_FLOOR + sq)).sum(-1))


def likelihood(theta: torch.Tensor, xi: torch.Tensor) -> dist.Normal:
    return dist.Normal(log_mu(theta, xi), SIGMA)


def pyro_model(design: torch.Tensor) -> torch.Tensor:
    """The same model in pyro.contrib.oed's convention (leading design dims are batch dims)."""
    batch = design.shape[:-1]
    theta = pyro.sample("theta", dist.Normal(design.new_zeros(batch + (2, 2)), 1.0).to_event(2))
    return pyro.sample("y", dist.Normal(log_mu(theta, design), SIGMA))


def timed(fn, repeats: int = 1):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(n: int = 500, l: int = 499) -> dict:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    exp = Experiment(
        priors.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=(2, 2)),
        likelihood,
        Box([-4.0, -4.0], [4.0, 4.0]),
        "location-finding",
    )
    g = torch.linspace(-4, 4, 16)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # (256, 2)
    designs = grid.unsqueeze(1)  # (256, 1, 2)
    res: dict = {
        "problem": "location finding K=2 d=2, 256 grid designs on [-4,4]^2",
        "N_outer": n,
        "L_inner": l,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }

    def ours(kind, seed):
        gen = torch.Generator().manual_seed(seed)
        theta = exp.prior.sample_with_generator((n,), gen)
        with torch.no_grad():
            return getattr(eig, kind)(exp, designs, theta, num_inner=l, generator=gen)

    def theirs(seed):
        pyro.set_rng_seed(seed)
        with torch.no_grad():
            return nmc_eig(pyro_model, grid, "y", "theta", N=n, M=l)

    (p1, t_pyro) = timed(lambda: theirs(1))
    p2 = theirs(2)
    (n1, t_nmc) = timed(lambda: ours("nmc", 1), repeats=2)
    n2 = ours("nmc", 2)
    (c1, t_pce) = timed(lambda: ours("pce", 1), repeats=2)
    c2 = ours("pce", 2)
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()
    res["time_s"] = {"pyro_nmc_eig": t_pyro, "bed_nmc": t_nmc, "bed_pce": t_pce}
    res["speedup_vs_pyro"] = {"nmc": t_pyro / t_nmc, "pce": t_pyro / t_pce}
    res["error"] = {
        "pyro_rms_between_seeds": rms(p1, p2),
        "bed_nmc_rms_between_seeds": rms(n1[0], n2[0]),
        "bed_pce_rms_between_seeds": rms(c1[0], c2[0]),
        "bed_nmc_mean_stderr": n1[1].mean().item(),
    }
    res["agreement"] = {
        "rms_bed_nmc_vs_pyro": rms(n1[0], p1),
        "corr_bed_nmc_vs_pyro": torch.corrcoef(torch.stack([n1[0], p1]))[0, 1].item(),
        "frac_within_3se": ((n1[0] - p1).abs() < 3 * math.sqrt(2) * n1[1]).float().mean().item(),
        "max_eig_pyro": p1.max().item(),
        "max_eig_bed_nmc": n1[0].max().item(),
        "max_eig_bed_pce": c1[0].max().item(),
    }

    scaling = []
    for b, nn, ll in [
        (16, 500, 499),
        (64, 500, 499),
        (256, 500, 499),
        (256, 250, 249),
        (256, 1000, 499),
        (256, 1000, 999),
        (256, 500, 125),
        (256, 500, 250),
    ]:
        theta = exp.prior.sample((nn,))
        _, t = timed(lambda b=b, theta=theta, ll=ll: eig.pce(exp, designs[:b], theta, ll), 2)
        scaling.append(
            {"b": b, "N": nn, "L": ll, "time_s": t, "ns_per_eval": 1e9 * t / (b * nn * (ll + 1))}
        )
    res["scaling_pce"] = scaling

    # one design step as the sequential loop runs it: qEIG + optimize_design on the box
    theta = exp.prior.sample((n,))
    acq = qEIG(exp, theta, num_inner=l)
    x, t_step = timed(lambda: optimize_design(acq, exp.design_space))
    res["design_step"] = {
        "time_s": t_step,
        "num_restarts": 8,
        "raw_samples": 128,
        "design": x.tolist(),
        "N": n,
        "L": l,
    }
    return res


def markdown(res: dict) -> str:
    e, a, s = res["error"], res["agreement"], res["time_s"]
    lines = [
        (
            f"Location finding, 256 designs, N={res['N_outer']} outer, L={res['L_inner']} inner, "
            f"{res['torch_threads']} thread(s)"
        ),
        "",
        "| estimator | time (s) | speedup vs pyro | RMS between seeds |",
        "|---|---|---|---|",
        (
            f"| pyro.contrib.oed.nmc_eig | {s['pyro_nmc_eig']:.3f} | 1.0 | "
            f"{e['pyro_rms_between_seeds']:.4f} |"
        ),
        (
            f"| bed.eig.nmc | {s['bed_nmc']:.3f} | {res['speedup_vs_pyro']['nmc']:.1f} | "
            f"{e['bed_nmc_rms_between_seeds']:.4f} |"
        ),
        (
            f"| bed.eig.pce | {s['bed_pce']:.3f} | {res['speedup_vs_pyro']['pce']:.1f} | "
            f"{e['bed_pce_rms_between_seeds']:.4f} |"
        ),
        "",
        (
            f"Agreement bed.nmc vs pyro: RMS {a['rms_bed_nmc_vs_pyro']:.4f}, corr "
            f"{a['corr_bed_nmc_vs_pyro']:.4f}, within 3 se: {a['frac_within_3se']:.3f}; "
            f"max EIG pyro {a['max_eig_pyro']:.3f}, bed nmc {a['max_eig_bed_nmc']:.3f}, "
            f"bed pce {a['max_eig_bed_pce']:.3f}"
        ),
        "",
        "| b | N | L | pce time (s) | ns / likelihood eval |",
        "|---|---|---|---|---|",
    ]
    for r in res["scaling_pce"]:
        lines.append(
            f"| {r['b']} | {r['N']} | {r['L']} | {r['time_s']:.3f} | {r['ns_per_eval']:.2f} |"
        )
    d = res["design_step"]
    lines += [
        "",
        (
            f"One design step (qEIG pce + optimize_design, Box, {d['num_restarts']} "
            f"restarts, {d['raw_samples']} raw samples, N={d['N']}, L={d['L']}): "
            f"{d['time_s']:.2f} s"
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    res = main()
    out = pathlib.Path(__file__).parent / "results" / "eig.json"
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))
