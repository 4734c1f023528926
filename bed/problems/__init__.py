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

from dataclasses import dataclass, field
from typing import Any, Callable

from bed.experiment import Experiment
from bed.problems import location_finding as _lf

__all__ = ["Problem", "available", "describe", "get", "location_finding"]

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


_REGISTRY: dict[str, tuple[Callable[..., Problem], str]] = {
    "location-finding": (
        _location_finding,
        "K=2 sources in 2-D, y ~ N(log(b + sum_k 1/(m + |theta_k - xi|^2)), 0.5^2), T=30",
    ),
}


def available() -> list[str]:
    """Names of the registered problems."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """One line about each registered problem, by name."""
    return {name: doc for name, (_, doc) in sorted(_REGISTRY.items())}


def get(name: str, **options) -> Problem:
    """Build the problem ``name`` with ``options`` (e.g. ``prior="gaussian"``).

    Raises:
        ValueError: for an unknown name (the message lists the available ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name][0](**options)
