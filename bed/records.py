"""The record of a sequential design run: one ``xarray.Dataset``, saved to netCDF after each step.

Layout (``S`` posterior samples per step, ``d`` design dimensions):

==================  ==========================================  =================================
variable            dims                                        meaning
==================  ==========================================  =================================
``design``          ``(step, design_dim)``                      the design measured at each step
                    ``(step, batch, design_dim)`` if ``q > 1``  (the step's ``q`` joint designs)
``observation``     ``(step, *obs_dims)``                       what the simulator returned
                    ``(step, batch, *obs_dims)`` if ``q > 1``
``eig``             ``(step,)``                                 EIG estimate of the chosen design
                                                                (of the ``q`` designs jointly)
``eig_stderr``      ``(step,)``                                 its Monte Carlo standard error
``posterior``       ``(step, sample, *event_dims)``             belief *before* the step's
                                                                measurement (conditioned on
                                                                steps ``< step``)
``posterior_source`` ``(step, sample, *source_dims)``           the same draws in source space
                                                                (when the sampler has one)
``theta_true``      ``(*event_dims)``                           the true theta (synthetic runs)
``time_<phase>``    ``(step,)``                                 wall seconds per phase:
                                                                condition, acquire, simulate,
                                                                record
==================  ==========================================  =================================

Batch sequential design (``q = batch > 1`` measurements per step, attribute ``batch``) adds a
``batch`` dim to ``design`` and ``observation`` only: posterior, EIG and timings stay per step.
``RunRecord.designs()`` / ``observations()`` flatten it (measurement ``j`` of step ``t`` is row
``t q + j``), so code that reads the data as a list of measurements needs no change; a record
with ``q = 1`` has no ``batch`` dim and is laid out exactly as before.

Event dims are named ``event_0, event_1, ...``, observation dims ``obs_0, ...``, source dims
``source_0, ...``. Attributes: ``problem``, ``method``, ``seed``, ``config`` (JSON), ``versions``
(JSON) and anything else the caller passes.

Writes are atomic: the dataset goes to a temporary file in the same directory, is flushed to
disk, then renamed over the old record (``os.replace``), so a crash or a kill leaves either the
previous record or the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

__all__ = ["PHASES", "RunRecord", "load", "save", "versions"]

PHASES = ("condition", "acquire", "simulate", "record")
_FLOATS = (np.float32, np.float64)


def _names(prefix: str, shape: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}_{i}" for i in range(len(shape)))


def _numpy(x, site: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype not in _FLOATS:
        raise TypeError(f"record {site}: expected float32 or float64 values, got {x.dtype}")
    return x


def versions() -> dict[str, str]:
    """Versions of Python and the packages a record depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("bed", "torch", "pyro-ppl", "botorch", "numpy", "xarray", "h5netcdf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class RunRecord:
    """The in-memory record of a run; ``to_dataset`` turns it into the ``xarray.Dataset``.

    Args:
        design_dim: the design dimension ``d``.
        event_shape: the shape of one theta.
        obs_shape: the shape of one observation (``()`` for a scalar).
        source_shape: the shape of one source draw, or ``None`` if posteriors carry none.
        theta_true: `(*event_shape)` true theta of a synthetic run, or ``None``.
        attrs: dataset attributes; dicts and lists are stored as JSON strings.
        batch: ``q``, measurements per step (``> 1`` adds the ``batch`` dim).
    """

    def __init__(
        self,
        *,
        design_dim: int,
        event_shape: Sequence[int],
        obs_shape: Sequence[int] = (),
        source_shape: Sequence[int] | None = None,
        theta_true: Tensor | np.ndarray | None = None,
        attrs: dict[str, Any] | None = None,
        batch: int = 1,
    ) -> None:
        if int(batch) < 1:
            raise ValueError(f"record batch: expected q >= 1 measurements per step, got {batch}")
        self.batch = int(batch)
        self.design_dim = int(design_dim)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.source_shape = None if source_shape is None else tuple(int(s) for s in source_shape)
        self.theta_true = None
        if theta_true is not None:
            self.theta_true = _numpy(theta_true, "theta_true")
            self._check("theta_true", self.theta_true, self.event_shape)
        self.attrs = dict(attrs or {})
        self.steps: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.steps)

    @staticmethod
    def _check(site: str, x: np.ndarray, shape: tuple[int, ...]) -> None:
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"record {site}: expected shape {tuple(shape)}, got {x.shape}")

    def append(
        self,
        *,
        design,
        observation,
        eig: float,
        eig_stderr: float,
        posterior,
        posterior_source=None,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Add one step.

        Args:
            design: `(d,)` the design measured (`(q, d)` for a batch record).
            observation: `(*obs_shape)` the measurement (`(q, *obs_shape)` for a batch).
            eig: EIG estimate of the design; eig_stderr: its standard error.
            posterior: `(S, *event_shape)` belief samples the design was chosen with.
            posterior_source: `(S, *source_shape)` the same draws in source space, or None.
            timings: seconds per phase (keys from ``PHASES``; missing ones are 0).
        """
        step = {
            "design": _numpy(design, "design"),
            "observation": _numpy(observation, "observation"),
            "posterior": _numpy(posterior, "posterior"),
            "eig": float(eig),
            "eig_stderr": float(eig_stderr),
            "timings": {p: float((timings or {}).get(p, 0.0)) for p in PHASES},
        }
        self._check("design", step["design"], self._lead + (self.design_dim,))
        self._check("observation", step["observation"], self._lead + self.obs_shape)
        num = step["posterior"].shape[0] if step["posterior"].ndim else 0
        self._check("posterior", step["posterior"], (num, *self.event_shape))
        if self.steps and num != self.steps[0]["posterior"].shape[0]:
            raise ValueError(
                f"record posterior: every step must hold {self.steps[0]['posterior'].shape[0]} "
                f"samples, got {num}"
            )
        if (posterior_source is None) != (self.source_shape is None):
            raise ValueError(
                "record posterior_source: give it exactly when the record has a source_shape "
                f"(source_shape={self.source_shape})"
            )
        if posterior_source is not None:
            step["posterior_source"] = _numpy(posterior_source, "posterior_source")
            self._check("posterior_source", step["posterior_source"], (num, *self.source_shape))
        self.steps.append(step)

    @property
    def _lead(self) -> tuple[int, ...]:
        return (self.batch,) if self.batch > 1 else ()

    def set_timing(self, step: int, phase: str, seconds: float) -> None:
        self.steps[step]["timings"][phase] = float(seconds)

    # ----------------------------------------------------------------- dataset round trip
    def to_dataset(self) -> xr.Dataset:
        n = len(self.steps)
        ev, ob = _names("event", self.event_shape), _names("obs", self.obs_shape)
        bd = ("batch",) if self.batch > 1 else ()

        num = self.steps[0]["posterior"].shape[0] if n else 0
        data = {
            "design": (
                ("step", *bd, "design_dim"),
                self._stack("design", self._lead + (self.design_dim,)),
            ),
            "observation": (
                ("step", *bd, *ob),
                self._stack("observation", self._lead + self.obs_shape),
            ),
            "eig": (("step",), np.array([s["eig"] for s in self.steps], dtype=np.float64)),
            "eig_stderr": (
                ("step",),
                np.array([s["eig_stderr"] for s in self.steps], dtype=np.float64),
            ),
            "posterior": (
                ("step", "sample", *ev),
                self._stack("posterior", (num, *self.event_shape)),
            ),
        }
        if self.source_shape is not None:
            src = _names("source", self.source_shape)
            data["posterior_source"] = (
                ("step", "sample", *src),
                self._stack("posterior_source", (num, *self.source_shape)),
            )
        if self.theta_true is not None:
            data["theta_true"] = (ev, self.theta_true)
        for p in PHASES:
            data[f"time_{p}"] = (
                ("step",),
                np.array([s["timings"][p] for s in self.steps], dtype=np.float64),
            )
        attrs = {
            k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v)
            for k, v in self.attrs.items()
        }
        attrs["design_dim"] = self.design_dim
        if self.batch > 1:
            attrs["batch"] = self.batch
        attrs["event_shape"] = json.dumps(self.event_shape)
        attrs["obs_shape"] = json.dumps(self.obs_shape)
        attrs["source_shape"] = json.dumps(self.source_shape)
        return xr.Dataset(data, coords={"step": np.arange(n)}, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> RunRecord:
        """Rebuild the in-memory record from a dataset written by ``to_dataset``."""
        missing = [k for k in ("design", "observation", "posterior", "eig") if k not in ds]
        if missing or "event_shape" not in ds.attrs:
            raise ValueError(f"not a bed run record: missing {missing or ['event_shape attr']}")
        attrs = dict(ds.attrs)
        source_shape = json.loads(attrs.pop("source_shape"))
        record = cls(
            design_dim=int(attrs.pop("design_dim")),
            event_shape=json.loads(attrs.pop("event_shape")),
            obs_shape=json.loads(attrs.pop("obs_shape")),
            source_shape=source_shape,
            theta_true=ds["theta_true"].values if "theta_true" in ds else None,
            attrs=attrs,
            batch=int(attrs.pop("batch", 1)),
        )
        for t in range(ds.sizes["step"]):
            record.append(
                design=ds["design"].values[t],
                observation=ds["observation"].values[t],
                eig=float(ds["eig"].values[t]),
                eig_stderr=float(ds["eig_stderr"].values[t]),
                posterior=ds["posterior"].values[t],
                posterior_source=(
                    ds["posterior_source"].values[t] if source_shape is not None else None
                ),
                timings={p: float(ds[f"time_{p}"].values[t]) for p in PHASES},
            )
        return record

    # ----------------------------------------------------------------- tensors for the loop
    def designs(self, like: Tensor | None = None) -> Tensor:
        """`(n, d)` designs so far (``n`` = steps times ``q``), on ``like``'s device and dtype."""
        x = torch.from_numpy(self._stack("design", self._lead + (self.design_dim,)))
        x = x.reshape(-1, self.design_dim)  # (T, q, d) -> (T q, d)
        return x if like is None else x.to(like)

    def observations(self, like: Tensor | None = None) -> Tensor:
        """`(n, *obs_shape)` observations so far (``n`` = steps times ``q``)."""
        x = torch.from_numpy(self._stack("observation", self._lead + self.obs_shape))
        x = x.reshape(-1, *self.obs_shape)  # (T, q, *obs) -> (T q, *obs)
        return x if like is None else x.to(like)

    def _stack(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if self.steps:
            return np.stack([s[key] for s in self.steps])
        return np.zeros((0, *shape), dtype=np.float32)

    def config(self) -> dict[str, Any]:
        """The run's configuration (the ``config`` attribute, parsed)."""
        cfg = self.attrs.get("config", "{}")
        return json.loads(cfg) if isinstance(cfg, str) else dict(cfg)


def save(ds: xr.Dataset | RunRecord, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (netCDF, h5netcdf engine) atomically; return the path.

    The data goes to a temporary file next to ``path``, is fsync'ed, then renamed over ``path``.
    """
    if isinstance(ds, RunRecord):
        ds = ds.to_dataset()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a record into memory (the file is closed on return).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not a bed run record.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run record at {path}")
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except Exception as exc:  # h5py/h5netcdf raise many types for a broken file
        raise ValueError(f"{path} is not a readable netCDF run record: {exc}") from exc
    if "design" not in ds or "event_shape" not in ds.attrs:
        raise ValueError(f"{path} is not a bed run record (no 'design' variable)")
    return ds
