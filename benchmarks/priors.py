"""Speed and quality of the shipped priors on the current device.

Part 1, low-dimensional exact flows: samples/s and log_prob/s. For ``sources-2x2`` (a flow
fitted to N(0, I_4)) an exact ``torch.distributions.MultivariateNormal`` is timed in the same
run as the baseline and the flow/baseline ratio is reported. Each number is the median of
repeated timings (after a warm-up) at a small batch (512, the batch a design step uses) and a
large batch (throughput).

Part 2, ODE/SDE priors (diffusion, flow matching) and the field flow, against the number of
solver steps: ``push`` (probability-flow ODE, Heun: 2 network calls per step) per second,
reverse-SDE ``sample`` (Euler-Maruyama, 1 call per step) per second, ``log_prob`` per second at
the default steps, and the quality of the draws at each step count against held-out data:
sliced Wasserstein distance for 2-D priors (with the value real data reach), pixel-histogram
L1 and mean-image RMSE for images, power-spectrum log error and variance ratio for fields
(``priors.metrics``). One batch per prior (2-D: 2000; images and fields: 256), one timing each.

Usage::

    python -m benchmarks.priors [--device cpu] [--out benchmarks/results/priors.json]
    python -m benchmarks.priors --quick  # fewer step counts

Writes the JSON results and prints markdown table rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

# Run as a script, this file's folder comes first on sys.path and this file (priors.py) would
# shadow the ``priors`` package; drop that folder before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import priors

BATCHES = (512, 65_536)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5) -> float:
    """Median seconds per call of ``fn`` over repeats filling about ``budget_s``."""
    for _ in range(3):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def _measure(
    sample: Callable[[int], torch.Tensor],
    log_prob: Callable[[torch.Tensor], object],
    device: torch.device,
) -> dict[str, dict[str, float]]:
    out = {}
    for n in BATCHES:
        x = sample(n)
        t_sample = _time(lambda n=n: sample(n), device)
        t_lp = _time(lambda x=x: log_prob(x), device)
        out[str(n)] = {
            "sample_ms": 1e3 * t_sample,
            "log_prob_ms": 1e3 * t_lp,
            "samples_per_s": n / t_sample,
            "log_probs_per_s": n / t_lp,
        }
    return out


def run(device: str) -> dict:
    dev = torch.device(device)
    results: dict = {
        "benchmark": "priors",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "device_type": dev.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batches": list(BATCHES),
        "priors": {},
    }
    for name in priors.available():
        card = priors.zoo.card(name)
        if card["kind"] != "flow" or len(card["event_shape"]) != 1 and name != "sources-2x2":
            continue  # part 2 times ODE priors and the field flow per step count
        p = priors.load(name, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        results["priors"][name] = _measure(
            lambda n, p=p, g=g: p.sample_with_generator((n,), g), p.log_prob, dev
        )
        if name == "sources-2x2":
            mvn = torch.distributions.MultivariateNormal(
                torch.zeros(4, device=dev), torch.eye(4, device=dev)
            )
            base = _measure(lambda n, mvn=mvn: mvn.sample((n,)), mvn.log_prob, dev)
            results["priors"][name]["baseline"] = {"name": "MultivariateNormal(0, I_4)", **base}
            results["priors"][name]["ratio_vs_baseline"] = {
                k: {
                    "sample": results["priors"][name][k]["sample_ms"] / base[k]["sample_ms"],
                    "log_prob": results["priors"][name][k]["log_prob_ms"] / base[k]["log_prob_ms"],
                }
                for k in base
            }
    return results


def markdown(results: dict) -> str:
    """Markdown rows: one per prior and batch size."""
    dev = f"{results['device_type']} ({results['device']}, {results['threads']} threads)"
    lines = [
        f"Priors on {dev}, torch {results['torch']}, {results['date']}:",
        "",
        (
            "| prior | batch | sample (ms) | samples/s | log_prob (ms) | log_probs/s "
            "| vs exact MVN (sample / log_prob) |"
        ),
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, res in results["priors"].items():
        for n in map(str, results["batches"]):
            r = res[n]
            ratio = res.get("ratio_vs_baseline", {}).get(n)
            vs = f"{ratio['sample']:.0f}x / {ratio['log_prob']:.0f}x slower" if ratio else "-"
            lines.append(
                f"| {name} | {n} | {r['sample_ms']:.3g} | {r['samples_per_s']:.3g} "
                f"| {r['log_prob_ms']:.3g} | {r['log_probs_per_s']:.3g} | {vs} |"
            )
        if "baseline" in res:
            for n in map(str, results["batches"]):
                b = res["baseline"][n]
                lines.append(
                    f"| (baseline) {res['baseline']['name']} | {n} | {b['sample_ms']:.3g} "
                    f"| {b['samples_per_s']:.3g} | {b['log_prob_ms']:.3g} "
                    f"| {b['log_probs_per_s']:.3g} | 1x |"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------------- part 2: per step count
def _heldout(name: str) -> torch.Tensor:
    """Held-out data of the distribution a prior was trained on (CPU)."""
    from priors import data

    g = torch.Generator().manual_seed(1_000_003)
    if name.startswith("two-moons"):
        return data.two_moons(2000, g)
    if name.startswith("grf-32"):
        return data.grf32(2000, g)
    if name == "digits-16":
        return data.digits16_test(359)
    if name == "mnist-28":
        return data.mnist28_test(1000)
    raise KeyError(name)


def _quality(name: str, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    from bed.diagnostics import sliced_wasserstein
    from priors import metrics

    x = x.detach().cpu().float()
    if x.dim() == 2:  # 2-D points
        sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
        return {"sliced_wasserstein": float(sw)}
    if name.startswith("grf-32"):
        err = metrics.spectrum_log_error(x, ref)
        return {
            "spectrum_log_error": float(err.mean()),
            "variance_ratio": float(x.var(0).mean() / ref.var(0).mean()),
        }
    return {
        "pixel_histogram_l1": metrics.pixel_histogram_l1(x, ref),
        "mean_image_rmse": float((x.clamp(-1, 1).mean(0) - ref.mean(0)).pow(2).mean().sqrt()),
    }


def _once(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _profile(name: str, p, card: dict, dev: torch.device, quick: bool) -> dict:
    """Speed and quality of one ODE/SDE prior (or the field flow) per step count."""
    kind = card["kind"]
    ref = _heldout(name)
    n = 2000 if len(card["event_shape"]) == 1 else 256
    z = torch.randn((n,) + tuple(p.event_shape), generator=torch.Generator().manual_seed(0))
    z = z.to(dev)
    entry: dict = {"kind": kind, "batch": n, "steps": {}}
    if name.startswith(("two-moons", "grf-32")):  # what real data reach vs the held-out set
        from priors import data

        g = torch.Generator().manual_seed(7)
        fresh = data.two_moons(n, g) if name.startswith("two-moons") else data.grf32(n, g)
        entry["real_data_quality"] = _quality(name, fresh, ref)
    if kind == "flow":  # the field flow: one exact map, no steps
        x, t = _once(lambda: p.push(z), dev)
        entry.update(push_per_s=n / t, quality=_quality(name, x, ref))
        _, t = _once(lambda: p.log_prob(x[:64]), dev)
        entry.update(log_prob_per_s=64 / t, log_prob_batch=64)
        return entry
    grid = (5, 10, 20, 50, 100) if len(card["event_shape"]) == 1 else (5, 10, 20, 30, 50)
    for k in grid[1::2] if quick else grid:
        x, t_push = _once(lambda k=k: p.push(z, steps=k), dev)
        row = {"push_per_s": n / t_push, "push_s": t_push, "ode": _quality(name, x, ref)}
        if kind == "diffusion":
            g = torch.Generator(device=dev).manual_seed(0)
            xs, t_sde = _once(lambda k=k, g=g: p.sample((n,), generator=g, steps=k), dev)
            row.update(sample_per_s=n / t_sde, sample_s=t_sde, sde=_quality(name, xs, ref))
        entry["steps"][str(k)] = row
        print(name, k, row, flush=True)
    m = min(n, 64)
    with torch.enable_grad():
        _, t_lp = _once(lambda: p.log_prob(x[:m]), dev)
    entry.update(log_prob_per_s=m / t_lp, log_prob_batch=m)
    entry["default_steps"] = {"ode": getattr(p, "ode_steps", getattr(p, "steps", None))}
    if kind == "diffusion":
        entry["default_steps"]["sde"] = p.sde_steps
    return entry


@torch.no_grad()
def run_steps(device: str, quick: bool = False) -> dict:
    """Part 2: speed and quality vs solver steps of every ODE/SDE prior and the field flow."""
    dev = torch.device(device)
    out: dict = {}
    for name in priors.available():
        card = priors.zoo.card(name)
        if card["kind"] == "flow" and len(card["event_shape"]) == 1 or name == "sources-2x2":
            continue
        out[name] = _profile(name, priors.load(name, device=dev), card, dev, quick)
    return out


def markdown_steps(res: dict) -> str:
    """Markdown table of part 2: one row per prior and step count."""
    lines = [
        (
            "| prior | steps | push/s (ODE) | ODE quality | sample/s (SDE) | SDE quality "
            "| real data |"
        ),
        "|---|---:|---:|---|---:|---|---|",
    ]

    def q(d: dict | None) -> str:
        return "-" if not d else ", ".join(f"{k} {v:.3g}" for k, v in d.items())

    for name, e in res.items():
        real = q(e.get("real_data_quality"))
        if "quality" in e:
            lines.append(
                f"| {name} | (exact map) | {e['push_per_s']:.3g} | {q(e['quality'])} "
                f"| - | - | {real} |"
            )
            continue
        for k, r in e["steps"].items():
            sps = f"{r['sample_per_s']:.3g}" if "sample_per_s" in r else "-"
            lines.append(
                f"| {name} | {k} | {r['push_per_s']:.3g} | {q(r['ode'])} | {sps} "
                f"| {q(r.get('sde'))} | {real} |"
            )
    lines.append("")
    lines.append(
        "log_prob/s at the default steps: "
        + ", ".join(f"{n} {e['log_prob_per_s']:.3g}" for n, e in res.items())
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(_HERE / "results" / "priors.json"))
    parser.add_argument("--quick", action="store_true", help="fewer step counts")
    args = parser.parse_args()
    results = run(args.device)
    results["per_step_count"] = run_steps(args.device, args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(markdown(results))
    print()
    print(markdown_steps(results["per_step_count"]))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
