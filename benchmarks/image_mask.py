"""Benchmark (issue 7): image measurement design, EIG vs random vs max-variance patch orders.

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

``--prior mnist-28`` runs the published setting instead (28x28 MNIST, 7x7 patches, noise 0.1,
DPS posteriors with variance-tempered guidance, 50 steps, batched over all runs).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.image_mask [--prior digits-16 --images 32
--steps 6]``; writes ``benchmarks/results/image_mask.json`` (``image_mask_mnist.json`` for
mnist-28) and prints a markdown table.
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
    parser.add_argument("--prior", default="digits-16", choices=list(im.SETTINGS))
    parser.add_argument("--tempering", default=None, help="DPS tempering (mnist-28)")
    parser.add_argument("--posterior-steps", type=int, default=None, help="DPS/IR-SDE steps")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    overrides = {}
    if args.tempering is not None:
        overrides["tempering"] = args.tempering
    if args.posterior_steps is not None:
        overrides["steps"] = args.posterior_steps
    st = im.setting(args.prior)
    suffix = "" if args.prior == "digits-16" else "_" + args.prior.split("-")[0]
    out_path = args.out or f"benchmarks/results/image_mask{suffix}.json"

    images = im.heldout_images(args.images, torch.Generator().manual_seed(args.seed), args.prior)
    t0 = time.perf_counter()
    res = im.compare_strategies(
        images,
        args.steps,
        im.STRATEGIES,
        args.samples,
        prior=args.prior,
        seed=args.seed,
        progress=True,
        **overrides,
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
            "prior": args.prior,
            "posterior": f"{st.posterior} { ({**st.condition_options, **overrides}) }",
            "measurement": f"one of 16 non-overlapping {st.patch}x{st.patch} patches, "
            f"Gaussian noise {st.noise}",
            "command": f"python -m benchmarks.image_mask --prior {args.prior} --images "
            f"{args.images} --steps {args.steps} --samples {args.samples} --seed {args.seed}"
            + "".join(
                f" --{k.replace('steps', 'posterior-steps')} {v}" for k, v in overrides.items()
            ),
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
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def markdown(out: dict) -> str:
    s = out["setting"]
    ks = list(range(s["steps"] + 1))
    lines = [
        (
            f"{s['prior']}, {s['images']} held-out images, {s['samples']} draws per step "
            f"({s['posterior']}), "
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
