"""Run records: netCDF round trip across shapes and dtypes, atomic writes, clear errors."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bed import records
from bed.records import PHASES, RunRecord

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
float_dtypes = st.sampled_from([np.float32, np.float64])


def _array(draw, shape, dtype):
    return draw(hnp.arrays(dtype, shape))


@st.composite
def runs(draw):
    design_dim = draw(st.integers(1, 3))
    event_shape = draw(shapes)
    obs_shape = draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    source_shape = draw(st.one_of(st.none(), shapes))
    num = draw(st.integers(1, 4))
    n_steps = draw(st.integers(0, 3))
    dt = {k: draw(float_dtypes) for k in ("design", "obs", "post", "src", "theta")}
    theta_true = draw(st.one_of(st.none(), st.just(True)))
    rec = RunRecord(
        design_dim=design_dim,
        event_shape=event_shape,
        obs_shape=obs_shape,
        source_shape=source_shape,
        theta_true=None if theta_true is None else _array(draw, event_shape, dt["theta"]),
        attrs={"problem": "p", "seed": draw(st.integers(0, 2**31)), "config": {"a": [1, 2]}},
    )
    for _ in range(n_steps):
        rec.append(
            design=_array(draw, (design_dim,), dt["design"]),
            observation=_array(draw, obs_shape, dt["obs"]),
            eig=draw(st.floats(-10, 10)),
            eig_stderr=draw(st.floats(0, 1)),
            posterior=_array(draw, (num, *event_shape), dt["post"]),
            posterior_source=(
                None if source_shape is None else _array(draw, (num, *source_shape), dt["src"])
            ),
            timings={p: draw(st.floats(0, 5)) for p in PHASES},
        )
    return rec


@settings(max_examples=40, deadline=None)
@given(runs())
def test_round_trip_across_shapes_and_dtypes(rec):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.nc"
        records.save(rec, path)
        ds = records.load(path)
        back = RunRecord.from_dataset(ds)
        assert os.listdir(tmp) == ["run.nc"]  # no temporary file left behind
    assert ds.sizes["step"] == len(rec)
    assert back.event_shape == rec.event_shape and back.obs_shape == rec.obs_shape
    assert back.source_shape == rec.source_shape and back.design_dim == rec.design_dim
    assert back.attrs["problem"] == "p" and back.config() == {"a": [1, 2]}
    if rec.theta_true is None:
        assert back.theta_true is None and "theta_true" not in ds
    else:
        assert back.theta_true.dtype == rec.theta_true.dtype
        np.testing.assert_array_equal(back.theta_true, rec.theta_true)
    for a, b in zip(rec.steps, back.steps):
        for key in ("design", "observation", "posterior", "posterior_source"):
            if key in a:
                assert b[key].dtype == a[key].dtype, key
                np.testing.assert_array_equal(b[key], a[key])
        assert b["eig"] == a["eig"] and b["eig_stderr"] == a["eig_stderr"]
        assert b["timings"] == a["timings"]


def _small_record(n=2):
    rec = RunRecord(design_dim=2, event_shape=(2, 2), source_shape=(2, 2), attrs={"seed": 0})
    rng = np.random.default_rng(0)
    for _ in range(n):
        rec.append(
            design=rng.normal(size=2).astype(np.float32),
            observation=np.float32(rng.normal()),
            eig=1.0,
            eig_stderr=0.1,
            posterior=rng.normal(size=(3, 2, 2)).astype(np.float32),
            posterior_source=rng.normal(size=(3, 2, 2)).astype(np.float32),
        )
    return rec


def test_dims_and_variables():
    ds = _small_record().to_dataset()
    assert ds["design"].dims == ("step", "design_dim")
    assert ds["observation"].dims == ("step",)
    assert ds["posterior"].dims == ("step", "sample", "event_0", "event_1")
    assert ds["posterior_source"].dims == ("step", "sample", "source_0", "source_1")
    assert {f"time_{p}" for p in PHASES} <= set(ds.data_vars)
    assert json.loads(ds.attrs["event_shape"]) == [2, 2]


def test_failed_write_leaves_the_old_record(tmp_path, monkeypatch):
    path = tmp_path / "run.nc"
    rec = _small_record(1)
    records.save(rec, path)
    before = path.read_bytes()
    rec = _small_record(2)

    def broken(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"partial")  # a write that dies half-way
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        records.save(rec, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.nc"]
    monkeypatch.undo()
    assert records.load(path).sizes["step"] == 1


def test_bad_values_give_clear_errors(tmp_path):
    rec = _small_record(1)
    with pytest.raises(ValueError, match=r"record design: expected shape \(2,\)"):
        rec.append(
            design=np.zeros(3, np.float32),
            observation=np.float32(0),
            eig=0,
            eig_stderr=0,
            posterior=np.zeros((3, 2, 2), np.float32),
            posterior_source=np.zeros((3, 2, 2), np.float32),
        )
    with pytest.raises(ValueError, match="every step must hold 3 samples"):
        rec.append(
            design=np.zeros(2, np.float32),
            observation=np.float32(0),
            eig=0,
            eig_stderr=0,
            posterior=np.zeros((4, 2, 2), np.float32),
            posterior_source=np.zeros((4, 2, 2), np.float32),
        )
    assert len(rec) == 1
    with pytest.raises(FileNotFoundError, match="no run record"):
        records.load(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_bytes(b"not netcdf")
    with pytest.raises(ValueError, match="not a readable netCDF"):
        records.load(tmp_path / "junk.nc")


def test_versions_name_the_packages():
    v = records.versions()
    assert {"python", "torch", "pyro-ppl", "botorch", "xarray"} <= set(v)
