"""Benchmark (issue 4, part c): digits-16 inpainting, quality vs wall time per method.

Held-out digits (``priors.data.digits16_test``, fixed seed), each observed through 1-8 random
4x4 patches (``PatchObservation``, noise 0.1: the measurement ``digits-16-irsde`` was trained
for). Methods, each drawing ``--samples`` posterior draws per image:

- ``irsde``: the amortised conditional IR-SDE (``model="digits-16-irsde"``), T = 100 network
  calls per draw, in its ``"posterior"`` and ``"sde"`` modes;
- ``dps``: diffusion posterior sampling on the ``digits-16`` prior (biased baseline), as
  ``bed.condition(method="dps")`` (guidance scale 1): it diverges on this sharp likelihood
  (noise 0.1; also for guidance scales down to 1e-3), reported as such; and ``dps-snr``, the
  same ``bed.conditioning.dps`` kernel with the SNR-tempered twist of ``method="smc"``
  (guidance times :math:`\alpha_t^2`), which is stable;
- ``dps-variance``: the same kernel with ``tempering="variance"`` (the spread of x0 | x_t
  added to the noise variance per pixel);
- ``smc``: twisted Feynman-Kac SMC on the ``digits-16`` prior (TDS proposals, SNR or variance
  tempering), particles = draws;
- ``fbs``: forward-backward bridging Gibbs-CSMC on the same prior (small setting; with
  ``--fbs``);
- ``mu``: the point estimate itself (observed pixels, train mean elsewhere), no sampling.

Metrics on the posterior mean (clamped to [-1, 1]) against the true image: PSNR (peak-to-peak
2) and SSIM (a small torch implementation: 7x7 Gaussian window, sigma 1.5, data range 2, mean
over the 10x10 valid positions), averaged over images; wall time per image (``bed.condition``'s
``wall_time``) and network evaluations per image.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.inpainting [--images 16 --fbs]``; writes
``benchmarks/results/inpainting.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

import bed
import priors
from bed.conditioning.irsde import PatchObservation, load_model, masked_point_estimate
from bed.problems.image_mask import psnr, ssim
from priors.data import digits16_test


def methods(samples: int, fbs: bool) -> dict[str, dict]:
    out = {
        "irsde (posterior, T=100)": {
            "method": "irsde",
            "model": "digits-16-irsde",
            "mode": "posterior",
        },
        "irsde (sde, T=100)": {"method": "irsde", "model": "digits-16-irsde", "mode": "sde"},
        "dps (100 steps, guidance 1)": {"method": "dps", "steps": 100},
        "dps-snr (100 steps, SNR-tempered guidance)": {
            "method": "dps",
            "steps": 100,
            "tempering": "snr",
        },
        "dps-variance (100 steps, variance-tempered guidance)": {
            "method": "dps",
            "steps": 100,
            "tempering": "variance",
        },
        "smc (100 steps, snr tempering)": {
            "method": "smc",
            "steps": 100,
            "num_particles": samples,
            "tempering": "snr",
        },
        "smc (100 steps, variance tempering)": {
            "method": "smc",
            "steps": 100,
            "num_particles": samples,
            "tempering": "variance",
        },
    }
    if fbs:
        out["fbs (8 chains, N=8, 50 steps)"] = {
            "method": "fbs",
            "num_particles": 8,
            "steps": 50,
            "num_chains": 8,
            "warmup": 4,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--fbs", action="store_true", help="also run FBS (slow on CPU)")
    parser.add_argument("--out", default="benchmarks/results/inpainting.json")
    args = parser.parse_args()

    prior = priors.load("digits-16")
    lik = PatchObservation(patch=4, noise=0.1)
    exp = bed.Experiment(
        prior, lik, bed.Box([0.0, 0.0], [12.0, 12.0]), name="digits-16-inpainting"
    )
    g = torch.Generator().manual_seed(0)
    truth = digits16_test(args.images, g)
    cases = []
    for x in truth:
        k = int(torch.randint(1, 9, (), generator=g))
        designs = torch.randint(0, 13, (k, 2), generator=g).to(x)
        noise = torch.randn((k, 4, 4), generator=g)
        y = lik(x, designs).mean + 0.1 * noise  # (k, 4, 4)
        cases.append((x, designs, y))

    model = load_model("digits-16-irsde")
    mus = [masked_point_estimate(model, lik.observed_index, d, y)[0] for _, d, y in cases]
    rows: dict[str, dict] = {
        "mu (masked point estimate)": {
            "psnr": [float(psnr(m.clamp(-1, 1), x)) for m, (x, _, _) in zip(mus, cases)],
            "ssim": [float(ssim(m.clamp(-1, 1), x)) for m, (x, _, _) in zip(mus, cases)],
            "wall_time_s": [0.0],
            "num_evals": [0],
        }
    }
    for name, opts in methods(args.samples, args.fbs).items():
        opts = dict(opts)
        method = opts.pop("method")
        per = {"psnr": [], "ssim": [], "wall_time_s": [], "num_evals": [], "diverged": 0}
        for i, (x, designs, y) in enumerate(cases):
            gen = torch.Generator().manual_seed(100 + i)
            try:
                post = bed.condition(exp, designs, y, method, args.samples, generator=gen, **opts)
            except ValueError as err:  # NaN/inf reached the likelihood: diverged
                if "invalid values" not in str(err):
                    raise
                per["diverged"] += 1
                continue
            res = {"samples": post.samples, **post.diagnostics}
            mean = res["samples"].mean(0).clamp(-1, 1)
            per["psnr"].append(float(psnr(mean, x)))
            per["ssim"].append(float(ssim(mean, x)))
            per["wall_time_s"].append(res["wall_time"])
            per["num_evals"].append(int(res.get("num_evals", 0)))
        rows[name] = per
        print(name, per["psnr"], per["diverged"], flush=True)

    def mean(v: list) -> float:
        return statistics.mean(v) if v else float("nan")

    summary = {
        name: {
            "psnr_mean": mean(r["psnr"]),
            "psnr_se": statistics.stdev(r["psnr"]) / len(r["psnr"]) ** 0.5
            if len(r["psnr"]) > 1
            else float("nan"),
            "ssim_mean": mean(r["ssim"]),
            "wall_time_s_per_image": mean(r["wall_time_s"]),
            "num_evals_per_image": mean(r["num_evals"]),
            "diverged": r.get("diverged", 0),
        }
        for name, r in rows.items()
    }
    out = {
        "benchmark": "inpainting",
        "setting": {
            "images": args.images,
            "samples_per_image": args.samples,
            "measurement": "1-8 random 4x4 patches (uniform corners), Gaussian noise 0.1",
            "prior": "digits-16",
            "irsde_model": "digits-16-irsde",
            "metric": "PSNR (dB, range 2) and SSIM (7x7 Gaussian window) of the posterior mean",
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "summary": summary,
        "per_image": rows,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def markdown(out: dict) -> str:
    s = out["setting"]
    lines = [
        (
            f"digits-16 inpainting, {s['images']} held-out images, {s['samples_per_image']} draws "
            f"each, {s['measurement']} ({out['machine']['threads']} CPU thread(s)):"
        ),
        "",
        "| method | PSNR (dB) | SSIM | wall time / image (s) | network evals / image | diverged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in out["summary"].items():
        lines.append(
            f"| {name} | {r['psnr_mean']:.2f} ± {r['psnr_se']:.2f} | {r['ssim_mean']:.3f} "
            f"| {r['wall_time_s_per_image']:.2f} | {r['num_evals_per_image']:.0f} "
            f"| {r['diverged']}/{s['images']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
