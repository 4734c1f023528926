"""Benchmark of the sequential design loop on 30-step location finding.

Measures
- seconds per step split by phase (condition / acquire / simulate / record) and the share of
  the step spent inside the prior's network (``prior.push`` calls);
- the total EIG of the loop's designs (sPCE lower / sNMC upper bounds, ``L`` contrastive samples
  from the exact N(0, I) prior, ``bed.eig.total``) over ``--runs`` rollouts, next to random
  designs ``xi ~ N(0, I_2)`` (clamped to [-4, 4]^2) measured at the same ``theta_true``.

Each rollout draws ``theta_true`` from the exact N(0, I) prior (seed ``1000 + r``) and runs the
loop with the problem's tuned defaults (``SequentialDesign.from_problem``) and seed ``r``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/loop.py --runs 64 --num-inner 500000

Writes ``benchmarks/results/loop.json`` (rewritten after every ``--eval-every`` rollouts, so a
long run that is stopped still leaves its numbers) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

# Run as a script, this folder heads sys.path and its priors.py would shadow the priors package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np
import torch

import bed.problems
from bed import records
from bed.loop import SequentialDesign
from bed.records import PHASES

REFERENCE = {  # methods.md §10.2, L = 5e5, 2048 rollouts (RL: L = 1e6)
    "random (published)": 8.303,
    "DAD (published)": 10.926,
    "RL policy (published)": 11.73,
}


class PushTimer:
    """Wraps ``prior.push`` to add up the seconds spent inside the network."""

    def __init__(self, prior) -> None:
        self.prior, self.inner, self.seconds, self.calls = prior, prior.push, 0.0, 0
        prior.push = self

    def __call__(self, z):
        t0 = time.perf_counter()
        out = self.inner(z)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def evaluate(truth, loop_d, loop_y, theta, num_inner, seed):
    gen = torch.Generator().manual_seed(seed)
    res = {"loop": bed.problems.total_eig(truth, loop_d, loop_y, theta, num_inner, gen)}
    rd, ry = bed.problems.random_rollouts(truth, theta, loop_d.shape[1], gen)
    res["random"] = bed.problems.total_eig(truth, rd, ry, theta, num_inner, gen)
    return res


def table(result) -> str:
    ev, t = result["eig"], result["timing"]
    lines = [
        (
            f"Location finding, T = {result['steps']}, {ev['loop']['num_runs']} rollouts, "
            f"L = {ev['loop']['num_inner']} (sPCE ceiling log(L+1) = {ev['loop']['ceiling']:.3f}), "
            f"prior {result['prior']}, {result['threads']} thread(s) on {result['machine']}"
        ),
        "",
        "| designs | sPCE (lower) | sNMC (upper) | s / step |",
        "|---|---|---|---|",
        (
            f"| bed loop (ESS-Flow + qEIG) | {ev['loop']['spce']:.3f} ± {ev['loop']['spce_se']:.3f} "
            f"| {ev['loop']['snmc']:.3f} ± {ev['loop']['snmc_se']:.3f} | {t['total']:.2f} |"
        ),
        (
            f"| random (xi ~ N(0, I_2)) | {ev['random']['spce']:.3f} ± {ev['random']['spce_se']:.3f}"
            f" | {ev['random']['snmc']:.3f} ± {ev['random']['snmc_se']:.3f} | — |"
        ),
    ]
    for k, v in REFERENCE.items():
        lines.append(f"| {k}, L = 5e5 | {v:.2f} | | |")
    lines += [
        "",
        "| phase | s / step |",
        "|---|---|",
        *[f"| {p} | {t[p]:.3f} |" for p in PHASES],
        f"| (inside prior.push) | {t['push']:.3f} ({100 * t['push_share']:.0f} % of the step) |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=64, help="rollouts (>= 64 for the headline)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--num-inner", type=int, default=100_000, help="L contrastive samples")
    ap.add_argument("--prior", default="sources-2x2", help="the loop's prior")
    ap.add_argument("--seed", type=int, default=0, help="seed offset of the rollouts")
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop.json")
    args = ap.parse_args()

    problem = bed.problems.get("location-finding", prior=args.prior)
    truth = bed.problems.get("location-finding", prior="gaussian")  # the exact N(0, I)
    designs, obs, thetas = [], [], []
    phase = {p: [] for p in PHASES}
    push, total = [], []
    t_start = time.perf_counter()
    for r in range(args.runs):
        seed = args.seed + r
        theta = truth.experiment.prior.sample_with_generator(
            (), torch.Generator().manual_seed(1000 + seed)
        )
        sd = SequentialDesign.from_problem(problem, seed=seed, theta_true=theta)
        timer = PushTimer(sd.exp.prior)
        t0 = time.perf_counter()
        ds = sd.run(args.steps, progress=False)
        total.append((time.perf_counter() - t0) / args.steps)
        push.append(timer.seconds / args.steps)
        for p in PHASES:
            phase[p].append(float(ds[f"time_{p}"].mean()))
        designs.append(torch.from_numpy(ds["design"].values))
        obs.append(torch.from_numpy(ds["observation"].values))
        thetas.append(theta)
        print(f"run {r}: {total[-1]:.2f} s/step", flush=True)
        if (r + 1) % args.eval_every == 0 or r + 1 == args.runs:
            ev = evaluate(
                truth,
                torch.stack(designs),
                torch.stack(obs),
                torch.stack(thetas),
                args.num_inner,
                12345,
            )
            mean_total = float(np.mean(total))
            result = {
                "problem": "location-finding",
                "prior": args.prior,
                "steps": args.steps,
                "runs_done": r + 1,
                "runs_requested": args.runs,
                "eig": ev,
                "random_designs": truth.random_designs_doc,
                "timing": {
                    **{p: float(np.mean(v)) for p, v in phase.items()},
                    "total": mean_total,
                    "push": float(np.mean(push)),
                    "push_share": float(np.mean(push)) / mean_total,
                },
                "loop_config": json.loads(json.dumps(problem.loop_defaults)),
                "threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} CPU",
                "wall_seconds": time.perf_counter() - t_start,
                "versions": records.versions(),
                "reference": REFERENCE,
                "command": "python benchmarks/loop.py "
                + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"
                ),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
            print(table(result), flush=True)
    if not math.isfinite(result["eig"]["loop"]["spce"]):
        raise SystemExit("non-finite EIG")


if __name__ == "__main__":
    main()
