"""Sensor placement: where to read the pressure of a Darcy flow to learn a permeability field.

The unknown is a log-permeability field ``u`` on a ``32 x 32`` cell grid of the unit square
(event shape `(32, 32)`; row = ``y``, column = ``x``). The pressure solves steady Darcy flow

.. math:: -\\nabla \\cdot (e^{u} \\nabla p) = f, \\qquad p = 0 \\text{ on the boundary},

with a constant source ``f = 10`` (the peak pressure is 0.74 for ``u = 0``), by the batched
block-Cholesky finite-volume solver of :mod:`bed.problems.darcy`. A design is a sensor
location ``xi`` in ``[0, 1]^2``; the sensor reads the pressure there by bilinear interpolation
of the cell-centre values (padded with the wall value 0) plus Gaussian noise of standard
deviation ``sigma = 0.01`` (about 1.4 % of the mean field's peak pressure):

.. math:: y \\sim \\mathcal{N}(p_u(\\xi), \\sigma^2).

Priors: ``"gp"`` is a Gaussian field, ``priors.analytic.Gaussian(0, K + 1e-4 I)`` with ``K``
a Matern-3/2 covariance (gpytorch ``MaternKernel``, lengthscale 0.2, variance 1) between the
cell centres, the classical baseline; learned priors from the zoo (``"grf-32"``,
``"grf-32-flow"``) are offered when ``priors.available()`` ships them.

Cost: the likelihood solves one Darcy problem per field in theta's batch and interpolates the
pressure at every design by broadcasting, so a `b x q` batch of designs against ``M`` fields
costs ``M`` solves, not ``b q M``. The last few solves are cached, keyed by the exact theta
values (compared with ``torch.equal``), so the acquisition's L-BFGS iterations over designs reuse
the pressures of its fixed belief samples. The cache is bypassed whenever theta needs a
gradient.
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from torch import Tensor

import priors
from bed.design_space import Box
from bed.experiment import Experiment
from bed.problems import darcy

__all__ = [
    "GRID",
    "NOISE",
    "SOURCE",
    "STEPS",
    "DarcyLikelihood",
    "SensorPlacement",
    "field_rmse",
    "gp_prior",
    "prior_names",
    "random_designs",
    "run_strategy",
    "sensor_placement",
    "sobol_designs",
]

#: placement strategies compared by :func:`run_strategy`
STRATEGIES = ("eig", "random", "sobol")

GRID = 32  # cells per side
SOURCE = 10.0  # f
NOISE = 0.01  # sigma
STEPS = 10  # T
LENGTHSCALE, NU, JITTER = 0.2, 1.5, 1e-4
LEARNED_PRIORS = ("grf-32", "grf-32-flow")


def cell_centres(n: int = GRID, dtype: torch.dtype | None = None) -> Tensor:
    """`(n * n, 2)` cell centres ``(x, y)`` in row-major order (row = ``y``)."""
    c = (torch.arange(n, dtype=dtype) + 0.5) / n
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def gp_prior(
    n: int = GRID,
    lengthscale: float = LENGTHSCALE,
    nu: float = NU,
    variance: float = 1.0,
    jitter: float = JITTER,
    dtype: torch.dtype | None = None,
) -> priors.analytic.Gaussian:
    """A zero-mean Gaussian field on the ``n x n`` cell grid with a Matern covariance.

    The covariance comes from ``gpytorch.kernels.MaternKernel`` (evaluated in float64), plus
    ``jitter * I`` so the Cholesky factor exists in float32; ESS and NUTS run on its affine
    ``push``.

    Args:
        n: cells per side.
        lengthscale: the kernel's lengthscale (the square has side 1).
        nu: Matern smoothness (0.5, 1.5 or 2.5).
        variance: the marginal variance of ``u``.
        jitter: added to the diagonal.
        dtype: the prior's dtype (default torch's default dtype).

    Returns:
        a ``priors.analytic.Gaussian`` with event shape `(n, n)`.
    """
    import gpytorch

    kernel = gpytorch.kernels.MaternKernel(nu=nu).double()
    kernel.lengthscale = lengthscale
    pts = cell_centres(n, torch.float64)
    with torch.no_grad():
        cov = variance * kernel(pts).to_dense() + jitter * torch.eye(n * n, dtype=torch.float64)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return priors.analytic.Gaussian(
        torch.zeros(n * n, dtype=dtype), cov.to(dtype), event_shape=(n, n)
    )


def prior_names() -> tuple[str, ...]:
    """The priors this problem accepts now: ``"gp"`` and any of ``grf-32``/``grf-32-flow``
    that the zoo ships."""
    zoo = priors.available()
    return ("gp",) + tuple(name for name in LEARNED_PRIORS if name in zoo)


def _prior(name: str):
    if name == "gp":
        return gp_prior()
    if name in LEARNED_PRIORS and name in priors.available():
        p = priors.load(name)
        if tuple(p.event_shape) != (GRID, GRID):
            raise ValueError(
                f"sensor-placement: prior {name!r} has event shape {tuple(p.event_shape)}, "
                f"expected ({GRID}, {GRID})"
            )
        return p
    raise ValueError(
        f"sensor-placement: unknown prior {name!r}; choose one of {', '.join(prior_names())}"
    )


class DarcyLikelihood:
    """``p(y | u, xi) = N(p_u(xi), sigma^2)``, batched over fields and designs.

    Args:
        source: the source term ``f`` (a number or an `(n, n)` tensor).
        noise: ``sigma``.
        cache_size: how many recent `(theta -> pressure)` solves to keep.
    """

    def __init__(self, source: float | Tensor = SOURCE, noise: float = NOISE, cache_size: int = 4):
        self.source, self.noise, self.cache_size = source, float(noise), int(cache_size)
        self._cache: list[tuple[Tensor, Tensor]] = []

    def pressure(self, theta: Tensor) -> Tensor:
        """Padded pressure fields `(..., n + 2, n + 2)` of log-permeabilities `(..., n, n)`."""
        if theta.requires_grad and torch.is_grad_enabled():
            return darcy.pad(darcy.solve(theta, self.source))
        for key, value in self._cache:
            if (
                key.shape == theta.shape
                and key.dtype == theta.dtype
                and key.device == theta.device
                and torch.equal(key, theta)
            ):
                return value
        with torch.no_grad():
            value = darcy.pad(darcy.solve(theta, self.source))
        self._cache = [(theta.detach().clone(), value)] + self._cache[: self.cache_size - 1]
        return value

    def __call__(self, theta: Tensor, design: Tensor) -> Normal:
        """Args:
            theta: `(*batch_t, n, n)` log-permeability fields.
            design: `(*batch_d, 2)` sensor locations; ``batch_t`` and ``batch_d`` broadcast.

        Returns:
            a ``Normal`` with batch shape ``broadcast(batch_t, batch_d)``, event shape ``()``.
        """
        loc = darcy.interpolate(self.pressure(theta), design.to(theta))
        return Normal(loc, torch.full_like(loc, self.noise))

    def __repr__(self) -> str:
        return f"DarcyLikelihood(source={self.source}, noise={self.noise})"


class SensorPlacement:
    """The simulator: solve for the pressure of the true field and read it with noise."""

    def __init__(self, source: float | Tensor = SOURCE, noise: float = NOISE) -> None:
        self.likelihood = DarcyLikelihood(source, noise, cache_size=1)

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., n, n)` true log-permeability fields.
            design: `(..., 2)` sensor locations.
            generator: a ``torch.Generator`` for the measurement noise.

        Returns:
            `(...)` noisy pressure readings.
        """
        lik = self.likelihood(theta, design)
        noise = torch.randn(
            lik.loc.shape, generator=generator, device=lik.loc.device, dtype=lik.loc.dtype
        )
        return lik.loc + lik.scale * noise

    def __repr__(self) -> str:
        return "SensorPlacement()"


def random_designs(shape, generator: torch.Generator | None = None, like: Tensor | None = None):
    """The random-design baseline: sensors uniform on ``[0, 1]^2``, `(*shape, 2)`."""
    like = torch.zeros(()) if like is None else like
    return torch.rand((*shape, 2), generator=generator, device=like.device, dtype=like.dtype)


def sobol_designs(num: int, seed: int = 0, like: Tensor | None = None) -> Tensor:
    """A space-filling layout: the first ``num`` points of a scrambled Sobol sequence, `(num, 2)`."""
    like = torch.zeros(()) if like is None else like
    pts = torch.quasirandom.SobolEngine(2, scramble=True, seed=seed).draw(num, dtype=torch.float64)
    return pts.to(device=like.device, dtype=like.dtype)


def field_rmse(samples: Tensor, theta_true: Tensor) -> Tensor:
    """RMSE of the posterior-mean field: ``samples`` `(S, n, n)`, ``theta_true`` `(n, n)`; `()`."""
    return (samples.mean(0) - theta_true).pow(2).mean().sqrt()


def sensor_placement(prior_name: str = "gp") -> Experiment:
    """The sensor-placement ``Experiment``: event shape `(32, 32)`, scalar y, ``Box([0, 0],
    [1, 1])``.

    Args:
        prior_name: ``"gp"`` (Matern Gaussian field, default) or a shipped learned prior
            (see :func:`prior_names`).
    """
    return Experiment(
        _prior(prior_name), DarcyLikelihood(), Box([0.0, 0.0], [1.0, 1.0]), name="sensor-placement"
    )


def run_strategy(
    problem,
    strategy: str,
    theta_true: Tensor,
    steps: int,
    seed: int = 0,
    **loop_options,
) -> dict[str, list[float] | float]:
    """Place ``steps`` sensors on one true field by ``strategy`` and score the beliefs.

    The same ``bed.SequentialDesign`` (the problem's conditioning, warm starts and seeds) runs
    every strategy, so only the designs differ: ``"eig"`` lets the loop choose (sPCE-optimal
    given the data so far), ``"random"`` measures uniform draws (generator seeded by
    ``10000 + seed``), ``"sobol"`` the first ``steps`` points of a scrambled Sobol sequence. One
    extra step conditions on all ``steps`` readings (its design is not scored).

    Scores after ``k = 1..steps`` sensors, from the posterior draws recorded at step ``k``:

    - ``rmse``: the posterior-mean field vs the truth (:func:`field_rmse`);
    - ``pixel_log_lik``: the mean over cells of ``log N(u*_i; m_i, s_i^2)``, the true field's
      log-likelihood under the posterior's per-cell Gaussian marginals (``m``, ``s`` from the
      draws): a proper score that rewards being right *and* calibrated (higher is better);
    - ``log_ratio``: ``sum_{t<k} [log p(y_t | u*, xi_t) - log p(y_t | y_<t, xi_t)]`` =
      ``log p(u* | data) - log p(u*)``, with each predictive density estimated from its own
      step's draws (``logmeanexp``). Exact in the limit of many draws, but when the draws
      miss a reading's predictive mass the estimate is far too low and the ratio far too high
      (seen as outliers of hundreds of nats), so read it with ``pixel_log_lik``.

    Args:
        problem: the ``sensor-placement`` ``Problem`` (any prior).
        strategy: one of ``STRATEGIES``.
        theta_true: `(32, 32)` the true field.
        steps: number of sensors ``T``.
        seed: the loop's seed.
        **loop_options: ``SequentialDesign.from_problem`` options (``num_samples``, ...).

    Returns:
        ``{"rmse": [T], "pixel_log_lik": [T], "log_ratio": [T], "designs": [T][2],
        "wall_time_s": float}``.
    """
    import math
    import time

    from bed.loop import SequentialDesign

    if strategy not in STRATEGIES:
        raise ValueError(f"sensor-placement: unknown strategy {strategy!r}; choose {STRATEGIES}")
    exp = problem.experiment
    sd = SequentialDesign.from_problem(problem, seed=seed, theta_true=theta_true, **loop_options)
    theta = sd.theta_true
    if strategy == "random":
        fixed = random_designs((steps,), torch.Generator().manual_seed(10_000 + seed), like=theta)
    elif strategy == "sobol":
        fixed = sobol_designs(steps, seed=seed, like=theta)
    t0 = time.perf_counter()
    for t in range(steps + 1):
        sd.step(None if strategy == "eig" or t == steps else fixed[t])
    wall = time.perf_counter() - t0
    ds = sd.dataset
    post = torch.as_tensor(ds["posterior"].values).to(theta)  # (T + 1, S, n, n)
    xi = torch.as_tensor(ds["design"].values).to(theta)  # (T + 1, 2)
    y = torch.as_tensor(ds["observation"].values).to(theta)  # (T + 1,)
    rmse = [float(field_rmse(post[k], theta)) for k in range(1, steps + 1)]
    marginals = torch.distributions.Normal(post.mean(1), post.std(1))  # (T + 1, n, n)
    cell_ll = marginals.log_prob(theta).mean((-2, -1))  # (T + 1,)
    pixel_log_lik = [float(cell_ll[k]) for k in range(1, steps + 1)]
    log_ratio, total = [], 0.0
    with torch.no_grad():
        for t in range(steps):
            lp_true = exp.likelihood(theta, xi[t]).log_prob(y[t])
            lp_draws = exp.likelihood(post[t], xi[t]).log_prob(y[t])  # (S,)
            pred = lp_draws.logsumexp(0) - math.log(lp_draws.shape[0])
            total += float(lp_true - pred)
            log_ratio.append(total)
    return {
        "rmse": rmse,
        "pixel_log_lik": pixel_log_lik,
        "log_ratio": log_ratio,
        "designs": xi[:steps].tolist(),
        "wall_time_s": wall,
    }
