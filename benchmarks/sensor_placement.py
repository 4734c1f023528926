"""Benchmark (issue 7): sensor placement for a Darcy field, EIG vs random vs Sobol sensors.

For each seed a true log-permeability field is drawn from the prior and read by ``T`` pressure
sensors (``bed.problems.sensor_placement``: noise 0.01). Three ways to place them, all run by
the same ``bed.SequentialDesign`` (ESS posteriors, warm-started, so only the designs differ):

- ``eig``: the loop's choice, the sPCE-optimal sensor given the data so far;
- ``random``: uniform on the unit square (the problem's random baseline);
- ``sobol``: the first ``T`` points of a scrambled Sobol sequence (space filling, fixed).

After ``k`` sensors, with the posterior draws the loop recorded at step ``k`` (conditioned on
the first ``k`` readings):

- **field RMSE**: of the posterior-mean field against the truth;
- **pixel log-likelihood of the truth**: the mean over cells of ``log N(u*_i; m_i, s_i^2)``
  under the posterior's per-cell Gaussian marginals (higher is better; a proper score);
- **log posterior / prior density ratio at the truth**:
  ``sum_{t<k} [log p(y_t | u*, xi_t) - log p(y_t | y_<t, xi_t)]`` with each reading's
  predictive density estimated from the draws of its own step, ``log p(u* | data) - log p(u*)``
  (reported, but its estimate blows up when draws miss a reading; the median is shown).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.sensor_placement [--prior gp --seeds 8 --steps
8]``; writes ``benchmarks/results/sensor_placement_PRIOR.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from scipy import stats

import bed
import bed.problems
from bed.problems import sensor_placement as sp

STRATEGIES = sp.STRATEGIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="gp", help="gp or a learned prior, e.g. grf-32-flow")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    problem = bed.problems.get("sensor-placement", prior=args.prior)
    opts = {"num_samples": args.samples}
    res = {s: {"rmse": [], "pll": [], "gain": [], "wall": []} for s in STRATEGIES}
    for seed in range(args.seeds):
        theta = problem.experiment.prior.sample_with_generator(
            (), torch.Generator().manual_seed(seed)
        )
        for strategy in STRATEGIES:
            r = sp.run_strategy(problem, strategy, theta, args.steps, seed, **opts)
            for key, v in (
                ("rmse", r["rmse"]),
                ("pll", r["pixel_log_lik"]),
                ("gain", r["log_ratio"]),
            ):
                res[strategy][key].append(v)
            res[strategy]["wall"].append(r["wall_time_s"])
            print(
                f"seed {seed} {strategy}: rmse {r['rmse'][-1]:.3f} "
                f"pixel log-lik {r['pixel_log_lik'][-1]:.3f} "
                f"log ratio {r['log_ratio'][-1]:.2f} ({r['wall_time_s']:.0f} s)",
                flush=True,
            )

    table = {}
    f64 = torch.float64
    for s in STRATEGIES:
        rmse = torch.tensor(res[s]["rmse"], dtype=f64)  # (R, T)
        pll = torch.tensor(res[s]["pll"], dtype=f64)
        gain = torch.tensor(res[s]["gain"], dtype=f64)
        r = rmse.shape[0]
        row = {
            "rmse_mean": rmse.mean(0).tolist(),
            "rmse_se": (rmse.std(0) / r**0.5).tolist(),
            "pixel_log_lik_mean": pll.mean(0).tolist(),
            "pixel_log_lik_se": (pll.std(0) / r**0.5).tolist(),
            "log_ratio_median": gain.median(0).values.tolist(),
            "wall_time_s_per_run": sum(res[s]["wall"]) / r,
        }
        if s != "eig":
            for key, sign, values in (("rmse", -1, rmse), ("pixel_log_lik", 1, pll)):
                best = torch.tensor(res["eig"][key if key == "rmse" else "pll"], dtype=f64)
                diff = sign * (best - values)[:, -1]  # > 0 where EIG is better
                row[f"p_eig_better_{key}"] = float(
                    stats.wilcoxon(diff.numpy(), alternative="greater").pvalue
                )
        table[s] = row
    out = {
        "benchmark": "sensor_placement",
        "setting": {
            "prior": args.prior,
            "seeds": args.seeds,
            "steps": args.steps,
            "samples": args.samples,
            "noise": sp.NOISE,
            "command": f"python -m benchmarks.sensor_placement --prior {args.prior} "
            f"--seeds {args.seeds} --steps {args.steps} --samples {args.samples}",
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "strategies": table,
        "per_seed": res,
    }
    path = Path(args.out or f"benchmarks/results/sensor_placement_{args.prior}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def markdown(out: dict) -> str:
    s = out["setting"]
    ks = sorted({k for k in (1, 2, 4, s["steps"]) if k <= s["steps"]})
    lines = [
        (
            f"sensor-placement, prior `{s['prior']}`, {s['seeds']} seeds (true fields from the "
            f"prior), {s['samples']} ESS draws per step ({out['machine']['threads']} CPU "
            "thread):"
        ),
        "",
        "| sensors | "
        + " | ".join(f"RMSE, k={k}" for k in ks)
        + " | "
        + " | ".join(f"pixel log-lik, k={k}" for k in ks)
        + " | median log ratio, k="
        + str(s["steps"])
        + " | s / run |",
        "|---|" + "---:|" * (2 * len(ks) + 2),
    ]
    for name, r in out["strategies"].items():
        rm = [f"{r['rmse_mean'][k - 1]:.3f} ± {r['rmse_se'][k - 1]:.3f}" for k in ks]
        pl = [
            f"{r['pixel_log_lik_mean'][k - 1]:.3f} ± {r['pixel_log_lik_se'][k - 1]:.3f}"
            for k in ks
        ]
        lines.append(
            f"| {name} | "
            + " | ".join(rm + pl)
            + f" | {r['log_ratio_median'][-1]:.1f} | {r['wall_time_s_per_run']:.0f} |"
        )
    lines.append("")
    for name, r in out["strategies"].items():
        if "p_eig_better_rmse" in r:
            lines.append(
                f"EIG vs {name} at k={s['steps']} (one-sided Wilcoxon): RMSE p = "
                f"{r['p_eig_better_rmse']:.2g}, pixel log-lik p = "
                f"{r['p_eig_better_pixel_log_lik']:.2g}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
