"""Ready-made design problems: an ``Experiment``, a simulator and a horizon, by name.

Example:
    >>> import bed.problems
    >>> bed.problems.available()
    ['ces', 'image-mask', 'location-finding', 'pharmacokinetics', 'sensor-placement']
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
from bed.problems import ces as _ces
from bed.problems import image_mask as _im
from bed.problems import location_finding as _lf
from bed.problems import pharmacokinetics as _pk
from bed.problems import sensor_placement as _sp

__all__ = [
    "Problem",
    "available",
    "ces",
    "describe",
    "get",
    "image_mask",
    "location_finding",
    "pharmacokinetics",
    "prior_choices",
    "random_rollouts",
    "sensor_placement",
    "total_eig",
]

location_finding = _lf
ces, pharmacokinetics, sensor_placement, image_mask = _ces, _pk, _sp, _im


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
            conditioning method and options, optimizer options);
            ``SequentialDesign.from_problem`` uses them.
        draw_truth: ``draw_truth(generator) -> theta (*event)``, the true theta of a synthetic
            run when none is given (``None``: a prior draw), e.g. a held-out image.
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
    draw_truth: Callable[[torch.Generator], Tensor] | None = None


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


# ----------------------------------------------------------------------------- more problems
# (bed/problems/ces.py, pharmacokinetics.py, sensor_placement.py; registered below)


def _ces_problem(prior: str = "ces") -> Problem:
    return Problem(
        name="ces",
        experiment=_ces.ces(prior),
        simulator=_ces.CES(),
        steps=_ces.STEPS,
        options={"prior": prior},
        random_designs=_ces.random_designs,
        random_designs_doc="both baskets uniform on [0, 100]^3",
        priors=("ces",),
        loop_defaults={
            "num_samples": 128,
            "condition_options": {"warmup": 20},
            "optimize_options": {"num_restarts": 4, "raw_samples": 128},
        },
    )


def _pharmacokinetics_problem(prior: str = "gaussian", steps: int = _pk.STEPS) -> Problem:
    if int(steps) < 1:
        raise ValueError(f"pharmacokinetics: steps must be >= 1 (published: 5, 10), got {steps}")
    return Problem(
        name="pharmacokinetics",
        experiment=_pk.pharmacokinetics(prior),
        simulator=_pk.Pharmacokinetics(),
        steps=int(steps),
        options={"prior": prior, "steps": int(steps)},
        random_designs=_pk.random_designs,
        random_designs_doc="sampling times uniform on [0, 24] h",
        priors=("gaussian",),
        loop_defaults={
            "num_samples": 128,
            "condition_options": {"warmup": 20},
            "optimize_options": {"num_restarts": 4, "raw_samples": 64},
        },
    )


def _sensor_placement_problem(prior: str = "gp") -> Problem:
    return Problem(
        name="sensor-placement",
        experiment=_sp.sensor_placement(prior),
        simulator=_sp.SensorPlacement(),
        steps=_sp.STEPS,
        options={"prior": prior},
        random_designs=_sp.random_designs,
        random_designs_doc="sensors uniform on [0, 1]^2",
        priors=_sp.prior_names(),
        loop_defaults={
            "num_samples": 64,
            "condition_options": {"warmup": 10},
            "optimize_options": {"num_restarts": 2, "raw_samples": 32},
        },
    )


def _image_mask_problem(prior: str = "digits-16") -> Problem:
    st = _im.setting(prior)
    return Problem(
        name="image-mask",
        experiment=_im.image_mask(prior),
        simulator=_im.ImageMask(prior),
        steps=_im.STEPS,
        options={"prior": prior},
        random_designs=lambda shape, generator, like=None: _im.random_designs(
            shape, generator, like, prior
        ),
        random_designs_doc="a uniformly random order of the 16 patches",
        priors=tuple(_im.SETTINGS),
        loop_defaults={
            "method": st.posterior,
            "acquisition": "gaussian",  # sPCE saturates at log(L + 1) on a whole patch
            "num_samples": 32 if st.posterior == "irsde" else 16,
            "condition_options": dict(st.condition_options),
        },
        draw_truth=lambda generator: _im.heldout_images(1, generator, prior)[0],
    )


_REGISTRY.update(
    {
        "ces": (
            _ces_problem,
            "CES preferences between two baskets in [0, 100]^3, censored sigmoid y, T=10",
            ("ces",),
        ),
        "pharmacokinetics": (
            _pharmacokinetics_problem,
            "sampling time in [0, 24] h, y ~ N(c, (0.1 c)^2 + 0.1), T=5 (option steps=10)",
            ("gaussian",),
        ),
        "sensor-placement": (
            _sensor_placement_problem,
            "32x32 log-permeability field, Darcy pressure sensor in [0, 1]^2, sigma=0.01, T=10",
            _sp.prior_names(),
        ),
        "image-mask": (
            _image_mask_problem,
            (
                "16x16 digit, measure one of 16 4x4 patches with noise 0.1, IR-SDE posterior, T=6 "
                "(prior mnist-28: 28x28, 7x7 patches, DPS posterior)"
            ),
            tuple(_im.SETTINGS),
        ),
    }
)
