r"""``FlowMatchingPrior``: a velocity field with the linear (rectified) path, seen as a generative prior.

Convention: **t = 0 is noise, t = 1 is data.** The conditional path is
:math:`x_t = (1 - t) z + t x_1` with :math:`z \sim N(0, I)`, and the network learns
:math:`v(x, t) = E[x_1 - z \mid x_t = x]` (conditional flow matching; ``fm_loss``).
``push(z)`` integrates :math:`\dot x = v(x, t)` from 0 to 1 with Heun (``steps``, ``2 * steps``
network calls), deterministic and differentiable; ``log_prob`` runs the ODE backwards from 1 to
0 with the instantaneous change of variables (exact divergence for event size ``<= 16``, else a
Hutchinson estimate with a fixed Rademacher probe; see ``priors.ode``).

References:
    Flow Matching for Generative Modeling (https://arxiv.org/abs/2210.02747).
    Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow
    (https://arxiv.org/abs/2209.03003).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from priors.base import GenerativePrior
from priors.ode import change_of_variables, heun

__all__ = ["FlowMatchingPrior", "flow_matching_loss", "fm_loss"]


def fm_loss(net: nn.Module, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
    r"""Conditional flow-matching loss per sample, :math:`\|v(x_t, t) - (x_1 - z)\|^2`.

    Args:
        net: ``net(x (N, *event), t (N,)) -> (N, *event)``.
        x1: data `(N, *event)`.
        z: standard-normal noise `(N, *event)`.
        t: times in ``[0, 1]``, `(N,)`.

    Returns:
        `(N,)` losses.
    """
    tt = t.reshape((-1,) + (1,) * (x1.dim() - 1))
    xt = (1 - tt) * z + tt * x1
    return (net(xt, t) - (x1 - z)).pow(2).flatten(1).sum(-1)


def flow_matching_loss(
    prior: FlowMatchingPrior, x1: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """``fm_loss`` of ``prior.net`` with fresh noise and ``t ~ U(0, 1)``, mean over the batch."""
    z = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
    return fm_loss(prior.net, x1, z, t).mean()


class FlowMatchingPrior(GenerativePrior):
    """A flow-matching model ``x = push(z)``: the velocity ODE from noise (t=0) to data (t=1).

    Args:
        velocity_net: ``net(x (N, *event), t (N,)) -> (N, *event)``.
        event_shape: the shape of one draw (default ``velocity_net.event_shape``).
        steps: default Heun steps for ``push`` and ``log_prob``.
        exact_divergence_max: largest event size for the exact divergence in ``log_prob``.
        validate_args: Pyro/torch argument validation flag.
    """

    has_rsample = True

    def __init__(
        self,
        velocity_net: nn.Module,
        event_shape: Sequence[int] | None = None,
        steps: int = 100,
        exact_divergence_max: int = 16,
        validate_args: bool | None = None,
    ) -> None:
        if event_shape is None:
            event_shape = getattr(velocity_net, "event_shape", None)
            if event_shape is None:
                raise ValueError(
                    "FlowMatchingPrior: pass event_shape (the net has no event_shape attribute)"
                )
        self.steps = int(steps)
        self.exact_divergence_max = int(exact_divergence_max)
        super().__init__(velocity_net, event_shape, validate_args=validate_args)

    @property
    def net(self) -> nn.Module:
        return self.module

    def time_grid(self, steps: int, like: Tensor | None = None) -> Tensor:
        """The grid ``linspace(0, 1, steps + 1)`` (noise -> data), `(steps + 1,)`."""
        ref = self._reference() if like is None else like
        return torch.linspace(0.0, 1.0, steps + 1, device=ref.device, dtype=ref.dtype)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``v(x, t)``; ``x`` is `(..., *event)`, ``t`` a scalar or `(...)`; returns ``x``'s shape."""
        flat, batch = self._flatten_event(x, "velocity")  # (N, D)
        flat = flat.reshape((-1,) + tuple(self.event_shape))  # (N, *event)
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.dim() and tuple(t.shape) != tuple(batch):
            raise ValueError(
                f"{type(self).__name__}.velocity: t must be a scalar or have the batch shape "
                f"{tuple(batch)} of x, got shape {tuple(t.shape)}"
            )
        out = self.net(flat, t.expand(batch).reshape(-1))  # (N, *event)
        return out.reshape(batch + self.event_shape)

    def push(
        self, z: Tensor, steps: int | None = None, callback: Callable | None = None
    ) -> Tensor:
        """Heun from t=0 (``z``, `(..., *event)`) to t=1; returns `(..., *event)`."""
        flat, batch = self._flatten_source(z)  # (N, D)
        x = flat.reshape((-1,) + tuple(self.event_shape))  # (N, *event)
        x = heun(self.velocity, x, self.time_grid(steps or self.steps, like=z), callback)
        return x.reshape(batch + self.event_shape)

    def sample(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``push(z)`` without gradients, ``z`` from ``generator``."""
        return self.sample_with_generator(sample_shape, generator)

    def ode_log_prob(
        self,
        x: Tensor,
        steps: int | None = None,
        exact: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """Log-density by the change of variables along the ODE from t=1 back to t=0.

        Args and returns as ``DiffusionPrior.ode_log_prob``: ``(log_prob (...), info)`` with
        ``info = {"nfe", "vjp", "divergence", "steps"}``; values are detached.
        """
        if self._validate_args:
            self._validate_value(x)
        flat, batch = self._flatten_event(x, "log_prob")  # (N, D)
        x1 = flat.reshape((-1,) + tuple(self.event_shape))  # (N, *event)
        d = self.event_shape.numel()
        exact = d <= self.exact_divergence_max if exact is None else exact
        steps = steps or self.steps
        ts = self.time_grid(steps, like=x).flip(0)  # 1 -> 0
        z, integral, info = change_of_variables(self.velocity, x1, ts, exact, generator)
        base = -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return (base + integral).reshape(batch), info

    def log_prob(self, x: Tensor) -> Tensor:
        """``ode_log_prob(x)[0]`` at the default steps (not differentiable)."""
        return self.ode_log_prob(x)[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_shape={tuple(self.event_shape)}, steps={self.steps}, "
            f"device={self.device}, dtype={self.dtype})"
        )
