"""Scale-out benchmark: a slow simulator measured on a Dask LocalCluster.

A 5-step batch run (q = 4 designs per step) of location finding (Gaussian prior), with a
simulator that sleeps 0.5 s per call (a stand-in for a PDE solve or an instrument queue), run
serially in this process and on a ``LocalCluster(n_workers=N, threads_per_worker=1,
processes=True)`` for N = 1, 2, 4. Conditioning and acquisition use small budgets so the
simulator dominates. Each configuration's record is checked against the serial one (same seed:
same designs and observations). Cluster start-up is timed separately and not included in the
run's wall time.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scale.py [--workers 1 2 4] [--sleep 0.5]

Writes ``benchmarks/results/scale.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
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
from bed.executor import local_cluster
from bed.loop import SequentialDesign

RESULTS = Path(__file__).parent / "results" / "scale.json"
SETTINGS = {
    "num_samples": 16,
    "condition_options": {"warmup": 5},
    "optimize_options": {"num_restarts": 1, "raw_samples": 8, "maxiter": 25},
}


class SlowSimulator:
    """The location-finding simulator, plus ``time.sleep(seconds)`` per call."""

    def __init__(self, sim, seconds: float) -> None:
        self.sim, self.seconds = sim, seconds

    def __call__(self, theta, design, generator=None):
        time.sleep(self.seconds)
        return self.sim(theta, design, generator)


def run_once(problem, sim, steps: int, q: int, seed: int, executor) -> tuple[float, dict]:
    sd = SequentialDesign(
        problem.experiment,
        sim,
        problem=problem,
        batch=q,
        seed=seed,
        executor=executor,
        **SETTINGS,
    )
    t0 = time.perf_counter()
    ds = sd.run(steps, progress=False)
    return time.perf_counter() - t0, ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    problem = bed.problems.get("location-finding", prior="gaussian")
    sim = SlowSimulator(problem.simulator, args.sleep)
    calls = args.steps * args.batch

    run_once(problem, SlowSimulator(problem.simulator, 0.0), 1, args.batch, args.seed, None)
    wall, ref = run_once(problem, sim, args.steps, args.batch, args.seed, None)  # after warm-up
    sim_s = float(ref["time_simulate"].sum())
    rows = [
        {
            "executor": "serial",
            "workers": 0,
            "wall_s": wall,
            "simulate_s": sim_s,
            "other_s": wall - sim_s,
            "startup_s": 0.0,
            "speedup": 1.0,
            "same_record": True,
        }
    ]
    print(f"serial: {wall:.2f} s (simulate {sim_s:.2f} s)", flush=True)
    for n in args.workers:
        t0 = time.perf_counter()
        ex = local_cluster(n)
        ex.client.wait_for_workers(n)
        startup = time.perf_counter() - t0
        try:
            w, ds = run_once(problem, sim, args.steps, args.batch, args.seed, ex)
        finally:
            ex.close()
        same = all(
            np.array_equal(ds[k].values, ref[k].values) for k in ("design", "observation", "eig")
        )
        s = float(ds["time_simulate"].sum())
        rows.append(
            {
                "executor": f"LocalCluster({n} processes x 1 thread)",
                "workers": n,
                "wall_s": w,
                "simulate_s": s,
                "other_s": w - s,
                "startup_s": startup,
                "speedup": wall / w,
                "same_record": bool(same),
            }
        )
        print(f"{n} workers: {w:.2f} s (simulate {s:.2f} s), x{wall / w:.2f}", flush=True)
    out = {
        "benchmark": "scale",
        "problem": "location-finding (gaussian prior)",
        "steps": args.steps,
        "batch": args.batch,
        "simulator_sleep_s": args.sleep,
        "simulator_calls": calls,
        "ideal_serial_simulate_s": calls * args.sleep,
        "settings": SETTINGS,
        "seed": args.seed,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "shared machine (other jobs running); sleep-bound simulator",
        },
        "versions": records.versions(),
        "rows": rows,
        "command": "OMP_NUM_THREADS=1 python benchmarks/scale.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        f"\n{args.steps} steps x q = {args.batch}, simulator sleeps {args.sleep} s per call "
        f"({calls} calls)\n"
    )
    print("| executor | wall (s) | simulate (s) | other (s) | speed-up vs serial | same record |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['executor']} | {r['wall_s']:.2f} | {r['simulate_s']:.2f} | "
            f"{r['other_s']:.2f} | {r['speedup']:.2f} | {'yes' if r['same_record'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
