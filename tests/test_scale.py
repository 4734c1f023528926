"""Scale-out: batch designs measured on a Dask cluster, retries, killed workers, chain blocks.

Runs use location finding with the exact Gaussian prior and small budgets. One module-scoped
``LocalCluster`` of 2 worker processes (1 thread each) serves the cluster tests; the simulators
below live at module level so that the workers can unpickle them (they import this module from
the ``sys.path`` that the spawned worker processes inherit).
"""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bed.problems
from bed import records
from bed.cli import app
from bed.conditioning import condition
from bed.executor import DaskExecutor, SerialExecutor, TaskError, as_executor
from bed.loop import SequentialDesign, StepError

distributed = pytest.importorskip("dask.distributed")

Q = 4
STEPS = 2
SMALL = {
    "num_samples": 16,
    "condition_options": {"warmup": 5},
    "optimize_options": {"num_restarts": 1, "raw_samples": 8, "maxiter": 25},
}


@pytest.fixture(scope="module")
def problem():
    return bed.problems.get("location-finding", prior="gaussian")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def make(problem, simulator=None, **kw):
    return SequentialDesign(
        problem.experiment,
        problem.simulator if simulator is None else simulator,
        problem=problem,
        batch=Q,
        seed=5,
        **{**SMALL, **kw},
    )


@pytest.fixture(scope="module")
def serial(problem):
    """The serial q = 4 run: the reference every cluster run must reproduce."""
    return make(problem).run(STEPS, progress=False)


def assert_same_record(a, b):
    for name in ("design", "observation", "eig", "eig_stderr", "posterior", "theta_true"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


class Logged:
    """The location-finding simulator; each finished call appends its design to ``log``."""

    def __init__(self, sim, log):
        self.sim, self.log = sim, str(log)

    def finished(self, design):
        with open(self.log, "a") as f:  # one short O_APPEND write per call: atomic
            f.write(f"{os.getpid()} {design.tolist()}\n")

    def __call__(self, theta, design, generator=None):
        y = self.sim(theta, design, generator)
        self.finished(design)
        return y


class KillOnce(Logged):
    """Kills the worker process running it, once (the first call to create ``marker``)."""

    def __init__(self, sim, log, marker):
        super().__init__(sim, log)
        self.marker = str(marker)

    def __call__(self, theta, design, generator=None):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().__call__(theta, design, generator)
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dies mid-task


class FailAt(Logged):
    """Raises at one design (each attempt is logged as ``fail``)."""

    def __init__(self, sim, log, bad):
        super().__init__(sim, log)
        self.bad = bad

    def __call__(self, theta, design, generator=None):
        if torch.allclose(design, self.bad.to(design)):
            with open(self.log, "a") as f:
                f.write("fail\n")
            raise RuntimeError("detector saturated")
        return super().__call__(theta, design, generator)


def test_record_layout_of_a_batch_run(serial, tmp_path):
    assert serial["design"].dims == ("step", "batch", "design_dim")
    assert serial["design"].shape == (STEPS, Q, 2)
    assert serial["observation"].shape == (STEPS, Q) and serial["eig"].shape == (STEPS,)
    assert serial.attrs["batch"] == Q
    # the q designs of a step differ (a joint design, not q copies of one)
    assert len({tuple(x) for x in serial["design"].values[0].round(4).tolist()}) == Q
    # round trip; flat view of the measurements: row t q + j is measurement j of step t
    path = records.save(serial, tmp_path / "r.nc")
    rec = records.RunRecord.from_dataset(records.load(path))
    assert rec.batch == Q and len(rec) == STEPS
    np.testing.assert_array_equal(rec.designs().numpy(), serial["design"].values.reshape(-1, 2))
    np.testing.assert_array_equal(rec.observations().numpy(), serial["observation"].values.ravel())


def test_batch_run_on_cluster_equals_serial_run(problem, serial, client, tmp_path):
    ds = make(problem, executor=client, record=tmp_path / "c.nc").run(STEPS, progress=False)
    assert_same_record(ds, serial)
    assert_same_record(records.load(tmp_path / "c.nc"), serial)


def test_killed_worker_task_is_rescheduled_and_run_completes(problem, serial, client, tmp_path):
    log, marker = tmp_path / "calls.log", tmp_path / "killed"
    sim = KillOnce(problem.simulator, log, marker)
    sd = make(problem, sim, executor=client, record=tmp_path / "k.nc")
    ds = sd.run(STEPS, progress=False)
    assert marker.exists()  # a worker was killed mid-task
    assert_same_record(ds, serial)  # no step lost or duplicated, same measurements
    assert records.load(tmp_path / "k.nc").sizes["step"] == STEPS
    calls = log.read_text().splitlines()
    assert len(calls) == STEPS * Q  # every measurement finished exactly once
    assert len({line.split(" ", 1)[1] for line in calls}) == STEPS * Q


def test_failing_design_is_retried_then_named_and_finished_steps_kept(
    problem, serial, client, tmp_path
):
    bad = torch.as_tensor(serial["design"].values[1, 2])  # measurement 2 of step 1
    log, path = tmp_path / "calls.log", tmp_path / "f.nc"
    sd = make(
        problem, FailAt(problem.simulator, log, bad), executor=client, retries=2, record=path
    )
    with pytest.raises(
        StepError,
        match=r"step 1, design \[.*\]: the simulator raised RuntimeError: detector "
        r"saturated \(after 3 attempts\)",
    ) as info:
        sd.run(STEPS + 1, progress=False)
    assert info.value.step == 1
    np.testing.assert_allclose(info.value.design, bad.numpy(), rtol=1e-6)
    assert log.read_text().splitlines().count("fail") == 3  # 1 + retries attempts
    disk = records.load(path)
    assert disk.sizes["step"] == 1
    np.testing.assert_array_equal(disk["design"].values, serial["design"].values[:1])


def test_serial_executor_retries_then_reports_the_index():
    calls = []

    def flaky(i):
        calls.append(i)
        if i == 1 and calls.count(1) < 3:
            raise OSError("busy")
        if i == 2:
            raise ValueError("broken")
        return 10 * i

    assert SerialExecutor(retries=2).map(flaky, [(0,), (1,)]) == [0, 10]
    assert calls == [0, 1, 1, 1]
    with pytest.raises(TaskError, match=r"task 1 failed after 2 attempt\(s\): ValueError") as e:
        SerialExecutor(retries=1).map(flaky, [(0,), (2,)])
    assert e.value.index == 1
    assert isinstance(as_executor(None), SerialExecutor)
    with pytest.raises(TypeError, match="executor: expected"):
        as_executor(object())
    with pytest.raises(ValueError, match="retries"):
        SerialExecutor(retries=-1)


def test_dask_executor_keeps_order_and_retries(client):
    ex = as_executor(client, retries=1)
    assert isinstance(ex, DaskExecutor) and ex.workers == 2
    assert ex.map(pow, [(i, 2) for i in range(7)]) == [i * i for i in range(7)]
    with pytest.raises(TaskError, match=r"task 0 failed after 2 attempt\(s\): ZeroDivisionError"):
        ex.map(divmod, [(1, 0), (4, 2)])


def test_gp_route_on_cluster_matches_serial(problem, client):
    from bed.acquisition import qEIG
    from bed.optimize import optimize_design

    exp = problem.experiment
    theta = exp.prior.sample_with_generator((32,), torch.Generator().manual_seed(0))
    acq = qEIG(exp, theta, num_inner=31, seed=1)
    kw = {"surrogate": "gp", "num_evaluations": 6, "num_initial": 4, "num_restarts": 1}
    here = optimize_design(acq, q=1, raw_samples=8, **kw)
    there = optimize_design(acq, q=1, raw_samples=8, executor=client, **kw)
    assert here.shape == (1, 2)
    torch.testing.assert_close(there, here, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"], ["cpu"] * 3])
def test_chain_blocks_give_the_same_draws_on_any_split(problem, devices):
    exp = problem.experiment
    gen = torch.Generator().manual_seed(0)
    theta = exp.prior.sample_with_generator((), gen)
    designs = torch.randn(4, 2, generator=gen)
    obs = problem.simulator(theta, designs, gen)
    kw = {"num_samples": 48, "num_chains": 24, "warmup": 10, "chain_blocks": 4}

    def draws(devs):
        g = torch.Generator().manual_seed(7)
        return condition(exp, designs, obs, "ess", generator=g, devices=devs, **kw)

    one = draws(None)  # all blocks in this thread, one after another
    split = draws(devices)
    torch.testing.assert_close(split.samples, one.samples, rtol=0, atol=0)
    assert split.diagnostics["num_evals"] == one.diagnostics["num_evals"]
    assert split.diagnostics["num_chains"] == 24
    # blocks are not the single-generator run, and other seeds give other draws
    plain = condition(
        exp,
        designs,
        obs,
        "ess",
        generator=torch.Generator().manual_seed(7),
        **{k: v for k, v in kw.items() if k != "chain_blocks"},
    )
    assert not torch.equal(plain.samples, one.samples)


def test_chain_blocks_bad_count(problem):
    exp = problem.experiment
    with pytest.raises(ValueError, match="blocks <= num_chains"):
        condition(
            exp,
            torch.zeros(1, 2),
            torch.ones(1),
            "ess",
            num_samples=8,
            num_chains=4,
            chain_blocks=5,
            generator=torch.Generator().manual_seed(0),
        )


@pytest.mark.slow
def test_cli_batch_and_workers(tmp_path):
    out = tmp_path / "run.nc"
    args = [
        "run",
        "location-finding",
        "--prior",
        "gaussian",
        "--steps",
        "2",
        "--batch",
        "2",
        "--workers",
        "2",
        "--num-samples",
        "16",
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "r.png"),
        "--no-progress",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = records.load(out)
    assert ds["design"].shape == (2, 2, 2) and ds.attrs["batch"] == 2
    assert Path(tmp_path / "r.png").stat().st_size > 0
    res = CliRunner().invoke(app, ["eval", str(out), "--num-inner", "1000", "--no-random"])
    assert res.exit_code == 0, res.output
    assert "total EIG over 4 steps" in res.output  # 2 steps of 2 measurements
