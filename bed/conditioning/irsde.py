r"""IR-SDE posterior: an amortised conditional mean-reverting SDE (methods.md section 2).

Unlike the other methods this one is *trained*: a noise network
:math:`\hat\varepsilon_\phi(x_t, \mu, t)` (``priors.nets.IRSDEModel``) learned with the IR-SDE
maximum-likelihood loss on simulated pairs :math:`(\theta, \mu(y))` from prior x simulator
(``python -m priors.train digits-16-irsde``). Its forward SDE mean-reverts a clean
:math:`\theta` to the point estimate :math:`\mu(y)`,

.. math::
    d x = \theta_t (\mu - x)\, dt + \sigma_t\, dw, \qquad \sigma_t^2 = 2 \lambda^2 \theta_t,

so :math:`x_T \approx N(\mu, \lambda^2 I)`, and sampling runs the reverse process from
:math:`x_T = \mu + \lambda \varepsilon` to ``t = 0`` on the grid ``linspace(T, 0, steps + 1)``
(``steps = T`` is the paper's one step per integer index) with the score
:math:`s = -\hat\varepsilon / \bar\sigma_t`, in one of three modes (section 2.6):

- ``"sde"``: Euler-Maruyama on the reverse SDE,
  :math:`x \leftarrow x - h[\theta_t(\mu - x) - \sigma_t^2 s] + \sigma_t \sqrt h\, \xi`;
- ``"ode"``: the probability-flow ODE, Euler, :math:`\tfrac12 \sigma_t^2` and no noise;
- ``"posterior"``: :math:`\hat x_0 = \mu + (x - \mu - \bar\sigma_t \hat\varepsilon)
  e^{\bar\theta_t}`, then a draw from the exact bridge :math:`p(x_{t-h} \mid x_t, \hat x_0)`
  (``sde.bridge``; the "optimal reverse path"). Its spread is a few percent low because
  plugging in :math:`\hat x_0` drops :math:`\mathrm{Var}(x_0 \mid x_t)` (about 4 % at T = 100).

**The point estimate** :math:`\mu(y)`, same shape as theta. Protocol: the likelihood exposes
``observed_index(design) -> LongTensor`` of the flat theta coordinates a measurement reveals, in
the order of the flattened observation (the convention of ``method="fbs"``). Then
``mu = model.point_estimate(values, mask)``: observed coordinates take the observed value (the
mean when observed more than once), the others the model's ``fill`` (the prior mean image).
Any other measurement passes ``point_estimate=fn(designs, observations) -> (*event)``.

The samples follow the amortised model :math:`p_\phi(\theta \mid \mu)`, not the exact posterior
of ``exp``: the likelihood is not evaluated, so the model must have been trained for the
experiment's measurement (the shipped ``"digits-16-irsde"``: 1-8 4x4 patches, noise 0.1).

References:
    Image Restoration with Mean-Reverting Stochastic Differential Equations (Luo, Gustafsson,
    Zhao, Sjolund, Schon 2023), https://arxiv.org/abs/2301.11699
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import pyro.distributions as dist
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bed.conditioning.base import Posterior, Problem, available_methods, register
from bed.conditioning.fbs import observed_coordinates

__all__ = [
    "MODES",
    "IRSDEInfo",
    "IRSDEState",
    "PatchObservation",
    "init",
    "load_model",
    "masked_point_estimate",
    "run",
    "sample",
    "step",
]

MODES = ("sde", "ode", "posterior")


class IRSDEState(NamedTuple):
    """Particles ``x`` (`N x *event`) at grid index ``k`` (time ``ts[k]``)."""

    x: Tensor
    k: int


class IRSDEInfo(NamedTuple):
    """One reverse step: ``x0_hat`` (`N x *event`), the implied clean estimate."""

    x0_hat: Tensor


def init(mu: Tensor, lam: float, generator: torch.Generator | None = None) -> IRSDEState:
    r"""Start at :math:`x_T = \mu + \lambda \varepsilon` for `N x *event` conditions ``mu``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return IRSDEState(mu + lam * eps, 0)


def step(
    state: IRSDEState,
    model,
    mu: Tensor,
    ts: Tensor,
    mode: str = "posterior",
    generator: torch.Generator | None = None,
) -> tuple[IRSDEState, IRSDEInfo]:
    """One reverse step from ``ts[k]`` to ``ts[k + 1]`` (methods.md section 2.6).

    Args:
        state: particles `N x *event` at index ``k``.
        model: an ``IRSDEModel`` (``noise(x, mu, t)`` and ``sde``).
        mu: conditions `N x *event`.
        ts: the decreasing `K + 1` grid, ``ts[-1] = 0``.
        mode: ``"sde"``, ``"ode"`` or ``"posterior"``.
        generator: source of the noise.
    """
    x, k = state
    sde = model.sde
    t, s = ts[k], ts[k + 1]
    h = t - s  # > 0
    e = model.noise(x, mu, t)  # (N, *event), one network call
    coeff, std = sde.marginal(t)  # e^{-thetabar_t}, sigmabar_t (0-d)
    x0_hat = mu + (x - mu - std * e) / coeff
    if mode == "posterior":
        mean, var = sde.bridge(x, x0_hat, s, t, mu)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_new = mean + var.sqrt() * noise
    else:
        score = -e / std
        g2 = sde.diffusion(t) ** 2
        drift = sde.rate(t) * (mu - x)
        if mode == "sde":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_new = x - h * (drift - g2 * score) + (g2 * h).sqrt() * noise
        else:
            x_new = x - h * (drift - 0.5 * g2 * score)
    return IRSDEState(x_new, k + 1), IRSDEInfo(x0_hat)


def sample(
    model,
    mu: Tensor,
    steps: int | None = None,
    mode: str = "posterior",
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Reverse-process draws of the conditional IR-SDE, one per row of ``mu``.

    Args:
        model: an ``IRSDEModel``.
        mu: conditions `N x *event` (repeat one condition for several draws).
        steps: reverse steps ``K`` (default ``model.sde.steps``, the training ``T``); ``K``
            network calls per draw.
        mode: ``"sde"``, ``"ode"`` or ``"posterior"``.
        generator: source of randomness.
        progress: show a progress bar.
        callback: called after each step with ``{"i", "t", "x", "x0_hat"}``.

    Returns:
        `N x *event` draws (no gradients).
    """
    if mode not in MODES:
        raise ValueError(f"irsde: mode must be one of {MODES}, got {mode!r}")
    k_steps = int(model.sde.steps if steps is None else steps)
    if k_steps < 1:
        raise ValueError(f"irsde: steps must be >= 1, got {k_steps}")
    ts = torch.linspace(model.sde.T, 0.0, k_steps + 1, device=mu.device, dtype=mu.dtype)
    with torch.no_grad():
        state = init(mu, model.sde.lam, generator)
        for i in tqdm(range(k_steps), desc="irsde", disable=not progress, leave=False):
            state, info = step(state, model, mu, ts, mode, generator)
            if callback is not None:
                callback({"i": i, "t": ts[i + 1], "x": state.x, "x0_hat": info.x0_hat})
    return state.x


def load_model(name: str, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """A shipped conditional IR-SDE (``priors/checkpoints/conditional/NAME``) on a device."""
    from priors import zoo

    try:
        return zoo.load(name, device=None, root=zoo.CONDITIONAL_DIR).to(device, dtype)
    except zoo.UnknownPriorError as err:
        raise ValueError(
            f"condition(method='irsde'): unknown model {name!r}; shipped IR-SDE models: "
            f"{sorted(zoo.available(zoo.CONDITIONAL_DIR))}"
        ) from err


def masked_point_estimate(
    model, observed_index: Callable[[Tensor], Tensor], designs: Tensor, observations: Tensor
) -> tuple[Tensor, Tensor]:
    """``(mu, mask)`` (each `*event`): observed coordinates (``mask``) at their (mean)
    observed value, the others at ``model.fill``.

    Args:
        model: an ``IRSDEModel``.
        observed_index: ``design (d,) -> LongTensor (m,)`` flat coordinates of theta.
        designs: `n x d`; observations: `n x *obs_shape` (``m = prod(obs_shape)``).
    """
    event = tuple(model.event_shape)
    size = int(torch.Size(event).numel())
    total = observations.new_zeros(size)
    count = observations.new_zeros(size)
    if designs.shape[0]:
        idx, vals = observed_coordinates(observed_index, designs, observations, size)
        total = total.index_add(0, idx, vals)  # (D,)
        count = count.index_add(0, idx, torch.ones_like(vals))
    mask = count > 0
    values = total / count.clamp_min(1)
    mask = mask.reshape(event)
    return model.point_estimate(values.reshape(event), mask), mask


class PatchObservation:
    """A noisy square patch of an image: the reference likelihood of the ``observed_index``
    protocol (inpainting; the measurement ``"digits-16-irsde"`` was trained for).

    ``likelihood(theta (..., H, W), design (..., 2))`` is
    ``Normal(theta[r:r+p, c:c+p], noise)`` over a `p x p` observation, with the top-left corner
    ``(r, c) = design.long()`` (batch shape: the broadcast leading dims), and
    ``observed_index(design)`` the `p * p` flat pixel indices in row-major order.

    Args:
        patch: side length ``p``.
        noise: observation noise standard deviation.
        image_shape: ``(H, W)``.
    """

    def __init__(
        self, patch: int = 4, noise: float = 0.1, image_shape: tuple[int, int] = (16, 16)
    ) -> None:
        self.patch, self.noise, self.image_shape = int(patch), float(noise), tuple(image_shape)

    def observed_index(self, design: Tensor) -> Tensor:
        """`(..., p * p)` flat pixel indices of the patch at ``design`` `(..., 2)`."""
        h, w = self.image_shape
        corner = design.long()
        r, c = corner[..., 0], corner[..., 1]
        if (corner < 0).any() or (r > h - self.patch).any() or (c > w - self.patch).any():
            raise ValueError(
                f"PatchObservation: corners must lie in [0, {h - self.patch}] x "
                f"[0, {w - self.patch}], got {design.tolist()}"
            )
        ar = torch.arange(self.patch, device=design.device)
        rows = corner[..., :1] + ar  # (..., p)
        cols = corner[..., 1:] + ar  # (..., p)
        return (rows[..., :, None] * w + cols[..., None, :]).flatten(-2)  # (..., p * p)

    def __call__(self, theta: Tensor, design: Tensor) -> dist.Distribution:
        idx = self.observed_index(design)  # (*B2, p * p)
        flat = theta.flatten(-2)  # (*B1, H * W)
        shape = torch.broadcast_shapes(flat.shape[:-1], idx.shape[:-1])
        vals = torch.gather(flat.expand(shape + flat.shape[-1:]), -1, idx.expand(shape + (-1,)))
        loc = vals.reshape(shape + (self.patch, self.patch))  # (*B, p, p)
        return dist.Normal(loc, self.noise).to_event(2)


@register("irsde")
def run(
    problem: Problem,
    *,
    model=None,
    mode: str = "posterior",
    steps: int | None = None,
    observed_index: Callable[[Tensor], Tensor] | None = None,
    point_estimate: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Posterior:
    """IR-SDE draws: ``num_samples`` independent reverse paths from ``mu(y)`` (see the module
    docstring).

    ``num_chains``, ``warmup``, ``thin`` and ``init`` of :func:`bed.condition` are ignored.

    Args:
        problem: the validated problem.
        model: an ``IRSDEModel`` or the name of a shipped one (e.g. ``"digits-16-irsde"``).
        mode: ``"sde"``, ``"ode"`` or ``"posterior"`` (the default, as the paper's README).
        steps: reverse steps (default: the model's ``T``).
        observed_index: ``design (d,) -> LongTensor`` of flat theta coordinates (default: the
            likelihood's ``observed_index``).
        point_estimate: ``(designs (n, d), observations (n, *obs)) -> mu (*event)``, replacing
            the masked construction.

    Returns:
        A ``Posterior`` (``source`` is ``None``). Diagnostics: ``num_evals`` (network
        evaluations), ``steps``, ``mode``, ``observed_fraction`` (of theta's coordinates; nan
        with a custom ``point_estimate``), ``point_estimate`` (``mu``, `*event`).
    """
    ref = problem.observations.new_zeros(())
    if model is None:
        raise ValueError(
            "condition(method='irsde') needs model=: an IRSDEModel or the name of a shipped "
            "one (priors/checkpoints/conditional), e.g. model='digits-16-irsde'"
        )
    if isinstance(model, str):
        model = load_model(model, ref.device, ref.dtype)
    elif model.fill.device != ref.device or model.fill.dtype != ref.dtype:
        model = copy.deepcopy(model).to(device=ref.device, dtype=ref.dtype)
    if mode not in MODES:
        raise ValueError(f"irsde: mode must be one of {MODES}, got {mode!r}")
    event = tuple(problem.exp.event_shape)
    if tuple(model.event_shape) != event:
        raise ValueError(
            f"irsde: the model's event shape {tuple(model.event_shape)} differs from the "
            f"experiment's {event}"
        )
    if point_estimate is not None:
        mu = torch.as_tensor(point_estimate(problem.designs, problem.observations)).to(ref)
        if tuple(mu.shape) != event:
            raise ValueError(
                f"irsde: point_estimate returned shape {tuple(mu.shape)}, expected {event}"
            )
        observed = float("nan")
    else:
        if observed_index is None:
            observed_index = getattr(problem.exp.likelihood, "observed_index", None)
        if observed_index is None or not callable(observed_index):
            raise ValueError(
                "condition(method='irsde') builds mu(y) from observed_index: a function design "
                "-> flat indices of theta that the measurement reveals (or an observed_index "
                "attribute on the likelihood); or pass point_estimate=fn(designs, "
                f"observations). Methods for general likelihoods: {available_methods()}"
            )
        mu, mask = masked_point_estimate(
            model, observed_index, problem.designs, problem.observations
        )
        observed = float(mask.to(ref.dtype).mean())
    mus = mu.expand((problem.num_samples,) + event)  # (S, *event)
    k_steps = int(model.sde.steps if steps is None else steps)
    x = sample(model, mus, k_steps, mode, problem.generator, problem.progress)
    diagnostics = {
        "num_evals": k_steps * problem.num_samples,
        "steps": k_steps,
        "mode": mode,
        "observed_fraction": observed,
        "point_estimate": mu,
    }
    return Posterior(x, None, diagnostics, "irsde")
