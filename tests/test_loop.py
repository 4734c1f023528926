"""The sequential design loop: reproducibility, resume, and failures that leave the record intact.

All runs use location finding with the exact Gaussian prior and small budgets.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import bed
import bed.problems
from bed import records
from bed.loop import Instrument, SequentialDesign, Simulator, StepError, as_simulator

SMALL = {
    "num_samples": 32,
    "condition_options": {"warmup": 5},
    "optimize_options": {"num_restarts": 2, "raw_samples": 16},
}


@pytest.fixture(scope="module")
def problem():
    return bed.problems.get("location-finding", prior="gaussian")


def make(problem, simulator=None, **kw):
    return SequentialDesign(
        problem.experiment,
        problem.simulator if simulator is None else simulator,
        problem=problem,
        **{**SMALL, **kw},
    )


@pytest.fixture(scope="module")
def reference(problem):
    """Designs of an uninterrupted 4-step run with seed 3."""
    ds = make(problem, seed=3).run(4, progress=False)
    return ds["design"].values


class FailAt:
    """The location-finding simulator, except at step ``k`` where it misbehaves."""

    def __init__(self, problem, k, how):
        self.sim, self.k, self.how, self.calls = problem.simulator, k, how, 0

    def __call__(self, theta, design, generator=None):
        step, self.calls = self.calls, self.calls + 1
        y = self.sim(theta, design, generator)
        if step != self.k:
            return y
        if self.how == "raise":
            raise RuntimeError("instrument offline")
        if self.how == "nan":
            return y * math.nan
        if self.how == "inf":
            return y + math.inf
        if self.how == "shape":
            return y.expand(3)
        return None


def test_two_seeded_runs_give_identical_designs(problem, reference):
    again = make(problem, seed=3).run(4, progress=False)
    np.testing.assert_array_equal(again["design"].values, reference)
    other = make(problem, seed=4).run(1, progress=False)
    assert not np.array_equal(other["design"].values, reference[:1])


def test_record_contents(problem, tmp_path):
    path = tmp_path / "run.nc"
    sd = make(problem, seed=1, record=path)
    ds = sd.run(2, progress=False)
    disk = records.load(path)
    for name in ("design", "observation", "eig", "eig_stderr", "posterior", "theta_true"):
        np.testing.assert_array_equal(disk[name].values, ds[name].values)
    assert disk["posterior"].shape == (2, 32, 2, 2)
    assert disk["posterior_source"].shape == (2, 32, 2, 2)  # Gaussian: source shape = event
    assert disk.attrs["problem"] == "location-finding" and disk.attrs["method"] == "ess"
    assert disk.attrs["seed"] == 1
    cfg = records.RunRecord.from_dataset(disk).config()
    assert cfg["num_samples"] == 32 and cfg["problem_options"] == {"prior": "gaussian"}
    assert (disk["time_acquire"].values > 0).all() and (disk["time_record"].values > 0).all()
    np.testing.assert_array_equal(disk["theta_true"].values, sd.theta_true.numpy())
    # the observations come from the simulator at theta_true: residuals ~ N(0, 0.5^2)
    assert torch.isfinite(torch.as_tensor(disk["observation"].values)).all()
    assert (disk["eig"].values > 0).all() and (disk["eig"].values < math.log(32)).all()


def test_simulator_raising_stops_with_step_and_design_then_resume(problem, reference, tmp_path):
    path = tmp_path / "run.nc"
    sd = make(problem, FailAt(problem, 2, "raise"), seed=3, record=path)
    with pytest.raises(
        StepError,
        match=r"step 2, design \[.*\]: the simulator raised "
        r"RuntimeError: instrument offline",
    ) as info:
        sd.run(4, progress=False)
    assert info.value.step == 2
    np.testing.assert_allclose(info.value.design, reference[2], rtol=1e-6)
    disk = records.load(path)
    assert disk.sizes["step"] == 2
    np.testing.assert_array_equal(disk["design"].values, reference[:2])
    resumed = SequentialDesign.resume(path, problem.simulator)
    assert resumed.num_steps == 2
    ds = resumed.run(until=4, progress=False)
    np.testing.assert_array_equal(ds["design"].values, reference)
    assert records.load(path).sizes["step"] == 4


@pytest.mark.parametrize(
    "how, message",
    [
        ("nan", "non-finite observation"),
        ("inf", "non-finite observation"),
        ("shape", r"observation of shape \(3,\); the likelihood expects shape \(\)"),
        ("none", "returned None"),
    ],
)
def test_bad_observations_are_refused(problem, tmp_path, how, message):
    path = tmp_path / "run.nc"
    sd = make(problem, FailAt(problem, 1, how), seed=0, record=path)
    with pytest.raises(StepError, match=r"step 1, design \[.*\]: .*" + message):
        sd.run(3, progress=False)
    assert sd.num_steps == 1
    disk = records.load(path)
    assert disk.sizes["step"] == 1 and np.isfinite(disk["observation"].values).all()


def test_design_out_of_bounds_is_refused(problem, tmp_path):
    path = tmp_path / "run.nc"
    sd = make(problem, seed=0, record=path)
    sd.step()
    with pytest.raises(StepError, match=r"step 1, design \[5.0, 0.0\]: .*outside the box"):
        sd.step(design=torch.tensor([5.0, 0.0]))
    with pytest.raises(StepError, match=r"step 1.*expected a design of shape \(2,\)"):
        sd.step(design=torch.tensor([0.0, 0.0, 0.0]))
    assert sd.num_steps == 1 and records.load(path).sizes["step"] == 1
    out = sd.step(design=torch.tensor([1.0, -1.0]))  # a user-chosen design inside the box
    assert out["design"].tolist() == [1.0, -1.0] and records.load(path).sizes["step"] == 2


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, pathlib
    import bed, bed.problems
    from bed.loop import SequentialDesign
    path, flag, k = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    p = bed.problems.get("location-finding", prior="gaussian")
    calls = []
    def simulate(theta, design, generator=None):
        calls.append(1)
        if len(calls) == k + 1:
            flag.write_text("mid-step")
            time.sleep(60)
        return p.simulator(theta, design, generator)
    SequentialDesign(p.experiment, simulate, problem=p, seed=3, record=path,
                     num_samples=32, condition_options={"warmup": 5},
                     optimize_options={"num_restarts": 2, "raw_samples": 16}).run(4, progress=False)
    """
)


def _wait_for(proc, flag, timeout=120):
    start = time.monotonic()
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"subprocess exited early: {proc.stderr.read().decode()}")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("subprocess never reached the step")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_step_keeps_finished_steps_and_resumes(problem, reference, tmp_path):
    path, flag = tmp_path / "run.nc", tmp_path / "flag"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(path), str(flag), "2"],
        env=env,
        stderr=subprocess.PIPE,
    )
    _wait_for(proc, flag)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    disk = records.load(path)
    assert disk.sizes["step"] == 2
    np.testing.assert_array_equal(disk["design"].values, reference[:2])
    ds = SequentialDesign.resume(path).run(until=4, progress=False)
    np.testing.assert_array_equal(ds["design"].values, reference)


_WRITE_SCRIPT = textwrap.dedent(
    """
    import sys, pathlib, numpy as np
    from bed import records
    path, flag = sys.argv[1], pathlib.Path(sys.argv[2])
    rec = records.RunRecord(design_dim=2, event_shape=(2, 2))
    for i in range(100000):
        rec.append(design=np.full(2, i, np.float32), observation=np.float32(i), eig=i,
                   eig_stderr=0, posterior=np.full((64, 2, 2), i, np.float32))
        records.save(rec, path)
        if i == 2:
            flag.write_text("writing")
    """
)


@pytest.mark.slow
def test_sigkill_during_writes_never_corrupts_the_record(tmp_path):
    path, flag = tmp_path / "run.nc", tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITE_SCRIPT, str(path), str(flag)], stderr=subprocess.PIPE
    )
    _wait_for(proc, flag)
    time.sleep(0.7)  # somewhere inside a later write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    ds = records.load(path)
    n = ds.sizes["step"]
    assert n >= 3
    np.testing.assert_array_equal(ds["observation"].values, np.arange(n, dtype=np.float32))


def test_instrument_and_arity(problem, tmp_path):
    theta = torch.tensor([[1.0, 0.0], [-1.0, 0.5]])

    def measure(design):
        return problem.experiment.likelihood(theta, design).mean

    assert isinstance(as_simulator(measure), Instrument)
    assert isinstance(as_simulator(lambda theta, design: 0.0), Simulator)
    with pytest.raises(TypeError, match="3 required positional arguments"):
        as_simulator(lambda a, b, c: 0.0)
    with pytest.raises(ValueError, match="Instrument measures an unknown theta"):
        make(problem, measure, theta_true=theta)
    sd = make(problem, measure, record=tmp_path / "inst.nc")
    assert sd.theta_true is None
    ds = sd.run(2, progress=False)
    assert "theta_true" not in ds
    np.testing.assert_allclose(
        ds["observation"].values,
        problem.experiment.likelihood(theta, torch.as_tensor(ds["design"].values)).mean,
        rtol=1e-6,
    )
    resumed = SequentialDesign.resume(tmp_path / "inst.nc", Instrument(measure))
    assert resumed.run(1, progress=False).sizes["step"] == 3


def test_theta_true_given_and_existing_record(problem, tmp_path):
    theta = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    path = tmp_path / "run.nc"
    sd = make(problem, theta_true=theta, record=path)
    assert torch.equal(sd.theta_true, theta)
    with pytest.raises(FileExistsError, match="SequentialDesign.resume"):
        make(problem, record=path)
    with pytest.raises(
        ValueError, match=r"theta_true: expected a tensor of shape \(\.\.\., 2, 2\)"
    ):
        make(problem, theta_true=torch.zeros(3))
    sd = make(problem, record=path, overwrite=True)
    assert sd.num_steps == 0


def test_from_problem_applies_tuned_defaults(problem):
    sd = SequentialDesign.from_problem(problem, optimize_options={"num_restarts": 1})
    assert sd.num_samples == problem.loop_defaults["num_samples"]
    assert sd.optimize_options == {"num_restarts": 1, "raw_samples": 64}
    assert sd.condition_options == {"warmup": 10}
