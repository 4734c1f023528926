"""The sequential design loop: condition -> acquire -> simulate -> record, step after step.

Each step ``t``

1. **condition**: draws the belief ``theta | (design_s, y_s)_{s<t}`` with
   ``bed.condition(method=...)``, warm-started from step ``t-1``'s posterior (step 0 draws the
   prior exactly);
2. **acquire**: builds ``bed.qEIG`` on those draws and maximizes it with
   ``bed.optimize_design`` over the design space; the chosen design's EIG and standard error
   come from ``bed.eig.pce`` (or ``nmc``) with fresh samples;
3. **simulate**: calls the simulator (or instrument) at the design and validates the answer;
   with ``batch=q`` the step chooses ``q`` designs jointly (q-batch qEIG) and measures them
   as ``q`` independent tasks on the ``executor`` (see :mod:`bed.executor`: in this process,
   or as futures on a ``dask.distributed.Client``), results in order, a task that raises
   retried ``retries`` times;
4. **record**: appends the step to the run record and rewrites it atomically on disk
   (see :mod:`bed.records`).

Simulators and instruments are plain user code, told apart like this:

- ``bed.Simulator(fn)`` / a callable with two positional parameters ``fn(theta, design)``:
  a synthetic study. The loop knows the true theta: the ``theta_true`` you pass, or one drawn
  from the prior with the run's seed. ``fn`` may also take a keyword ``generator``.
- ``bed.Instrument(fn)`` / a callable with one positional parameter ``fn(design)``: a real
  measurement; theta is unknown and never recorded.

``design`` is a `(d,)` tensor, and the answer must have the likelihood's observation shape
(``()`` for a scalar) and be finite. A simulator that raises, returns NaN/inf or the wrong
shape, or a design outside the design space, stops the loop with a ``StepError`` naming the
step and the design; nothing of that step is recorded (earlier steps stay on disk).

Reproducibility: every random draw of step ``t`` comes from generators seeded by
``(seed, t, phase)`` (never from a running RNG; measurement ``j`` of a batch by
``(seed, t, "simulate", j)``, wherever its task runs), and each phase runs inside
``torch.random.fork_rng`` seeded the same way, so a run resumed from its record reproduces the
designs of an uninterrupted run, and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from bed import records
from bed.conditioning import condition
from bed.conditioning.base import Posterior
from bed.executor import Executor, TaskError, as_executor
from bed.experiment import Experiment

__all__ = ["Instrument", "SequentialDesign", "Simulator", "StepError", "as_simulator"]

_PHASE_KEYS = {"theta": 0, "condition": 1, "acquire": 2, "eig": 3, "simulate": 4}


class StepError(RuntimeError):
    """A design step failed; the message names the step and the design."""

    def __init__(self, step: int, design: Tensor | None, message: str) -> None:
        self.step = step
        self.design = None if design is None else design.detach().cpu().tolist()
        where = f"step {step}" + ("" if design is None else f", design {self.design}")
        super().__init__(f"{where}: {message}")


#: conditioning methods whose posteriors carry source-space draws (warm starts for the next step)
SOURCE_METHODS = ("ess", "nuts")


def _takes_generator(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class Simulator:
    """A synthetic-study simulator ``fn(theta, design[, generator=...]) -> y``.

    Args:
        fn: takes theta `(*event_shape)` and a design `(d,)` and returns y `(*obs_shape)`;
            if it has a ``generator`` parameter it gets a ``torch.Generator`` for its noise.
    """

    needs_theta = True

    def __init__(self, fn: Callable) -> None:
        if not callable(fn):
            raise TypeError(f"Simulator: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.takes_generator = _takes_generator(fn)

    def __call__(self, theta: Tensor | None, design: Tensor, generator: torch.Generator) -> Any:
        kw = {"generator": generator} if self.takes_generator else {}
        return self.fn(theta, design, **kw)

    def __repr__(self) -> str:
        return f"Simulator({self.fn!r})"


class Instrument:
    """A real instrument ``fn(design[, generator=...]) -> y``; theta is unknown.

    Args:
        fn: takes a design `(d,)` and returns the measurement `(*obs_shape)`.
    """

    needs_theta = False

    def __init__(self, fn: Callable) -> None:
        if not callable(fn):
            raise TypeError(f"Instrument: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.takes_generator = _takes_generator(fn)

    def __call__(self, theta: Tensor | None, design: Tensor, generator: torch.Generator) -> Any:
        kw = {"generator": generator} if self.takes_generator else {}
        return self.fn(design, **kw)

    def __repr__(self) -> str:
        return f"Instrument({self.fn!r})"


def as_simulator(fn: Callable | Simulator | Instrument) -> Simulator | Instrument:
    """Wrap a plain callable by its arity: two positional parameters -> ``Simulator``
    (``fn(theta, design)``), one -> ``Instrument`` (``fn(design)``)."""
    if isinstance(fn, (Simulator, Instrument)):
        return fn
    if not callable(fn):
        raise TypeError(f"simulator: expected a callable, got {type(fn).__name__}")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"simulator: cannot read the signature of {fn!r}; wrap it in bed.Simulator "
            "(fn(theta, design)) or bed.Instrument (fn(design))"
        ) from exc
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty
        and p.name != "generator"
    ]
    if len(positional) == 2:
        return Simulator(fn)
    if len(positional) == 1:
        return Instrument(fn)
    raise TypeError(
        f"simulator: {fn!r} takes {len(positional)} required positional arguments; expected "
        "simulate(theta, design) or measure(design), or wrap it in bed.Simulator / "
        "bed.Instrument"
    )


def _seed(seed: int, step: int, phase: str, index: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, step, phase[, index])`` (independent streams)."""
    key = (int(step), _PHASE_KEYS[phase]) + ((int(index),) if index else ())
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=key)
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class _Seeded:
    """Context: the global torch RNG forked and seeded with ``s`` (and restored on exit)."""

    def __init__(self, s: int, device: torch.device) -> None:
        devices = [device] if device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices)
        self.s = s

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.s)

    def __exit__(self, *exc) -> None:
        self.fork.__exit__(*exc)


def _simulate_task(
    simulator: Simulator | Instrument, theta: Tensor | None, design: Tensor, seed: int, device: str
) -> Any:
    """One measurement, run wherever the executor puts it: ``simulator(theta, design)`` with a
    generator and the global RNG seeded by ``seed`` on ``device``; a tensor answer comes back on
    the CPU."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with _Seeded(seed, dev):
        y = simulator(None if theta is None else theta.to(dev), design.to(dev), gen)
    return y.detach().cpu() if isinstance(y, Tensor) else y


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class SequentialDesign:
    """Greedy sequential Bayesian experimental design with a generative prior.

    Args:
        exp: the ``bed.Experiment``.
        simulator: ``simulate(theta, design) -> y`` (synthetic) or ``measure(design) -> y``
            (an instrument), plain or wrapped in ``bed.Simulator`` / ``bed.Instrument``.
        method: the conditioning method (``bed.condition``'s ``method``).
        acquisition: the EIG estimator inside ``qEIG``: ``"pce"``, ``"nmc"`` or ``"gaussian"``
            (``bed.eig.gaussian``, for very informative measurements).
        num_samples: posterior draws per step (recorded, and the outer samples of qEIG).
        num_inner: contrastive (inner) samples of qEIG and of the chosen design's EIG
            (at most ``num_samples - 1``, the default).
        seed: the run's seed; step ``t`` draws from generators seeded by ``(seed, t)``.
        device: where the computation runs (``"cpu"``, ``"cuda"``).
        record: path of the netCDF record, rewritten after every step; ``None`` keeps it in
            memory only. A fresh run refuses an existing file unless ``overwrite``.
        theta_true: `(*event_shape)` the true theta of a synthetic run; ``None`` draws it from
            the prior with the seed. Must be ``None`` for an instrument.
        condition_options: extra keywords for ``bed.condition`` (``num_chains``, ``warmup``,
            ``thin``, method options).
        optimize_options: extra keywords for ``bed.optimize_design`` (``num_restarts``,
            ``raw_samples``, ...).
        problem: the ``bed.problems.Problem`` the experiment came from (its name and options
            go into the record so ``resume`` can rebuild it), or ``None``.
        dtype: floating dtype of the run (default: the prior's).
        overwrite: allow a fresh run to replace an existing record file.
        batch: ``q``, designs chosen jointly and measured per step (``optimize_design(q=q)``);
            the record gets a ``batch`` dim (see :mod:`bed.records`).
        executor: where measurements (and the GP route's EIG estimates) run: ``None`` (here,
            serially), a ``dask.distributed.Client`` or a ``bed.executor.Executor``.
        retries: reruns of a measurement that raised before the step fails (for ``None`` or a
            ``Client``; an ``Executor`` brings its own).

    Example:
        >>> import bed, bed.problems
        >>> p = bed.problems.get("location-finding", prior="gaussian")
        >>> sd = bed.SequentialDesign(p.experiment, p.simulator, num_samples=64, problem=p)
        >>> ds = sd.run(2, progress=False)  # doctest: +SKIP
    """

    def __init__(
        self,
        exp: Experiment,
        simulator: Callable | Simulator | Instrument,
        method: str = "ess",
        acquisition: str = "pce",
        num_samples: int = 256,
        num_inner: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        record: str | Path | None = None,
        theta_true: Tensor | None = None,
        condition_options: dict[str, Any] | None = None,
        optimize_options: dict[str, Any] | None = None,
        problem: Any = None,
        dtype: torch.dtype | None = None,
        overwrite: bool = False,
        batch: int = 1,
        executor: Any = None,
        retries: int = 0,
        _record: records.RunRecord | None = None,
    ) -> None:
        if acquisition not in ("pce", "nmc", "gaussian"):
            raise ValueError(
                f"acquisition: expected 'pce', 'nmc' or 'gaussian', got {acquisition!r}"
            )
        if int(batch) < 1:
            raise ValueError(f"batch: expected q >= 1 designs per step, got {batch}")
        self.batch = int(batch)
        self.executor: Executor = as_executor(executor, retries)
        self.device = torch.device(device)
        self.exp = exp.to(device=self.device, dtype=dtype)
        self.simulator = as_simulator(simulator)
        self.method = method
        self.acquisition = acquisition
        self.num_samples = int(num_samples)
        self.num_inner = None if num_inner is None else int(num_inner)
        self.seed = int(seed)
        self.condition_options = dict(condition_options or {})
        self.optimize_options = dict(optimize_options or {})
        self.problem_name = getattr(problem, "name", problem if isinstance(problem, str) else None)
        self.problem_options = dict(getattr(problem, "options", {}) or {})
        self.path = None if record is None else Path(record)
        ref = self._reference()
        self.dtype = ref.dtype

        if self.simulator.needs_theta:
            if theta_true is None:
                theta_true = self._draw_theta_true()
            theta_true = torch.as_tensor(theta_true).to(ref)
            self.exp.check_theta(theta_true, "theta_true")
            if theta_true.shape != self.exp.event_shape:
                raise ValueError(
                    f"theta_true: expected shape {tuple(self.exp.event_shape)}, "
                    f"got {tuple(theta_true.shape)}"
                )
        elif theta_true is not None:
            raise ValueError("theta_true: an Instrument measures an unknown theta; pass None")
        self.theta_true = theta_true
        with _Seeded(_seed(self.seed, 0, "theta"), self.device):
            self.obs_shape = tuple(self.exp.observation_shape())

        if _record is not None:
            if _record.batch != self.batch:
                raise ValueError(
                    f"batch: the record holds {_record.batch} designs per step, got {self.batch}"
                )
            self.record = _record
        else:
            if self.path is not None and self.path.exists() and not overwrite:
                raise FileExistsError(
                    f"record {self.path} exists; continue it with "
                    "SequentialDesign.resume(path, simulator), or pass overwrite=True"
                )
            source_shape = getattr(self.exp.prior, "source_event_shape", None)
            if method not in SOURCE_METHODS and not getattr(self.exp.prior, "has_pull", False):
                source_shape = None  # no source draws to record (e.g. irsde, fbs, dps, smc)
            self.record = records.RunRecord(
                design_dim=self.exp.design_dim,
                event_shape=self.exp.event_shape,
                obs_shape=self.obs_shape,
                source_shape=None if source_shape is None else tuple(source_shape),
                theta_true=theta_true,
                attrs=self._attrs(),
                batch=self.batch,
            )
            if self.path is not None:
                records.save(self.record, self.path)
        self._posterior = self._last_posterior()
        self.last_timings: dict[str, float] = {}
        self.last_posterior: Posterior | None = None

    # ------------------------------------------------------------------ configuration
    def _reference(self) -> Tensor:
        prior = self.exp.prior
        if hasattr(prior, "dtype") and hasattr(prior, "device"):
            return torch.zeros((), device=prior.device, dtype=prior.dtype)
        return torch.zeros((), device=self.device)

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration, as stored (JSON) in the record's ``config`` attribute."""
        return _jsonable(
            {
                "problem": self.problem_name,
                "problem_options": self.problem_options,
                "method": self.method,
                "acquisition": self.acquisition,
                "num_samples": self.num_samples,
                "num_inner": self.num_inner,
                "batch": self.batch,
                "seed": self.seed,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "condition_options": self.condition_options,
                "optimize_options": self.optimize_options,
                "simulator": type(self.simulator).__name__,
                "design_bounds": (
                    self.exp.design_space.bounds.tolist()
                    if hasattr(self.exp.design_space, "bounds")
                    else None
                ),
            }
        )

    def _attrs(self) -> dict[str, Any]:
        return {
            "problem": self.problem_name or self.exp.name,
            "method": self.method,
            "seed": self.seed,
            "config": json.dumps(self.config),
            "versions": json.dumps(records.versions()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _generator(self, step: int, phase: str) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_seed(self.seed, step, phase))

    def _draw_theta_true(self) -> Tensor:
        prior = self.exp.prior
        gen = self._generator(0, "theta")
        with _Seeded(_seed(self.seed, 0, "theta"), self.device):
            if hasattr(prior, "sample_with_generator"):
                return prior.sample_with_generator((), gen)
            return prior.sample()

    def _last_posterior(self) -> Posterior | None:
        """The warm start for the next step: the last recorded posterior, as recorded."""
        if not len(self.record):
            return None
        last = self.record.steps[-1]
        ref = self._reference()
        samples = torch.from_numpy(last["posterior"]).to(ref.device)
        source = last.get("posterior_source")
        source = None if source is None else torch.from_numpy(source).to(ref.device)
        return Posterior(samples=samples, source=source, method=self.method)

    # ------------------------------------------------------------------ data so far
    @property
    def num_steps(self) -> int:
        """Steps recorded so far."""
        return len(self.record)

    def designs(self) -> Tensor:
        """`(n, d)` designs measured so far."""
        return self.record.designs(self._reference())

    def observations(self) -> Tensor:
        """`(n, *obs_shape)` observations so far."""
        return self.record.observations(self._reference())

    @property
    def dataset(self) -> xr.Dataset:
        """The run record as an ``xarray.Dataset``."""
        return self.record.to_dataset()

    # ------------------------------------------------------------------ the phases
    def _condition(self, t: int) -> Posterior:
        prior = self.exp.prior
        gen = self._generator(t, "condition")
        with _Seeded(_seed(self.seed, t, "condition"), self.device):
            if t == 0 and hasattr(prior, "push") and hasattr(prior, "source_event_shape"):
                # No data yet: the belief is the prior; draw it exactly in source space.
                ref = self._reference()
                z = torch.randn(
                    (self.num_samples, *prior.source_event_shape),
                    generator=gen,
                    device=ref.device,
                    dtype=ref.dtype,
                )
                with torch.no_grad():
                    return Posterior(samples=prior.push(z), source=z, method="prior")
            return condition(
                self.exp,
                self.designs(),
                self.observations(),
                method=self.method,
                num_samples=self.num_samples,
                init=self._posterior,
                generator=gen,
                **self.condition_options,
            )

    def _acquire(self, t: int, theta: Tensor) -> tuple[Tensor, float, float]:
        """The step's design: `(d,)`, or `(q, d)` for a batch; its EIG and standard error."""
        from bed.acquisition import qEIG
        from bed.optimize import optimize_design

        with _Seeded(_seed(self.seed, t, "acquire"), self.device):
            acq = qEIG(
                self.exp,
                theta,
                num_inner=self.num_inner,
                estimator=self.acquisition,
                seed=_seed(self.seed, t, "acquire") % 2**31,  # qEIG multiplies it by ~1e6
            )
            with warnings.catch_warnings():
                # L-BFGS-B sometimes stops ABNORMAL on a peaked EIG surface; BoTorch then warns
                # and retries from new starts by itself, so the warning carries no news.
                warnings.filterwarnings("ignore", "Optimization failed", RuntimeWarning)
                opts = dict(self.optimize_options)
                if opts.get("surrogate") == "gp":
                    opts.setdefault("executor", self.executor)
                design = optimize_design(acq, self.exp.design_space, q=self.batch, **opts)
        design = self._shaped(design.detach().to(theta))  # (d,) or (q, d)
        eig, se = self._eig_of(t, design, theta)
        return design, eig, se

    def _shaped(self, design: Tensor) -> Tensor:
        """A step's design as stored: `(d,)` for ``q = 1``, `(q, d)` for a batch."""
        return design.reshape(-1) if self.batch == 1 else design.reshape(self.batch, -1)

    def _simulate(self, t: int, design: Tensor) -> Tensor:
        """Measure the step's `(d,)` or `(q, d)` design(s) on the executor, in order."""
        designs = design.reshape(self.batch, -1)  # (q, d)
        theta = None if self.theta_true is None else self.theta_true.detach().cpu()
        tasks = [
            (self.simulator, theta, xi.cpu(), _seed(self.seed, t, "simulate", j), str(self.device))
            for j, xi in enumerate(designs)
        ]
        try:
            answers = self.executor.map(_simulate_task, tasks, name=f"bed-simulate-{t}")
        except TaskError as err:
            exc = err.cause
            again = f" (after {err.attempts} attempts)" if err.attempts > 1 else ""
            raise StepError(
                t, designs[err.index], f"the simulator raised {type(exc).__name__}: {exc}{again}"
            ) from exc
        ys = [self._check_observation(t, xi, y) for xi, y in zip(designs, answers)]
        return ys[0] if self.batch == 1 else torch.stack(ys)  # (*obs) or (q, *obs)

    def _check_observation(self, t: int, design: Tensor, y: Any) -> Tensor:
        if y is None:
            raise StepError(t, design, "the simulator returned None")
        try:
            y = torch.as_tensor(y)
        except Exception as exc:
            raise StepError(
                t, design, f"the simulator returned {type(y).__name__}, not a tensor"
            ) from exc
        if tuple(y.shape) != self.obs_shape:
            raise StepError(
                t,
                design,
                f"the simulator returned an observation of shape {tuple(y.shape)}; the "
                f"likelihood expects shape {self.obs_shape}",
            )
        if not y.is_floating_point() and not y.is_complex():
            y = y.to(self.dtype)
        if not torch.isfinite(y).all():
            raise StepError(t, design, f"the simulator returned a non-finite observation {y}")
        return y.detach().to(self._reference())

    # ------------------------------------------------------------------ step and run
    def step(self, design: Tensor | None = None) -> dict[str, Any]:
        """Run one design step and record it.

        Args:
            design: a `(d,)` design (`(q, d)` with ``batch=q``) to measure instead of the
                EIG-optimal one (its EIG is still estimated), or ``None``.

        Returns:
            a dict with ``step``, ``design`` `(d,)` or `(q, d)`, ``observation`` (`(q, *obs)`
            for a batch), ``eig``, ``eig_stderr`` and ``timings`` (seconds per phase).

        Raises:
            StepError: the simulator raised or returned a non-finite or misshapen value, or the
                design lies outside the design space; the record is left as it was.
        """
        t = self.num_steps
        timings = {}
        t0 = time.perf_counter()
        post = self._condition(t)
        timings["condition"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        theta = post.samples.detach()
        if design is None:
            design, eig, se = self._acquire(t, theta)
        else:
            design = torch.as_tensor(design).to(theta)
            if design.numel() == self.batch * self.exp.design_dim:
                design = self._shaped(design)
            self._check_design(t, design)
            eig, se = self._eig_of(t, design, theta)
        timings["acquire"] = time.perf_counter() - t0
        self._check_design(t, design)

        t0 = time.perf_counter()
        y = self._simulate(t, design)
        timings["simulate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        provisional = self.last_timings.get("record", 0.0)
        self.record.append(
            design=design,
            observation=y,
            eig=eig,
            eig_stderr=se,
            posterior=theta,
            posterior_source=(
                None if self.record.source_shape is None else self._source_of(t, post, theta)
            ),
            timings={**timings, "record": provisional},
        )
        if self.path is not None:
            try:
                records.save(self.record, self.path)
            except BaseException:
                self.record.steps.pop()
                raise
        timings["record"] = time.perf_counter() - t0
        self.record.set_timing(t, "record", timings["record"])
        self._posterior = self._last_posterior()
        self.last_posterior = post
        self.last_timings = timings
        return {
            "step": t,
            "design": design,
            "observation": y,
            "eig": eig,
            "eig_stderr": se,
            "timings": timings,
        }

    def _source_of(self, t: int, post: Posterior, theta: Tensor) -> Tensor:
        if post.source is not None:
            return post.source.detach().reshape(theta.shape[0], *self.record.source_shape)
        prior = self.exp.prior
        if getattr(prior, "has_pull", False):
            with torch.no_grad():
                return prior.pull(theta).reshape(theta.shape[0], *self.record.source_shape)
        raise StepError(
            t, None, f"method {self.method!r} returned no source draws and the prior has no pull"
        )

    def _check_design(self, t: int, design: Tensor) -> None:
        want = (self.exp.design_dim,) if self.batch == 1 else (self.batch, self.exp.design_dim)
        if design.shape != want:
            raise StepError(
                t, design, f"expected a design of shape {want}, got {tuple(design.shape)}"
            )
        try:
            self.exp.design_space.check(design.reshape(-1, self.exp.design_dim), "design")
        except ValueError as exc:
            raise StepError(t, design, str(exc)) from exc

    def _eig_of(self, t: int, design: Tensor, theta: Tensor) -> tuple[float, float]:
        import bed.eig

        with _Seeded(_seed(self.seed, t, "eig"), self.device), torch.no_grad():
            est, se = getattr(bed.eig, self.acquisition)(
                self.exp,
                design.reshape(1, self.batch, -1),  # (b=1, q, d): the joint EIG
                theta,
                num_inner=self.num_inner,
                # bed.eig draws index subsets on the CPU, so its generator lives there
                generator=torch.Generator().manual_seed(_seed(self.seed, t, "eig")),
            )
        return float(est[0]), float(se[0])

    def run(
        self, steps: int | None = None, *, until: int | None = None, progress: bool = True
    ) -> xr.Dataset:
        """Run ``steps`` more steps (or until the record holds ``until`` steps).

        Args:
            steps: how many steps to add.
            until: the total number of steps to reach instead (e.g. the horizon after
                ``resume``).
            progress: show a tqdm bar with the step, the EIG of the chosen design and the
                seconds per phase.

        Returns:
            the run record (an ``xarray.Dataset``).
        """
        if (steps is None) == (until is None):
            raise ValueError("run: give exactly one of steps and until")
        todo = steps if steps is not None else max(0, until - self.num_steps)
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, disable=not progress, desc="bed", unit="step")
        try:
            for _ in range(todo):
                out = self.step()
                tm = out["timings"]
                bar.set_postfix(
                    step=out["step"],
                    eig=f"{out['eig']:.3f}",
                    cond=f"{tm['condition']:.2f}s",
                    acq=f"{tm['acquire']:.2f}s",
                    sim=f"{tm['simulate']:.2f}s",
                    rec=f"{tm['record']:.2f}s",
                )
                bar.update()
        finally:
            bar.close()
        if todo and self.path is not None:
            records.save(self.record, self.path)  # stores the last step's own record time
        return self.dataset

    @classmethod
    def from_problem(cls, problem, **kwargs) -> SequentialDesign:
        """A loop on a ``bed.problems.Problem`` with its tuned ``loop_defaults``.

        Args:
            problem: a ``Problem`` or a registered name (built with default options).
            **kwargs: anything ``SequentialDesign`` takes; overrides the problem's defaults
                (``condition_options`` and ``optimize_options`` are merged key by key; a
                ``method`` other than the problem's drops its tuned ``condition_options``).
                Without ``theta_true``, a problem with ``draw_truth`` (e.g. a held-out
                image) supplies it from the seed.
        """
        if isinstance(problem, str):
            import bed.problems

            problem = bed.problems.get(problem)
        kw = {k: v for k, v in problem.loop_defaults.items()}
        if kwargs.get("method", kw.get("method", "ess")) != kw.get("method", "ess"):
            kw.pop("condition_options", None)  # tuned for the problem's own method
        for key in ("condition_options", "optimize_options"):
            kw[key] = {**kw.get(key, {}), **(kwargs.pop(key, None) or {})}
        kw.update(kwargs)
        simulator = kw.pop("simulator", problem.simulator)
        draw_truth = getattr(problem, "draw_truth", None)
        if (
            kw.get("theta_true") is None
            and draw_truth is not None
            and simulator is problem.simulator
        ):
            seed = int(kw.get("seed", 0))
            kw["theta_true"] = draw_truth(torch.Generator().manual_seed(_seed(seed, 0, "theta")))
        return cls(problem.experiment, simulator, problem=problem, **kw)

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(
        cls,
        path: str | Path,
        simulator: Callable | Simulator | Instrument | None = None,
        exp: Experiment | None = None,
        **overrides,
    ) -> SequentialDesign:
        """Continue the run recorded at ``path``.

        The configuration (method, seed, sample counts, options) comes from the record;
        ``overrides`` replace entries of it (changing ``seed`` or ``method`` breaks the
        reproduction of an uninterrupted run). Without ``exp`` the experiment is rebuilt from
        the recorded problem name and options (``bed.problems.get``); without ``simulator``,
        that problem's simulator is used.

        Returns:
            a ``SequentialDesign`` whose next ``step`` is the first unrecorded one.
        """
        path = Path(path)
        rec = records.RunRecord.from_dataset(records.load(path))
        cfg = rec.config()
        problem = None
        if cfg.get("problem") is not None:
            import bed.problems

            if exp is None or simulator is None:
                problem = bed.problems.get(cfg["problem"], **cfg.get("problem_options", {}))
            else:
                problem = _NamedProblem(cfg["problem"], cfg.get("problem_options", {}))
        if exp is None:
            if problem is None:
                raise ValueError(
                    f"resume: {path} names no registered problem; pass exp= (and simulator=)"
                )
            exp = problem.experiment
        if simulator is None:
            if problem is None or not hasattr(problem, "simulator"):
                raise ValueError(f"resume: {path} names no registered problem; pass simulator=")
            simulator = problem.simulator
        kw = {
            "method": cfg["method"],
            "acquisition": cfg["acquisition"],
            "num_samples": cfg["num_samples"],
            "num_inner": cfg["num_inner"],
            "batch": cfg.get("batch", 1),
            "seed": cfg["seed"],
            "device": cfg["device"],
            "dtype": getattr(torch, cfg.get("dtype", "float32")),
            "condition_options": cfg.get("condition_options") or {},
            "optimize_options": cfg.get("optimize_options") or {},
        }
        kw.update(overrides)
        theta_true = None if rec.theta_true is None else torch.from_numpy(rec.theta_true)
        return cls(
            exp,
            simulator,
            record=path,
            theta_true=theta_true,
            problem=problem,
            _record=rec,
            **kw,
        )

    def __repr__(self) -> str:
        return (
            f"SequentialDesign({self.exp.name!r}, method={self.method!r}, "
            f"steps={self.num_steps}, seed={self.seed}, record={self.path})"
        )


class _NamedProblem:
    def __init__(self, name: str, options: dict) -> None:
        self.name, self.options = name, options
