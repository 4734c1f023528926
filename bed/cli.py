"""The ``bed`` command line: run, list, plot, eval, prior sample.

Examples::

    bed run location-finding                 # 30 steps on the CPU -> run.nc and run.png
    bed run location-finding --steps 5 --prior gaussian --seed 1 --out r1.nc --plot r1.png
    bed run location-finding --batch 4 --workers 4   # 4 designs per step, 4 worker processes
    bed list
    bed plot run.nc --out run.png
    bed eval r1.nc r2.nc r3.nc --num-inner 100000
    bed prior sample sources-2x2 --n 1000 --out prior.png
"""

# ruff: noqa: B008  (typer declares options as argument defaults)
from __future__ import annotations

import json
import time
from pathlib import Path

import typer

__all__ = ["app"]

app = typer.Typer(
    help="Bayesian experimental design with pretrained generative priors.",
    no_args_is_help=True,
    add_completion=False,
)
prior_app = typer.Typer(help="Shipped generative priors.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command()
def run(
    problem: str = typer.Argument(..., help="A problem name (see `bed list`)."),
    steps: int | None = typer.Option(None, help="Design steps (default: the horizon)."),
    method: str | None = typer.Option(
        None, help="Conditioning method (default: the problem's, e.g. ess or irsde)."
    ),
    prior: str | None = typer.Option(None, help="Prior (default: the problem's)."),
    device: str = typer.Option("cpu", help="torch device: cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the run (theta_true and every step)."),
    out: Path = typer.Option(Path("run.nc"), help="The netCDF record, written every step."),
    plot: str = typer.Option("run.png", help="Figure of the run ('' for none)."),
    num_samples: int | None = typer.Option(None, help="Posterior samples per step."),
    resume: bool = typer.Option(False, help="Continue the record at --out up to --steps."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    threads: int = typer.Option(
        1, help="torch CPU threads (the loop's tensors are small: more threads mostly contend)."
    ),
    batch: int = typer.Option(1, help="Designs chosen jointly and measured per step (q)."),
    workers: int = typer.Option(
        0, help="Measure on a Dask LocalCluster of N worker processes (0: in this process)."
    ),
    retries: int = typer.Option(2, help="Reruns of a measurement that raised."),
) -> None:
    """Run sequential design on PROBLEM against its simulator; write the record and a plot."""
    import torch

    import bed.problems
    from bed import records
    from bed.loop import SequentialDesign, StepError
    from bed.plotting import plot_run

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    executor = None
    try:
        if workers < 0:
            raise ValueError(f"--workers: expected N >= 0 worker processes, got {workers}")
        if workers:
            from bed.executor import local_cluster

            executor = local_cluster(workers, retries)
        if resume:
            sd = SequentialDesign.resume(out, device=device, executor=executor, retries=retries)
        else:
            options = {} if prior is None else {"prior": prior}
            p = bed.problems.get(problem, **options)
            kw = {"device": device, "seed": seed, "record": out}
            kw.update(batch=batch, executor=executor, retries=retries)
            if method is not None:
                kw["method"] = method
            if num_samples is not None:
                kw["num_samples"] = num_samples
            sd = SequentialDesign.from_problem(p, overwrite=True, **kw)
            steps = p.steps if steps is None else steps
        if steps is None:
            steps = bed.problems.get(sd.problem_name).steps
        ds = sd.run(until=steps, progress=progress)
    except (ValueError, TypeError, FileNotFoundError, StepError) as exc:
        _fail(str(exc))
    finally:
        if executor is not None:
            executor.close()
    typer.echo(
        f"{ds.sizes['step']} steps in {time.perf_counter() - t0:.1f} s; record {out}"
        + (f"; final EIG {float(ds['eig'].values[-1]):.3f}" if ds.sizes["step"] else "")
    )
    if plot:
        plot_run(records.load(out), Path(plot))
        typer.echo(f"plot {plot}")


@app.command("list")
def list_() -> None:
    """List problems, shipped priors and conditioning methods."""
    import bed.problems
    import priors
    from bed.conditioning import available_methods

    typer.echo("problems:")
    for name, doc in bed.problems.describe().items():
        choices = bed.problems.prior_choices(name)
        typer.echo(f"  {name}: {doc} (--prior: {', '.join(choices)})")
    typer.echo("priors:")
    for name, doc in priors.available().items():
        typer.echo(f"  {name}: {doc}")
    typer.echo("conditioning methods:")
    for name in available_methods():
        typer.echo(f"  {name}")


@app.command("plot")
def plot_cmd(
    run: Path = typer.Argument(..., help="A run record (netCDF)."),
    out: Path | None = typer.Option(None, help="Output PNG (default: RUN with .png)."),
    panels: int = typer.Option(6, help="How many steps to draw."),
) -> None:
    """Plot posterior samples per step with the designs and theta_true, and EIG per step."""
    from bed import records
    from bed.plotting import plot_run

    try:
        ds = records.load(run)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    out = run.with_suffix(".png") if out is None else out
    plot_run(ds, out, max_panels=panels)
    typer.echo(f"plot {out}")


@app.command("eval")
def eval_cmd(
    runs: list[Path] = typer.Argument(..., help="Run records of one problem (with theta_true)."),
    num_inner: int = typer.Option(100_000, help="L, contrastive prior samples."),
    prior: str | None = typer.Option(
        None, help="Prior for the contrasts (default: the prior the runs used)."
    ),
    seed: int = typer.Option(0, help="Seed of the contrasts and the random baseline."),
    random: bool = typer.Option(True, help="Also score the random-design baseline."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results here."),
) -> None:
    """sPCE lower / sNMC upper bounds on the total EIG of RUNS' designs, with a random baseline.

    The bounds average over the runs (standard error over runs). The random baseline measures
    the same theta_true at the problem's random designs (location finding: xi ~ N(0, I_2),
    clamped to [-4, 4]^2) for the same number of steps.
    """
    import torch

    import bed.problems
    from bed import records

    try:
        sets = [records.RunRecord.from_dataset(records.load(r)) for r in runs]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    cfgs = [s.config() for s in sets]
    names = {c.get("problem") for c in cfgs}
    if len(names) != 1 or None in names:
        _fail(f"eval: runs must come from one registered problem, got {sorted(map(str, names))}")
    lengths = {len(s) for s in sets}
    if len(lengths) != 1:
        _fail(f"eval: runs must have the same number of steps, got {sorted(lengths)}")
    if any(s.theta_true is None for s in sets):
        _fail("eval: every run needs theta_true (a synthetic run, not an instrument)")
    options = dict(cfgs[0].get("problem_options", {}))
    if prior is not None:
        options["prior"] = prior
    try:
        p = bed.problems.get(names.pop(), **options)
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    designs = torch.stack([s.designs() for s in sets]).float()  # (R, T, d)
    obs = torch.stack([s.observations() for s in sets]).float()  # (R, T, *obs)
    theta = torch.stack([torch.from_numpy(s.theta_true) for s in sets]).float()  # (R, *event)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = {"runs": bed.problems.total_eig(p, designs, obs, theta, num_inner, gen)}
        if random:
            rd, ro = bed.problems.random_rollouts(p, theta, designs.shape[1], gen)
            result["random"] = bed.problems.total_eig(p, rd, ro, theta, num_inner, gen)
            result["random"]["designs"] = p.random_designs_doc
    steps = designs.shape[1]
    typer.echo(
        f"total EIG over {steps} steps, {len(sets)} runs, L = {num_inner} "
        f"(sPCE <= log(L+1) = {result['runs']['ceiling']:.3f})"
    )
    typer.echo("| designs | sPCE (lower) | sNMC (upper) |")
    typer.echo("|---|---|---|")
    for key, label in (("runs", "runs"), ("random", "random")):
        if key in result:
            r = result[key]
            if key == "random":
                label = f"random ({p.random_designs_doc})"
            typer.echo(
                f"| {label} | {r['spce']:.3f} ± {r['spce_se']:.3f} "
                f"| {r['snmc']:.3f} ± {r['snmc_se']:.3f} |"
            )
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))


@prior_app.command("sample")
def prior_sample(
    name: str = typer.Argument(..., help="A shipped prior (see `bed list`)."),
    n: int = typer.Option(1000, help="How many samples."),
    out: Path = typer.Option(Path("prior.png"), help="Output PNG."),
    seed: int = typer.Option(0, help="Seed."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """Draw N samples from prior NAME into a scatter plot."""
    import torch

    import priors
    from bed.plotting import plot_prior_samples

    try:
        p = priors.load(name, device=device)
    except KeyError as exc:
        _fail(str(exc))
    gen = torch.Generator(device=device).manual_seed(seed)
    x = p.sample_with_generator((n,), gen)
    plot_prior_samples(x.cpu().numpy(), out, title=f"{name}: {n} samples")
    typer.echo(f"{n} samples of {name} -> {out}")


if __name__ == "__main__":
    app()
