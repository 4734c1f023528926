"""The ``bed`` command line through typer's CliRunner (small step counts)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bed import records
from bed.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    paths = []
    for seed in (0, 1):
        out, png = tmp / f"r{seed}.nc", tmp / f"r{seed}.png"
        res = invoke(
            "run",
            "location-finding",
            "--steps",
            3,
            "--prior",
            "gaussian",
            "--seed",
            seed,
            "--out",
            out,
            "--plot",
            png,
            "--num-samples",
            32,
            "--no-progress",
        )
        assert res.exit_code == 0, res.output
        assert "3 steps" in res.output and png.stat().st_size > 0
        paths.append(out)
    return paths


def test_help_lists_the_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("run", "list", "plot", "eval", "prior"):
        assert cmd in res.output


def test_list_names_problems_priors_and_methods():
    res = invoke("list")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "location-finding" in out and "sources-2x2" in out and "two-moons" in out
    for method in ("ess", "exact", "nuts"):
        assert f"  {method}\n" in out


def test_run_writes_a_record(two_runs):
    ds = records.load(two_runs[0])
    assert ds.sizes["step"] == 3 and ds["posterior"].shape == (3, 32, 2, 2)
    cfg = json.loads(ds.attrs["config"])
    assert cfg["problem"] == "location-finding" and cfg["problem_options"] == {"prior": "gaussian"}
    assert cfg["device"] == "cpu" and cfg["seed"] == 0
    assert not np.array_equal(ds["design"].values, records.load(two_runs[1])["design"].values)


def test_run_resume_continues_to_steps(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.nc"
    out.write_bytes(two_runs[0].read_bytes())
    res = invoke(
        "run",
        "location-finding",
        "--steps",
        4,
        "--out",
        out,
        "--plot",
        "",
        "--resume",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    ds = records.load(out)
    assert ds.sizes["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]  # --plot '' draws nothing
    np.testing.assert_array_equal(
        ds["design"].values[:3], records.load(two_runs[0])["design"].values
    )


def test_plot_and_eval(two_runs, tmp_path):
    png = tmp_path / "p.png"
    res = invoke("plot", two_runs[0], "--out", png)
    assert res.exit_code == 0, res.output and png.stat().st_size > 0
    js = tmp_path / "eval.json"
    res = invoke("eval", *two_runs, "--num-inner", 2000, "--json", js)
    assert res.exit_code == 0, res.output
    assert "| runs |" in res.output and "random (xi ~ N(0, I_2)" in res.output
    result = json.loads(js.read_text())
    for key in ("runs", "random"):
        r = result[key]
        assert r["num_runs"] == 2 and r["num_inner"] == 2000
        assert 0 < r["spce"] <= r["ceiling"] + 1e-6 and r["snmc"] >= r["spce"] - 1e-6


def test_prior_sample(tmp_path):
    png = tmp_path / "prior.png"
    res = invoke("prior", "sample", "two-moons", "--n", 200, "--out", png)
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "nope", "--no-progress"), "unknown problem 'nope'"),
        (("run", "location-finding", "--prior", "x", "--no-progress"), "unknown prior 'x'"),
        (("plot", "missing.nc"), "no run record"),
        (("prior", "sample", "nope"), "unknown prior 'nope'"),
    ],
)
def test_clear_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(*args)
    assert res.exit_code == 1
    assert message in res.output


@pytest.mark.parametrize(
    "problem, extra",
    [
        ("image-mask", ()),  # the problem's own method (irsde) and acquisition (gaussian)
        ("sensor-placement", ("--prior", "grf-32-flow")),
    ],
)
def test_run_field_and_image_problems_with_plots(problem, extra, tmp_path):
    out, png = tmp_path / "run.nc", tmp_path / "run.png"
    res = invoke(
        "run",
        problem,
        "--steps",
        2,
        "--num-samples",
        8,
        "--out",
        out,
        "--plot",
        png,
        "--no-progress",
        *extra,
    )
    assert res.exit_code == 0, res.output
    ds = records.load(out)
    assert ds.sizes["step"] == 2 and png.stat().st_size > 0
    config = json.loads(ds.attrs["config"])
    assert config["method"] == ("irsde" if problem == "image-mask" else "ess")
    assert np.isfinite(ds["posterior"].values).all()
