"""Speed of the shipped priors: samples/s and log_prob/s on the current device.

For ``sources-2x2`` (a flow fitted to N(0, I_4)) an exact ``torch.distributions.MultivariateNormal``
is timed in the same run as the baseline and the flow/baseline ratio is reported. Each number is
the median of repeated timings (after a warm-up) at a small batch (512, the batch a design step
uses) and a large batch (throughput).

Usage::

    python benchmarks/priors.py [--device cpu] [--out benchmarks/results/priors.json]
    python -m benchmarks.priors  # the same, from the repository root

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(_HERE / "results" / "priors.json"))
    args = parser.parse_args()
    results = run(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(markdown(results))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
