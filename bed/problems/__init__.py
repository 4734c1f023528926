"""Ready-made design problems: an ``Experiment``, a simulator and a horizon, by name.

Example:
    >>> import bed.problems
    >>> bed.problems.available()
    ['location-finding']
    >>> p = bed.problems.get("location-finding", prior="gaussian")
    >>> p.experiment.event_shape, p.steps
    (torch.Size([2, 2]), 30)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bed.eig import total
from bed.experiment import Experiment
from bed.problems import location_finding as _lf

__all__ = [
    "Problem",
    "available",
    "describe",
    "get",
    "location_finding",
    "prior_choices",
    "random_rollouts",
    "total_eig",
]

location_finding = _lf


@dataclass
class Problem:
    """A named design problem.

    Attributes:
        name: the registry name (stored in records, so ``resume`` can rebuild the problem).
        experiment: the ``bed.Experiment`` (prior, likelihood, design space).
        simulator: ``simulate(theta, design, generator=None) -> y`` for synthetic studies.
        steps: the default horizon ``T``.
        options: the keyword arguments that built the problem (JSON-able), e.g. the prior.
        random_designs: ``random_designs(shape, generator, like) -> (*shape, d)``, the
            random-design baseline used by ``bed eval`` (``None`` if the problem has none).
        random_designs_doc: how the baseline draws its designs, in words.
        priors: the prior names ``get`` accepts.
        loop_defaults: ``SequentialDesign`` settings tuned for this problem (sample counts,
            conditioning and optimizer options); ``SequentialDesign.from_problem`` uses them.
    """

    name: str
    experiment: Experiment
    simulator: Callable
    steps: int
    options: dict[str, Any] = field(default_factory=dict)
    random_designs: Callable | None = None
    random_designs_doc: str = ""
    priors: tuple[str, ...] = ()
    loop_defaults: dict[str, Any] = field(default_factory=dict)


def _location_finding(prior: str = "sources-2x2") -> Problem:
    return Problem(
        name="location-finding",
        experiment=_lf.location_finding(prior),
        simulator=_lf.LocationFinding(),
        steps=_lf.STEPS,
        options={"prior": prior},
        random_designs=_lf.random_designs,
        random_designs_doc="xi ~ N(0, I_2) clamped to [-4, 4]^2",
        priors=("sources-2x2", "gaussian"),
        # Measured on a shared 2-core CPU: about 0.7 s per step, and every test rollout
        # reached the sPCE ceiling log(L + 1) at L = 1e5 (benchmarks/loop.py).
        loop_defaults={
            "num_samples": 128,
            "condition_options": {"warmup": 10},
            "optimize_options": {"num_restarts": 4, "raw_samples": 64},
        },
    )


_REGISTRY: dict[str, tuple[Callable[..., Problem], str, tuple[str, ...]]] = {
    "location-finding": (
        _location_finding,
        "K=2 sources in 2-D, y ~ N(log(b + sum_k 1/(m + |theta_k - xi|^2)), 0.5^2), T=30",
        ("sources-2x2", "gaussian"),
    ),
}


def available() -> list[str]:
    """Names of the registered problems."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """One line about each registered problem, by name."""
    return {name: doc for name, (_, doc, _) in sorted(_REGISTRY.items())}


def prior_choices(name: str) -> tuple[str, ...]:
    """The ``prior=`` values problem ``name`` accepts (the first is the default)."""
    get_checked = _REGISTRY.get(name)
    if get_checked is None:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(available())}")
    return get_checked[2]


def get(name: str, **options) -> Problem:
    """Build the problem ``name`` with ``options`` (e.g. ``prior="gaussian"``).

    Raises:
        ValueError: for an unknown name (the message lists the available ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name][0](**options)


def total_eig(
    problem: Problem,
    designs: Tensor,
    observations: Tensor,
    theta_true: Tensor,
    num_inner: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """sPCE lower and sNMC upper bounds on the total EIG of ``R`` finished rollouts.

    Contrasts are ``num_inner`` fresh draws from the problem's prior (``bed.eig.total``).

    Args:
        problem: the problem whose prior and likelihood score the rollouts.
        designs: `R x T x d`; observations: `R x T x *obs`; theta_true: `R x *event`.
        num_inner: ``L`` contrastive prior samples.
        generator: randomness for the contrasts.

    Returns:
        a dict with ``spce``, ``spce_se``, ``snmc``, ``snmc_se`` (standard errors over the
        rollouts), ``num_runs``, ``num_inner`` and ``ceiling`` = ``log(L + 1)``.
    """
    b = total(
        problem.experiment, designs, observations, theta_true, num_inner, generator=generator
    )
    out = {k: float(v) for k, v in b._asdict().items()}
    out.update(
        num_runs=int(theta_true.shape[0]),
        num_inner=int(num_inner),
        ceiling=math.log(num_inner + 1),
    )
    return out


def random_rollouts(
    problem: Problem, theta_true: Tensor, steps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The random-design baseline: ``steps`` designs per rollout from
    ``problem.random_designs``, measured by ``problem.simulator`` at each ``theta_true``.

    Args:
        theta_true: `R x *event` true parameters.
        steps: ``T``.
        generator: randomness for designs and measurement noise.

    Returns:
        designs `R x T x d` and observations `R x T x *obs`.
    """
    if problem.random_designs is None:
        raise ValueError(f"problem {problem.name!r} defines no random-design baseline")
    r = theta_true.shape[0]
    designs = problem.random_designs((r, steps), generator, like=theta_true)  # (R, T, d)
    th = theta_true.reshape(r, 1, *theta_true.shape[1:])  # (R, 1, *event)
    obs = problem.simulator(th, designs, generator)  # (R, T, *obs)
    return designs, obs
