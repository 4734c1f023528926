r"""Fixed-step ODE solvers and the instantaneous change of variables, shared by the ODE priors.

A vector field is a callable ``f(x, t)`` with ``x`` of shape `(N, *event)` and ``t`` a 0-d tensor,
returning `(N, *event)`. A time grid ``ts`` is a 1-D tensor, increasing or decreasing; the
solvers integrate from ``ts[0]`` to ``ts[-1]``.

Change of variables: along :math:`\dot x = f(x, t)`, :math:`\frac{d}{dt}\log p_t(x_t) =
-\nabla\cdot f(x_t, t)`, hence

.. math::
    \log p_{t_0}(x_{t_0}) = \log p_{t_1}(x_{t_1}) + \int_{t_0}^{t_1} \nabla\cdot f(x_t, t)\,dt,

which ``integrate_with_divergence`` returns as ``(x_{t_1}, integral, nfe)``.

References:
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
    (https://arxiv.org/abs/1810.01367).
    Elucidating the Design Space of Diffusion-Based Generative Models, Algorithm 1
    (https://arxiv.org/abs/2206.00364).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["change_of_variables", "divergence", "euler", "heun", "integrate_with_divergence"]

VectorField = Callable[[Tensor, Tensor], Tensor]


def euler(f: VectorField, x: Tensor, ts: Tensor, callback: Callable | None = None) -> Tensor:
    """Explicit Euler from ``ts[0]`` to ``ts[-1]`` (``len(ts) - 1`` function evaluations)."""
    for k in range(len(ts) - 1):
        x = x + (ts[k + 1] - ts[k]) * f(x, ts[k])
        if callback is not None:
            callback({"i": k, "t": ts[k + 1], "x": x})
    return x


def heun(f: VectorField, x: Tensor, ts: Tensor, callback: Callable | None = None) -> Tensor:
    """Heun's second-order method (EDM Algorithm 1 without churn); ``2 (len(ts) - 1)`` NFEs.

    Differentiable in ``x`` and in the parameters of ``f`` (plain torch operations).
    """
    for k in range(len(ts) - 1):
        h = ts[k + 1] - ts[k]
        d = f(x, ts[k])
        x_euler = x + h * d
        x = x + 0.5 * h * (d + f(x_euler, ts[k + 1]))
        if callback is not None:
            callback({"i": k, "t": ts[k + 1], "x": x})
    return x


def divergence(
    f: VectorField, x: Tensor, t: Tensor, probe: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""``(f(x, t), div f(x, t))``, both detached; ``x`` is `(N, *event)`, the divergence `(N,)`.

    With ``probe=None`` the divergence is exact (one backward pass per event coordinate, meant
    for event sizes up to ~16). With a probe :math:`\varepsilon` of ``x``'s shape it is
    Hutchinson's unbiased estimate :math:`\varepsilon^\top (\partial f / \partial x)\varepsilon`.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x, t)
        if probe is None:
            flat = v.reshape(v.shape[0], -1)  # (N, D)
            cols = []
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                cols.append(g.reshape(g.shape[0], -1)[:, i])
            div = torch.stack(cols, -1).sum(-1)  # (N,)
        else:
            (g,) = torch.autograd.grad((v * probe).sum(), x)
            div = (g * probe).reshape(x.shape[0], -1).sum(-1)  # (N,)
    return v.detach(), div.detach()


def integrate_with_divergence(
    f: VectorField, x: Tensor, ts: Tensor, probe: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    r"""Heun on the augmented system :math:`(\dot x, \dot\ell) = (f, \nabla\cdot f)`.

    Args:
        f: the vector field.
        x: the start state at ``ts[0]``, `(N, *event)`.
        ts: the time grid (1-D).
        probe: ``None`` for the exact divergence, else a fixed Hutchinson probe of ``x``'s shape
            (the same probe at every step, so the estimate is one consistent path integral).

    Returns:
        ``(x_end, integral, nfe)``: the state at ``ts[-1]`` `(N, *event)`, the signed integral
        :math:`\int_{ts[0]}^{ts[-1]} \nabla\cdot f\,dt` `(N,)`, and the number of evaluations of
        ``f`` (each with its divergence).
    """
    x = x.detach()
    integral = x.new_zeros(x.shape[0])
    nfe = 0
    for k in range(len(ts) - 1):
        h = ts[k + 1] - ts[k]
        d, div = divergence(f, x, ts[k], probe)
        x_euler = x + h * d
        d2, div2 = divergence(f, x_euler, ts[k + 1], probe)
        x = x + 0.5 * h * (d + d2)
        integral = integral + 0.5 * h * (div + div2)
        nfe += 2
    return x, integral, nfe


def change_of_variables(
    f: VectorField,
    x: Tensor,
    ts: Tensor,
    exact: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, dict]:
    r"""Transport data ``x`` along ``f`` to the reference end of ``ts``, with the divergence.

    The shared body of the ODE priors' ``ode_log_prob``: with ``exact`` the divergence is
    computed exactly (one backward pass per dimension), else it is a Hutchinson estimate with
    one fixed Rademacher probe per point drawn from ``generator`` (default: seed 0 on CPU), so
    the same points always give the same estimate.

    Args:
        f: the vector field ``f(x, t)``.
        x: data points `(N, *event)` at ``ts[0]``.
        ts: the time grid (1-D), from the data end to the reference end.
        exact: exact divergence or a Hutchinson estimate.
        generator: source of the Hutchinson probe.

    Returns:
        ``(x_end, integral, info)``: the reference-end state `(N, *event)`, the divergence
        integral `(N,)`, and ``{"nfe", "vjp", "divergence", "steps"}``.
    """
    probe = None
    if not exact:
        gen = torch.Generator().manual_seed(0) if generator is None else generator
        probe = torch.randint(0, 2, x.shape, generator=gen, device=gen.device)
        probe = (2 * probe - 1).to(device=x.device, dtype=x.dtype)
    x_end, integral, nfe = integrate_with_divergence(f, x, ts, probe)
    d = x[0].numel()
    info = {
        "nfe": nfe,  # network forward evaluations
        "vjp": nfe * (d if exact else 1),  # vector-Jacobian products for the divergence
        "divergence": "exact" if exact else "hutchinson",
        "steps": len(ts) - 1,
    }
    return x_end, integral, info
