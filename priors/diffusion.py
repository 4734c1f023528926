r"""``DiffusionPrior``: a score/noise network with a linear forward SDE, seen as a generative prior.

The forward SDE is one of ``priors.sde`` (``VPSDE``, ``MeanRevertingSDE``):
:math:`dx = f(x, t)dt + g(t)dw` on ``[0, T]`` with
:math:`x_t = \mu + \alpha_t (x_0 - \mu) + \sigma_t \varepsilon`
(``alpha_t, sigma_t = sde.marginal(t)``). The network ``net(x, t)`` takes ``x`` of shape
`(N, *event)` and the SDE's own time ``t`` of shape `(N,)` and returns `(N, *event)`, read as

- ``"eps"``: the noise :math:`\hat\varepsilon`; score :math:`= -\hat\varepsilon / \sigma_t`;
- ``"score"``: the score :math:`\nabla_x \log p_t(x)` itself;
- ``"x0"``: the denoised :math:`\hat x_0 = E[x_0 \mid x_t]`.

Maps (time grids run from ``T`` down to ``t_min``; ``time_grid(steps)``):

- ``sample``: the reverse SDE :math:`dx = [f - g^2 \nabla\log p_t]dt + g\,d\bar w`, Euler-Maruyama,
  ``sde_steps`` steps from :math:`x_T \sim N(\mu, \lambda^2 I)`; the last step adds no noise.
- ``push(z)``: the probability-flow ODE :math:`\dot x = f - \tfrac12 g^2 \nabla\log p_t` with
  Heun (``ode_steps`` steps, ``2 * ode_steps`` network calls) from :math:`x_T = \mu + \lambda z`;
  deterministic and differentiable, so every source-space sampler applies. ``rsample`` uses it.
- ``log_prob(x)``: the same ODE run forwards from ``t_min`` to ``T`` with the instantaneous change
  of variables (``priors.ode``). The divergence is exact for event size ``<= 16`` and otherwise a
  Hutchinson *estimate* with one fixed Rademacher probe per point (unbiased for the discretised
  path integral, not for ``log_prob`` itself); ``ode_log_prob`` also reports the number of network
  evaluations. Both are approximations of the model's density by the discretised ODE; the
  reference law at ``T`` is taken as exact.

References:
    Score-Based Generative Modeling through Stochastic Differential Equations
    (https://arxiv.org/abs/2011.13456).
    Elucidating the Design Space of Diffusion-Based Generative Models
    (https://arxiv.org/abs/2206.00364).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from priors.base import GenerativePrior
from priors.ode import change_of_variables, heun
from priors.sde import OUSDE

__all__ = ["DiffusionModel", "DiffusionPrior", "dsm_loss"]

PARAMETERIZATIONS = ("eps", "score", "x0")


class DiffusionModel(nn.Module):
    """The weights of a diffusion prior: the network and the SDE (schedule buffers), plus the
    sampler settings as plain attributes. ``DiffusionPrior.from_module`` wraps one; the zoo
    stores its ``state_dict``.

    Args:
        net: the network ``net(x (N, *event), t (N,)) -> (N, *event)``.
        sde: the forward SDE.
        parameterization: ``"eps"``, ``"score"`` or ``"x0"``.
        ode_steps: default Heun steps of ``push`` / ``log_prob``.
        sde_steps: default Euler-Maruyama steps of ``sample``.
        t_min: end time of the reverse processes.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: OUSDE,
        parameterization: str = "eps",
        ode_steps: int = 100,
        sde_steps: int = 500,
        t_min: float = 1e-3,
    ) -> None:
        super().__init__()
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.ode_steps, self.sde_steps, self.t_min = int(ode_steps), int(sde_steps), float(t_min)


class DiffusionPrior(GenerativePrior):
    """A diffusion model over ``x`` with the source view ``x = push(z)`` (probability-flow ODE).

    Args:
        net: the network ``net(x (N, *event), t (N,)) -> (N, *event)``.
        sde: the forward SDE (``priors.sde.VPSDE`` or ``MeanRevertingSDE``).
        event_shape: the shape of one draw (default: ``net.event_shape``).
        parameterization: what ``net`` outputs: ``"eps"``, ``"score"`` or ``"x0"``.
        ode_steps: default Heun steps for ``push`` and ``log_prob``.
        sde_steps: default Euler-Maruyama steps for ``sample``.
        t_min: the end time of the reverse processes (and start of ``log_prob``'s ODE); the
            networks' scores blow up as ``t -> 0``, so it is ``1e-3`` by default (0 is fine for
            exact scores).
        exact_divergence_max: largest event size for which ``log_prob`` uses the exact divergence.
        validate_args: Pyro/torch argument validation flag.

    Example:
        >>> from priors.analytic import Gaussian
        >>> p = Gaussian(torch.zeros(2), torch.eye(2)).as_diffusion(ode_steps=20)
        >>> p.push(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
    """

    has_rsample = True

    def __init__(
        self,
        net: nn.Module,
        sde: OUSDE,
        event_shape: Sequence[int] | None = None,
        parameterization: str = "eps",
        ode_steps: int = 100,
        sde_steps: int = 500,
        t_min: float = 1e-3,
        exact_divergence_max: int = 16,
        validate_args: bool | None = None,
    ) -> None:
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"DiffusionPrior: parameterization must be one of {PARAMETERIZATIONS}, "
                f"got {parameterization!r}"
            )
        if event_shape is None:
            event_shape = getattr(net, "event_shape", None)
            if event_shape is None:
                raise ValueError(
                    "DiffusionPrior: pass event_shape (the net has no event_shape attribute)"
                )
        if not 0 <= t_min < sde.T:
            raise ValueError(f"DiffusionPrior: t_min must be in [0, T={sde.T}), got {t_min}")
        self.parameterization = parameterization
        self.ode_steps, self.sde_steps = int(ode_steps), int(sde_steps)
        self.t_min = float(t_min)
        self.exact_divergence_max = int(exact_divergence_max)
        module = DiffusionModel(net, sde, parameterization, ode_steps, sde_steps, t_min)
        super().__init__(module, event_shape, validate_args=validate_args)

    @classmethod
    def from_module(
        cls,
        module: DiffusionModel,
        event_shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
    ) -> DiffusionPrior:
        """Wrap a ``DiffusionModel`` (e.g. rebuilt by the zoo), sharing its weights."""
        prior = cls(
            module.net,
            module.sde,
            event_shape=event_shape,
            parameterization=module.parameterization,
            ode_steps=module.ode_steps,
            sde_steps=module.sde_steps,
            t_min=module.t_min,
            validate_args=validate_args,
        )
        prior.module = module
        return prior

    # ------------------------------------------------------------------ parts
    @property
    def net(self) -> nn.Module:
        return self.module.net

    @property
    def sde(self) -> OUSDE:
        return self.module.sde

    def time_grid(self, steps: int, like: Tensor | None = None) -> Tensor:
        """The reverse-time grid ``linspace(T, t_min, steps + 1)`` (decreasing), `(steps + 1,)`."""
        ref = self._reference() if like is None else like
        return torch.linspace(
            self.sde.T, self.t_min, steps + 1, device=ref.device, dtype=ref.dtype
        )

    def _split(self, x: Tensor, t: Tensor | float, site: str) -> tuple[Tensor, Tensor, Sequence]:
        """Flatten ``x`` to `(N, *event)` and ``t`` to `(N,)`."""
        flat, batch = self._flatten_event(x, site)  # (N, D)
        flat = flat.reshape((-1,) + tuple(self.event_shape))  # (N, *event)
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.dim() and tuple(t.shape) != tuple(batch):
            raise ValueError(
                f"{type(self).__name__}.{site}: t must be a scalar or have the batch shape "
                f"{tuple(batch)} of x, got shape {tuple(t.shape)}"
            )
        return flat, t.expand(batch).reshape(-1), batch  # (N, *event), (N,)

    def _predict(self, x: Tensor, t: Tensor, site: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(eps_hat, score, x0_hat)`` at ``x`` `(..., *event)`, each of ``x``'s shape."""
        flat, tf, batch = self._split(x, t, site)
        out = self.net(flat, tf)  # (N, *event)
        alpha, std = self.sde.marginal(tf)
        shape = (-1,) + (1,) * len(self.event_shape)
        alpha, std = alpha.reshape(shape), std.reshape(shape)  # (N, 1, ..., 1)
        mu = torch.as_tensor(self.sde.mu, device=x.device, dtype=x.dtype)
        if self.parameterization == "eps":
            eps = out
            score = -eps / std
            x0 = mu + (flat - mu - std * eps) / alpha
        elif self.parameterization == "score":
            score = out
            eps = -std * score
            x0 = mu + (flat - mu - std * eps) / alpha
        else:
            x0 = out
            eps = (flat - mu - alpha * (x0 - mu)) / std
            score = -eps / std
        full = batch + self.event_shape
        return eps.reshape(full), score.reshape(full), x0.reshape(full)

    # ------------------------------------------------------------------ what samplers use
    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\nabla_x \log p_t(x)`; ``x`` is `(..., *event)`, ``t`` a scalar or `(...)`."""
        return self._predict(x, t, "score")[1]

    def noise(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""The predicted noise :math:`\hat\varepsilon = -\sigma_t \nabla\log p_t(x)`."""
        return self._predict(x, t, "noise")[0]

    def denoise(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Tweedie's :math:`\hat x_0 = E[x_0 \mid x_t = x] = \mu + (x - \mu + \sigma_t^2 s)/\alpha_t`."""
        return self._predict(x, t, "denoise")[2]

    def pf_ode_drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""The probability-flow velocity :math:`f(x, t) - \tfrac12 g(t)^2 \nabla\log p_t(x)`."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        g2 = self._expand_t(self.sde.diffusion(t) ** 2, x)
        return self.sde.drift(x, t) - 0.5 * g2 * self.score(x, t)

    def reverse_drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""The reverse-SDE drift :math:`f(x, t) - g(t)^2 \nabla\log p_t(x)` (in forward time)."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        g2 = self._expand_t(self.sde.diffusion(t) ** 2, x)
        return self.sde.drift(x, t) - g2 * self.score(x, t)

    def _expand_t(self, v: Tensor, x: Tensor) -> Tensor:
        return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))

    # ------------------------------------------------------------------ maps
    def push(
        self, z: Tensor, steps: int | None = None, callback: Callable | None = None
    ) -> Tensor:
        """The probability-flow ODE map from ``x_T = mu + lam z`` to ``x_{t_min}`` (Heun).

        Args:
            z: standard-normal source draws, `(..., *event)`.
            steps: Heun steps (default ``ode_steps``); ``2 * steps`` network calls.
            callback: called after each step with ``{"i", "t", "x"}``.

        Returns:
            `(..., *event)` data draws; differentiable in ``z`` and the network's weights.
        """
        flat, batch = self._flatten_source(z)  # (N, D)
        x = self.sde.prior_sample(flat.reshape((-1,) + tuple(self.event_shape)))  # (N, *event)
        ts = self.time_grid(self.ode_steps if steps is None else steps, like=z)
        x = heun(self.pf_ode_drift, x, ts, callback)
        return x.reshape(batch + self.event_shape)

    def sample(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        generator: torch.Generator | None = None,
        steps: int | None = None,
        callback: Callable | None = None,
    ) -> Tensor:
        """Draws by the reverse SDE (Euler-Maruyama), without gradients.

        Args:
            sample_shape: leading shape of the draws.
            generator: the source of randomness (on the prior's device).
            steps: Euler-Maruyama steps (default ``sde_steps``), one network call each.
            callback: called after each step with ``{"i", "t", "x"}``.

        Returns:
            `(*sample_shape, *batch_shape, *event_shape)` draws.
        """
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        ref = self._reference()
        ts = self.time_grid(self.sde_steps if steps is None else steps)

        def randn() -> Tensor:
            return torch.randn(shape, generator=generator, device=ref.device, dtype=ref.dtype)

        with torch.no_grad():
            x = self.sde.prior_sample(randn())
            n = len(ts) - 1
            for k in range(n):
                h = ts[k] - ts[k + 1]  # > 0, reverse time
                x = x - h * self.reverse_drift(x, ts[k])
                if k < n - 1:  # the last step returns the mean (no noise)
                    x = x + self.sde.diffusion(ts[k]) * h.sqrt() * randn()
                if callback is not None:
                    callback({"i": k, "t": ts[k + 1], "x": x})
        return x

    def sample_with_generator(
        self, sample_shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """Reverse-SDE draws from ``generator`` (see ``sample``)."""
        return self.sample(sample_shape, generator=generator)

    # ------------------------------------------------------------------ density
    def ode_log_prob(
        self,
        x: Tensor,
        steps: int | None = None,
        exact: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """Log-density by the probability-flow ODE's change of variables, with diagnostics.

        Args:
            x: points `(..., *event)`.
            steps: Heun steps from ``t_min`` to ``T`` (default ``ode_steps``).
            exact: exact divergence (default: ``event size <= exact_divergence_max``); else a
                Hutchinson estimate with one fixed Rademacher probe per point.
            generator: source of the Hutchinson probe (default: a fixed seed 0 on CPU).

        Returns:
            ``(log_prob, info)``: `(...)` values (detached) and
            ``{"nfe": network evaluations, "vjp": backward passes,
            "divergence": "exact" | "hutchinson", "steps"}``.
        """
        if self._validate_args:
            self._validate_value(x)
        flat, batch = self._flatten_event(x, "log_prob")  # (N, D)
        x0 = flat.reshape((-1,) + tuple(self.event_shape))  # (N, *event)
        exact = self.event_shape.numel() <= self.exact_divergence_max if exact is None else exact
        steps = self.ode_steps if steps is None else steps
        ts = self.time_grid(steps, like=x).flip(0)  # t_min -> T
        x_T, integral, info = change_of_variables(self.pf_ode_drift, x0, ts, exact, generator)
        lp = self.sde.prior_log_prob(x_T, len(self.event_shape)) + integral  # (N,)
        return lp.reshape(batch), info

    def log_prob(self, x: Tensor) -> Tensor:
        """``ode_log_prob(x)[0]`` at the default steps (see there; not differentiable)."""
        return self.ode_log_prob(x)[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_shape={tuple(self.event_shape)}, sde={self.sde}, "
            f"parameterization={self.parameterization!r}, ode_steps={self.ode_steps}, "
            f"sde_steps={self.sde_steps}, t_min={self.t_min}, device={self.device}, "
            f"dtype={self.dtype})"
        )


def dsm_loss(
    prior: DiffusionPrior, x0: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""Denoising score matching in the prior's parameterisation, mean over the batch.

    :math:`t \sim U(t_{\min}, T)`, :math:`x_t = \mu + \alpha_t(x_0 - \mu) + \sigma_t\varepsilon`;
    the loss is :math:`\|\hat\varepsilon - \varepsilon\|^2` (``"eps"``),
    :math:`\|\sigma_t \hat s + \varepsilon\|^2` (``"score"``, i.e. the
    :math:`\sigma_t^2`-weighted score loss) or :math:`\|\hat x_0 - x_0\|^2` (``"x0"``), summed
    over the event.

    Args:
        prior: the diffusion prior being trained.
        x0: data `(N, *event)`.
        generator: source of ``t`` and the noise.

    Returns:
        A scalar.
    """
    n = x0.shape[0]
    sde = prior.sde
    u = torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
    t = prior.t_min + (sde.T - prior.t_min) * u  # (N,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = sde.perturb(x0, t, noise)
    out = prior.net(xt, t)  # (N, *event)
    if prior.parameterization == "eps":
        err = out - noise
    elif prior.parameterization == "score":
        _, std = sde.marginal(t)
        err = std.reshape((-1,) + (1,) * (x0.dim() - 1)) * out + noise
    else:
        err = out - x0
    return err.pow(2).flatten(1).sum(-1).mean()
