r"""Linear (Ornstein-Uhlenbeck type) forward SDEs with closed-form marginals.

Both SDEs here are mean-reverting OU processes, elementwise and with a scalar schedule:

.. math::
    dx = \theta_t (\mu - x)\, dt + \sigma_t\, dw, \qquad \sigma_t^2 = 2 \lambda^2 \theta_t,

so with :math:`\bar\theta_{s:t} = \int_s^t \theta_r dr` and :math:`\bar\theta_t = \bar\theta_{0:t}`

.. math::
    x_t \mid x_s \sim N\big(\mu + (x_s - \mu) e^{-\bar\theta_{s:t}},\;
        \lambda^2 (1 - e^{-2 \bar\theta_{s:t}}) I\big).

- ``VPSDE``: the variance-preserving SDE of Song et al. (2021), :math:`\mu = 0`, :math:`\lambda = 1`,
  :math:`\theta_t = \beta(t) / 2` with :math:`\beta` linear from ``beta_min`` to ``beta_max`` on
  ``[0, T]``.
- ``MeanRevertingSDE``: the IR-SDE of Luo et al. (2023), with the paper's discrete cosine/linear
  :math:`\theta` schedule on integer steps ``i = 0..T``, interpolated linearly in between,
  and a time unit :math:`\Delta` such that :math:`e^{-\bar\theta_T} = \text{eps}`. Time runs over
  ``[0, T]`` in units of steps, so one Euler step of size 1 is the paper's step.

Shape conventions (every method):
    ``t`` is a python float, a 0-d tensor, or a tensor whose shape is the *leading* shape of ``x``
    (e.g. ``(N,)`` for ``x`` of shape ``(N, *event)``); it is broadcast over the trailing dims.
    Methods of ``t`` alone (``marginal``, ``diffusion``, ``rate``) return tensors of ``t``'s shape.
    ``mu`` (mean-reverting SDE only) is ``None`` (use the SDE's own ``mu``), a float, or a tensor
    broadcastable to ``x``.

References:
    Score-Based Generative Modeling through Stochastic Differential Equations
    (https://arxiv.org/abs/2011.13456).
    Image Restoration with Mean-Reverting Stochastic Differential Equations
    (https://arxiv.org/abs/2301.11699).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["OUSDE", "VPSDE", "MeanRevertingSDE"]


def _expand_right(t: Tensor, x: Tensor) -> Tensor:
    """Reshape ``t`` (a leading shape of ``x``, or 0-d) to broadcast against ``x``."""
    if t.dim() > x.dim() or tuple(t.shape) != tuple(x.shape[: t.dim()]):
        raise ValueError(
            f"SDE: t must be a scalar or have the leading shape of x; got t of shape "
            f"{tuple(t.shape)} and x of shape {tuple(x.shape)}"
        )
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


class OUSDE(nn.Module, ABC):
    r"""Base class: :math:`dx = \theta_t(\mu - x)dt + \sqrt{2\lambda^2\theta_t}\,dw` on ``[0, T]``.

    Subclasses define the rate :math:`\theta_t` (``rate``) and its integral
    :math:`\bar\theta_t` (``integrated_rate``). Everything else is closed form here. The module
    holds its schedule in buffers, so ``.to(device, dtype)`` moves it with the network.

    Args:
        T: the final time.
        lam: the stationary standard deviation :math:`\lambda`.
        mu: the mean the process reverts to (a float or a tensor broadcastable to ``x``).
    """

    def __init__(self, T: float, lam: float = 1.0, mu: float | Tensor = 0.0) -> None:
        super().__init__()
        self.T = float(T)
        self.lam = float(lam)
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.get_default_dtype()))

    # ------------------------------------------------------------------ schedule (subclasses)
    @abstractmethod
    def rate(self, t: Tensor | float) -> Tensor:
        r""":math:`\theta_t`, same shape as ``t``."""

    @abstractmethod
    def integrated_rate(self, t: Tensor | float) -> Tensor:
        r""":math:`\bar\theta_t = \int_0^t \theta_r dr`, same shape as ``t``."""

    # ------------------------------------------------------------------ helpers
    def _t(self, t: Tensor | float, like: Tensor | None = None) -> Tensor:
        ref = self.mu if like is None else like
        return torch.as_tensor(t, device=ref.device, dtype=ref.dtype)

    def _mu(self, x: Tensor, mu: Tensor | float | None) -> Tensor:
        return torch.as_tensor(self.mu if mu is None else mu, device=x.device, dtype=x.dtype)

    # ------------------------------------------------------------------ coefficients
    def diffusion(self, t: Tensor | float) -> Tensor:
        r"""The diffusion coefficient :math:`\sigma_t = \sqrt{2\lambda^2\theta_t}`, shape of ``t``."""
        return (2 * self.lam**2 * self.rate(t)).sqrt()

    def drift(self, x: Tensor, t: Tensor | float, mu: Tensor | float | None = None) -> Tensor:
        r"""The forward drift :math:`\theta_t(\mu - x)`; ``x`` is `(..., *event)`, same out."""
        t = _expand_right(self._t(t, x), x)
        return self.rate(t) * (self._mu(x, mu) - x)

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""``(mean_coeff, std)`` of :math:`x_t \mid x_0`, each of ``t``'s shape.

        :math:`x_t = \mu + \text{mean\_coeff}\,(x_0 - \mu) + \text{std}\,\varepsilon`, with
        ``mean_coeff`` :math:`= e^{-\bar\theta_t}` and
        ``std`` :math:`= \lambda\sqrt{1 - e^{-2\bar\theta_t}}` (for the VP SDE,
        :math:`\alpha_t` and :math:`\sqrt{1 - \alpha_t^2}`).
        """
        tb = self.integrated_rate(t)
        return torch.exp(-tb), self.lam * (-torch.expm1(-2 * tb)).clamp_min(0).sqrt()

    def transition(self, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""``(coeff, std)`` of :math:`x_t \mid x_s` for ``s <= t`` (shapes of ``s``/``t``)."""
        tb = self.integrated_rate(t) - self.integrated_rate(s)
        return torch.exp(-tb), self.lam * (-torch.expm1(-2 * tb)).clamp_min(0).sqrt()

    def marginal_mean(
        self, x0: Tensor, t: Tensor | float, mu: Tensor | float | None = None
    ) -> Tensor:
        r"""The mean :math:`\mu + e^{-\bar\theta_t}(x_0 - \mu)` of :math:`x_t \mid x_0`."""
        coeff, _ = self.marginal(_expand_right(self._t(t, x0), x0))
        m = self._mu(x0, mu)
        return m + coeff * (x0 - m)

    def perturb(
        self, x0: Tensor, t: Tensor | float, noise: Tensor, mu: Tensor | float | None = None
    ) -> Tensor:
        r"""A draw :math:`x_t = \text{mean}(x_0) + \text{std}_t\,\varepsilon` given the noise."""
        _, std = self.marginal(_expand_right(self._t(t, x0), x0))
        return self.marginal_mean(x0, t, mu) + std * noise

    def conditional_score(
        self, x: Tensor, x0: Tensor, t: Tensor | float, mu: Tensor | float | None = None
    ) -> Tensor:
        r"""The exact score :math:`\nabla_x \log p_t(x \mid x_0) = -(x - m_t)/v_t`."""
        _, std = self.marginal(_expand_right(self._t(t, x), x))
        return -(x - self.marginal_mean(x0, t, mu)) / std**2

    # ------------------------------------------------------------------ prior at t = T
    def prior_mean_std(self) -> tuple[Tensor, float]:
        r"""The reference law at ``T``: ``(mu, lam)``, i.e. :math:`N(\mu, \lambda^2 I)`."""
        return self.mu, self.lam

    def prior_sample(self, z: Tensor, mu: Tensor | float | None = None) -> Tensor:
        r""":math:`x_T = \mu + \lambda z` for standard-normal ``z``."""
        return self._mu(z, mu) + self.lam * z

    def prior_log_prob(
        self, x: Tensor, event_dim: int, mu: Tensor | float | None = None
    ) -> Tensor:
        r"""Log-density of :math:`N(\mu, \lambda^2 I)`, summed over the last ``event_dim`` dims."""
        z = (x - self._mu(x, mu)) / self.lam
        lp = -0.5 * z**2 - math.log(self.lam) - 0.5 * math.log(2 * math.pi)
        return lp.sum(tuple(range(-event_dim, 0))) if event_dim else lp

    # ------------------------------------------------------------------ bridge posterior
    def bridge(
        self,
        x_t: Tensor,
        x0: Tensor,
        s: Tensor | float,
        t: Tensor | float,
        mu: Tensor | float | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""The posterior :math:`p(x_s \mid x_t, x_0) = N(\text{mean}, \text{var}\,I)`, ``s < t``.

        With :math:`A = e^{-\bar\theta_{s:t}}`, :math:`C = e^{-\bar\theta_s}`, :math:`B = AC`:

        .. math::
            \text{mean} = \mu + \frac{A(1 - C^2)(x_t - \mu) + C(1 - A^2)(x_0 - \mu)}{1 - B^2},
            \quad \text{var} = \lambda^2 \frac{(1 - A^2)(1 - C^2)}{1 - B^2}.

        For the mean-reverting SDE with ``s = i - 1``, ``t = i`` this is the IR-SDE's "optimal
        reverse path" (methods.md §2.4); for the VP SDE it is the DDPM posterior.

        Returns:
            ``mean`` of ``x_t``'s shape and ``var`` broadcastable to it.
        """
        s = _expand_right(self._t(s, x_t), x_t)
        t = _expand_right(self._t(t, x_t), x_t)
        m = self._mu(x_t, mu)
        A, _ = self.transition(s, t)
        C, _ = self.marginal(s)
        one_m_A2 = -torch.expm1(-2 * (self.integrated_rate(t) - self.integrated_rate(s)))
        one_m_C2 = -torch.expm1(-2 * self.integrated_rate(s))
        one_m_B2 = -torch.expm1(-2 * self.integrated_rate(t))
        mean = m + (A * one_m_C2 * (x_t - m) + C * one_m_A2 * (x0 - m)) / one_m_B2
        var = self.lam**2 * one_m_A2 * one_m_C2 / one_m_B2
        return mean, var


class VPSDE(OUSDE):
    r"""The variance-preserving SDE :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw`.

    :math:`\beta(t) = \beta_{\min} + (\beta_{\max} - \beta_{\min})\,t / T` on ``[0, T]``; the
    marginal is :math:`x_t = \alpha_t x_0 + \sqrt{1 - \alpha_t^2}\,\varepsilon` with
    :math:`\alpha_t = \exp(-\tfrac12\int_0^t \beta)`. The reference law at ``T`` is ``N(0, I)``
    (exact up to :math:`\alpha_T`, ``6.7e-3`` for the defaults).

    Args:
        beta_min: :math:`\beta(0)`.
        beta_max: :math:`\beta(T)`.
        T: the final time.

    Example:
        >>> sde = VPSDE()
        >>> coeff, std = sde.marginal(torch.tensor([0.0, 1.0]))
        >>> bool(coeff[0] == 1 and std[0] == 0)
        True
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__(T=T, lam=1.0, mu=0.0)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor | float) -> Tensor:
        r""":math:`\beta(t)`, same shape as ``t``."""
        t = self._t(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def rate(self, t: Tensor | float) -> Tensor:
        return 0.5 * self.beta(t)

    def integrated_rate(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        return 0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T)

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}"


def _theta_schedule(name: str, T: int) -> Tensor:
    """The IR-SDE's discrete ``theta_i``, ``i = 0..T`` (methods.md §2.5), in float64."""
    if name == "cosine":
        s = 0.008
        x = torch.arange(T + 3, dtype=torch.float64)
        f = torch.cos(((x / (T + 2)) + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return 1 - alphas_cumprod[1 : T + 2]
    if name == "linear":
        scale = 1000 / (T + 1)
        return torch.linspace(1e-4 * scale, 0.02 * scale, T + 1, dtype=torch.float64)
    if name == "constant":
        return torch.ones(T + 1, dtype=torch.float64)
    raise ValueError(
        f"MeanRevertingSDE: schedule must be cosine, linear or constant, got {name!r}"
    )


class MeanRevertingSDE(OUSDE):
    r"""The IR-SDE :math:`dx = \theta_t(\mu - x)dt + \sigma_t dw`, :math:`\sigma_t^2 = 2\lambda^2\theta_t`.

    Time runs over ``[0, T]`` in units of the ``T`` integer steps. The rate is the paper's
    discrete schedule times :math:`\Delta` at the integers, :math:`\theta_i = \Delta\,\theta^{\rm
    paper}_i`, interpolated linearly in between so that fixed-step ODE/SDE solvers keep their
    order (a piecewise-constant rate would make Heun first order). So
    :math:`\bar\theta_i` is the trapezoid sum of the knots (the paper's code uses the right
    Riemann sum; they differ by :math:`(\theta_T - \theta_0)/2`, about 1 % of
    :math:`\bar\theta_T` for T = 100), and :math:`\Delta` makes
    :math:`e^{-\bar\theta_T} = \text{eps}` exactly. The reference law at ``T`` is
    :math:`N(\mu, \lambda^2 I)` (ignoring the residual :math:`\text{eps}\,(x_0 - \mu)`).

    Args:
        lam: the stationary noise level :math:`\lambda` (``max_sigma``; pass it in data units).
        T: the number of steps.
        schedule: ``"cosine"`` (the paper's default), ``"linear"`` or ``"constant"``.
        eps: the terminal mean-reversion residual :math:`e^{-\bar\theta_T}`.
        mu: the default mean :math:`\mu` (override per call with the ``mu`` arguments).

    Example:
        >>> sde = MeanRevertingSDE(lam=0.5, T=100)
        >>> round(float(sde.marginal(100.0)[0]), 6)
        0.005
    """

    def __init__(
        self,
        lam: float = 10.0 / 255,
        T: int = 100,
        schedule: str = "cosine",
        eps: float = 0.005,
        mu: float | Tensor = 0.0,
    ) -> None:
        super().__init__(T=int(T), lam=lam, mu=mu)
        self.schedule, self.eps, self.steps = schedule, float(eps), int(T)
        thetas = _theta_schedule(schedule, self.steps)  # (T + 1,) knots at t = 0..T
        # integral of the piecewise-linear rate at the knots (trapezoid), cum[0] = 0
        cum = torch.cat([thetas.new_zeros(1), (0.5 * (thetas[1:] + thetas[:-1])).cumsum(0)])
        self.delta = -math.log(self.eps) / float(cum[-1])
        # kept in float64 (cast to t's dtype on use) so that e^{-thetabar_T} = eps to 1e-12
        self.register_buffer("thetas", thetas * self.delta)  # rate per unit time at the knots
        self.register_buffer("thetas_cum", cum * self.delta)

    def _knot(self, t: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.floor(t).long().clamp(0, self.steps - 1)
        return k, t.clamp(0, self.T) - k.to(t)

    def rate(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        k, tau = self._knot(t)
        thetas = self.thetas.to(t)
        return thetas[k] + (thetas[k + 1] - thetas[k]) * tau

    def integrated_rate(self, t: Tensor | float) -> Tensor:
        t = self._t(t)
        k, tau = self._knot(t)
        thetas, cum = self.thetas.to(t), self.thetas_cum.to(t)
        return cum[k] + thetas[k] * tau + 0.5 * (thetas[k + 1] - thetas[k]) * tau**2

    def ml_loss(
        self,
        eps_hat: Tensor,
        x_i: Tensor,
        x0: Tensor,
        i: Tensor | float,
        mu: Tensor | float | None = None,
        norm: str = "l1",
    ) -> Tensor:
        r"""The IR-SDE maximum-likelihood loss per sample (methods.md §2.4).

        One reverse Euler step of size 1 from ``i`` with the network's score
        :math:`s = -\hat\varepsilon / \bar\sigma_i` is regressed onto the bridge mean
        :math:`x^*_{i-1}(x_i, x_0)`:
        :math:`\| x_i - [\theta_i(\mu - x_i) - \sigma_i^2 s] - x^*_{i-1} \|`.

        Args:
            eps_hat: predicted noise, `(N, *event)`.
            x_i: the state at step ``i``, `(N, *event)`.
            x0: the clean data, `(N, *event)`.
            i: integer steps in ``1..T``, a scalar or `(N,)`.
            mu: the mean (default: the SDE's ``mu``).
            norm: ``"l1"`` (the paper's default, summed absolute error) or ``"l2"`` (squared).

        Returns:
            A `(N,)` tensor of losses.
        """
        i = self._t(i, x_i)
        it = _expand_right(i, x_i)
        _, std = self.marginal(it)
        score = -eps_hat / std
        x_prev = x_i - (self.drift(x_i, i, mu) - self.diffusion(it) ** 2 * score)
        target, _ = self.bridge(x_i, x0, i - 1, i, mu)
        diff = (x_prev - target).flatten(1)  # (N, D)
        if norm == "l1":
            return diff.abs().sum(-1)
        if norm == "l2":
            return diff.pow(2).sum(-1)
        raise ValueError(f"MeanRevertingSDE.ml_loss: norm must be 'l1' or 'l2', got {norm!r}")

    def extra_repr(self) -> str:
        return f"lam={self.lam}, T={self.steps}, schedule={self.schedule!r}, eps={self.eps}"
