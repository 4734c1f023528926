"""Benchmark (issue 7): image measurement design on digits-16, EIG vs random vs max-variance.

Each held-out digit (``priors.data.digits16_test``, fixed seed) is measured one 4x4 patch at a
time (16 candidates, noise 0.1; ``bed.problems.image_mask``); after every patch the IR-SDE
posterior (``digits-16-irsde``, ``--samples`` draws) is recomputed and the next patch chosen by

- ``eig``: the largest expected information gain (``bed.eig.gaussian`` on the draws),
- ``max-variance``: the unmeasured patch with the largest summed posterior variance,
- ``random``: a uniformly random order.

All strategies see the same noisy reading of a given patch (a paired comparison).
Metrics: PSNR and SSIM of the posterior mean after ``k`` patches, mean ± s.e. over images,
and the paired one-sided Wilcoxon p-value of EIG vs each baseline at every ``k``; wall time per
step (all strategies and images together, one batched IR-SDE call per step).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.image_mask [--images 32 --steps 6]``; writes
``benchmarks/results/image_mask.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from scipy import stats

from bed.problems import image_mask as im


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/image_mask.json")
    args = parser.parse_args()

    images = im.heldout_images(args.images, torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    res = im.compare_strategies(
        images, args.steps, im.STRATEGIES, args.samples, seed=args.seed, progress=True
    )
    wall = time.perf_counter() - t0
    table = {}
    for s, name in enumerate(im.STRATEGIES):
        row = {}
        for metric in ("psnr", "ssim"):
            v = res[metric][s].double()  # (n, T + 1)
            row[f"{metric}_mean"] = v.mean(0).tolist()
            row[f"{metric}_se"] = (v.std(0) / v.shape[0] ** 0.5).tolist()
        if name != "eig":
            diff = (res["psnr"][0] - res["psnr"][s]).double()[:, 1:]  # (n, T)
            row["p_eig_better_psnr"] = [
                float(stats.wilcoxon(d.numpy(), alternative="greater").pvalue) for d in diff.T
            ]
        table[name] = row
    out = {
        "benchmark": "image_mask",
        "setting": {
            "images": args.images,
            "steps": args.steps,
            "samples": args.samples,
            "prior": "digits-16",
            "posterior": "IR-SDE digits-16-irsde, posterior mode, T=100",
            "measurement": "one of 16 non-overlapping 4x4 patches, Gaussian noise 0.1",
            "command": f"python -m benchmarks.image_mask --images {args.images} "
            f"--steps {args.steps} --samples {args.samples} --seed {args.seed}",
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "wall_time_s": wall,
        "wall_time_s_per_step": wall / (args.steps + 1),
        "strategies": table,
        "order": res["order"].tolist(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def markdown(out: dict) -> str:
    s = out["setting"]
    ks = list(range(s["steps"] + 1))
    lines = [
        (
            f"digits-16, {s['images']} held-out images, {s['samples']} IR-SDE draws per step, "
            f"{s['measurement']}; {out['wall_time_s_per_step']:.1f} s per step for all "
            f"{len(out['strategies'])} x {s['images']} runs together "
            f"({out['machine']['threads']} CPU thread):"
        ),
        "",
        "| strategy | " + " | ".join(f"PSNR, {k} patches" for k in ks) + " | SSIM, "
        f"{ks[-1]} patches |",
        "|---|" + "---:|" * (len(ks) + 1),
    ]
    for name, r in out["strategies"].items():
        cells = [f"{m:.2f} ± {e:.2f}" for m, e in zip(r["psnr_mean"], r["psnr_se"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['ssim_mean'][-1]:.3f} |")
    lines.append("")
    for name, r in out["strategies"].items():
        if "p_eig_better_psnr" in r:
            ps = ", ".join(f"{p:.2g}" for p in r["p_eig_better_psnr"])
            lines.append(f"EIG vs {name}, one-sided Wilcoxon p per k = 1..{ks[-1]}: {ps}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
