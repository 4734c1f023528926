"""The shared pieces of every conditioning method: the ``Posterior``, the ``Problem`` a method
receives, the method registry, and the source-space view of a posterior.

A method is a function ``run(problem, **options) -> Posterior`` registered under a name with
:func:`register`; :func:`bed.condition` validates the data, builds the :class:`Problem` and
dispatches. MCMC methods hand a kernel (an ``init``/``step`` pair, see
:mod:`bed.conditioning.runner`) to the shared chain loop.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bed.experiment import Experiment

__all__ = [
    "Posterior",
    "Problem",
    "SourceLogLikelihood",
    "available_methods",
    "get_method",
    "register",
    "require_push",
]


@dataclass
class Posterior:
    """Posterior draws and how they were obtained.

    Attributes:
        samples: `num_samples x *event_shape` draws of theta (unweighted).
        source: `num_samples x *source_event_shape` source variables ``z`` with
            ``samples = prior.push(source)``, set by source-space methods (``"ess"``,
            ``"nuts"``, ``"exact"`` for a Gaussian prior); ``None`` otherwise. The sequential
            loop warm-starts the next ``condition`` call from it.
        diagnostics: a dict of floats, ints and small tensors (bulk ESS, R-hat, likelihood
            evaluations, wall time, ...); each method documents its keys.
        method: the method name.
    """

    samples: Tensor
    source: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    method: str = ""

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    def to_xarray(self):
        """An ``xarray.Dataset`` with variable ``theta`` (dims ``sample, theta_dim_0, ...``),
        ``source`` (dims ``sample, source_dim_0, ...``) when set, and scalar diagnostics as
        attributes (tensor-valued diagnostics become variables ``diag_<key>``)."""
        import xarray as xr

        def dims(prefix: str, t: Tensor) -> list[str]:
            return ["sample"] + [f"{prefix}_dim_{i}" for i in range(t.dim() - 1)]

        data = {"theta": (dims("theta", self.samples), self.samples.detach().cpu().numpy())}
        if self.source is not None:
            data["source"] = (dims("source", self.source), self.source.detach().cpu().numpy())
        attrs: dict[str, Any] = {"method": self.method}
        for key, value in self.diagnostics.items():
            if isinstance(value, Tensor) and value.numel() > 1:
                arr = value.detach().cpu().numpy()
                data[f"diag_{key}"] = ([f"diag_{key}_dim_{i}" for i in range(arr.ndim)], arr)
            elif isinstance(value, Tensor):
                attrs[key] = float(value)
            elif isinstance(value, (bool, int, float, str)):
                attrs[key] = int(value) if isinstance(value, bool) else value
        return xr.Dataset(data, attrs=attrs)

    def __repr__(self) -> str:
        src = None if self.source is None else tuple(self.source.shape)
        return (
            f"Posterior(method={self.method!r}, samples={tuple(self.samples.shape)}, "
            f"source={src}, diagnostics={sorted(self.diagnostics)})"
        )


@dataclass
class Problem:
    """Everything a method needs, validated by :func:`bed.condition`.

    Attributes:
        exp: the experiment (prior, likelihood, design space).
        designs: `n x d` designs on the prior's device and dtype.
        observations: `n x *obs_shape` observations, same device and dtype.
        num_samples: how many draws to return.
        num_chains: chains (or particles) requested, ``None`` for the method's default.
        warmup: warm-up iterations requested, ``None`` for the method's default.
        thin: keep every ``thin``-th iteration after warm-up.
        init: warm start (a ``Posterior`` or a theta tensor) or ``None``.
        generator: the ``torch.Generator`` all randomness comes from.
        progress: show a progress bar.
    """

    exp: Experiment
    designs: Tensor
    observations: Tensor
    num_samples: int
    num_chains: int | None
    warmup: int | None
    thin: int
    init: Any
    generator: torch.Generator
    progress: bool

    @property
    def prior(self):
        return self.exp.prior

    @property
    def num_observations(self) -> int:
        return self.designs.shape[0]


# ---------------------------------------------------------------------------- registry
_METHODS: dict[str, Callable[..., Posterior]] = {}


def register(name: str) -> Callable[[Callable[..., Posterior]], Callable[..., Posterior]]:
    """Decorator: register ``run(problem, **options) -> Posterior`` as method ``name``."""

    def decorate(run: Callable[..., Posterior]) -> Callable[..., Posterior]:
        _METHODS[name] = run
        return run

    return decorate


def available_methods() -> list[str]:
    """Names of the registered conditioning methods."""
    return sorted(_METHODS)


def get_method(name: str) -> Callable[..., Posterior]:
    if name not in _METHODS:
        raise ValueError(
            f"condition: unknown method {name!r}; available methods: {available_methods()}"
        )
    return _METHODS[name]


def method_options(name: str) -> list[str]:
    """The keyword options method ``name`` accepts (beyond the common arguments)."""
    params = inspect.signature(get_method(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


# ---------------------------------------------------------------------------- source space
def require_push(prior, method: str) -> None:
    """Raise a TypeError if ``prior`` has no source-to-data map (``push``)."""
    from priors.base import GenerativePrior

    if not isinstance(prior, GenerativePrior) or type(prior).push is GenerativePrior.push:
        raise TypeError(
            f"condition(method={method!r}) works in the prior's source space and needs a "
            f"priors.GenerativePrior with push (source -> data map); got "
            f"{type(prior).__name__}. Wrap the prior (e.g. priors.analytic.Gaussian for a "
            f"normal prior) or choose a method that does not need push; available methods: "
            f"{available_methods()}"
        )


class SourceLogLikelihood:
    """``z -> sum_i log p(y_i | push(z), design_i)`` on flat source vectors, counting calls.

    Args:
        problem: the validated problem.
        prior: the prior whose ``push`` maps source to data (default ``problem.prior``; the
            multi-fidelity option passes a coarse prior here).

    Calling it with `M x D_z` flat source vectors returns `M` log-likelihoods; ``num_evals``
    counts the map evaluations (one per row) and ``num_calls`` the batched calls.
    """

    def __init__(self, problem: Problem, prior=None) -> None:
        self.problem = problem
        self.prior = problem.prior if prior is None else prior
        self.source_shape = self.prior.source_event_shape
        self.num_evals = 0
        self.num_calls = 0

    def push(self, z: Tensor) -> Tensor:
        """Flat `M x D_z` source -> `M x *event_shape` theta."""
        return self.prior.push(z.reshape(z.shape[:1] + self.source_shape))

    def __call__(self, z: Tensor) -> Tensor:
        self.num_evals += z.shape[0]
        self.num_calls += 1
        theta = self.push(z)  # (M, *event_shape)
        p = self.problem
        return p.exp.log_likelihood(theta, p.designs, p.observations)  # (M,)


def initial_source(problem: Problem, num_chains: int) -> tuple[Tensor, bool]:
    """Initial flat source positions `num_chains x D_z` and whether they came from ``init``.

    Rule: from ``init`` (a ``Posterior`` with ``source``, else its ``samples``; or a theta
    tensor) the theta draws are pulled to source space with ``prior.pull``. Given ``N`` warm
    draws, chain ``c`` starts at draw ``perm[c]`` of a random permutation when ``N >=
    num_chains``, else at a draw picked uniformly with replacement. If the draws are theta and
    the prior has no ``pull``, a ``UserWarning`` says so and the chains start cold from the
    source distribution (with the cold warm-up length).
    """
    prior, gen = problem.prior, problem.generator
    shape = prior.source_event_shape
    z = None
    init = problem.init
    if init is not None:
        if isinstance(init, Posterior):
            z = init.source
            theta = init.samples if z is None else None
        else:
            theta = torch.as_tensor(init, device=prior.device, dtype=prior.dtype)
        if z is None:
            problem.exp.check_theta(theta, "condition(init=...)")
            theta = theta.reshape((-1,) + tuple(problem.exp.event_shape))
            if getattr(prior, "has_pull", False):
                with torch.no_grad():
                    z = prior.pull(theta.to(device=prior.device, dtype=prior.dtype))
            else:
                warnings.warn(
                    f"condition(init=...): {type(prior).__name__} has no pull (data -> source "
                    "map), so theta draws cannot seed source-space chains; starting cold from "
                    "the prior. Pass a Posterior with .source to warm-start.",
                    UserWarning,
                    stacklevel=4,
                )
        else:
            from priors.base import check_event_shape

            check_event_shape(z, shape, "condition(init=Posterior.source)")
    if z is None:
        zs = torch.randn(
            (num_chains, shape.numel()), generator=gen, device=prior.device, dtype=prior.dtype
        )
        return zs, False
    z = z.reshape(-1, shape.numel()).to(device=prior.device, dtype=prior.dtype)  # (N, D_z)
    n = z.shape[0]
    if n >= num_chains:
        idx = torch.randperm(n, generator=gen, device=gen.device)[:num_chains]
    else:
        idx = torch.randint(n, (num_chains,), generator=gen, device=gen.device)
    return z[idx.to(z.device)].clone(), True


def prior_posterior(problem: Problem, method: str) -> Posterior:
    """With no observations the posterior is the prior: ``num_samples`` exact prior draws
    ``push(z)``, ``z ~ N(0, I)`` from the problem's generator (diagnostics ``num_evals=0``)."""
    prior = problem.prior
    shape = (problem.num_samples,) + tuple(prior.source_event_shape)
    z = torch.randn(shape, generator=problem.generator, device=prior.device, dtype=prior.dtype)
    with torch.no_grad():
        theta = prior.push(z)
    return Posterior(theta, z, {"num_evals": 0, "prior_draws": True}, method)
