"""Analytic priors with closed forms: the oracles that samplers and estimators are tested against.

``Gaussian(loc, covariance_matrix)`` is a ``GenerativePrior`` with an affine map
``push(z) = loc + L z`` (``L`` the Cholesky factor), so every source-space sampler runs on it,
and its posterior under linear-Gaussian observations is known exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from priors.base import GenerativePrior

__all__ = ["Gaussian"]


class _GaussianModule(nn.Module):
    def __init__(self, loc: Tensor, covariance_matrix: Tensor) -> None:
        super().__init__()
        self.register_buffer("loc", loc)
        self.register_buffer("covariance_matrix", covariance_matrix)
        self.register_buffer("scale_tril", torch.linalg.cholesky(covariance_matrix))


class Gaussian(GenerativePrior):
    """A multivariate normal prior N(loc, covariance_matrix) seen as a generative prior.

    ``loc`` has ``D = prod(event_shape)`` entries and ``covariance_matrix`` is ``D x D``; draws
    are reshaped to ``event_shape`` (default ``(D,)``), e.g. ``(2, 2)`` for two sources in 2-D.

    Args:
        loc: a `D` tensor (or any tensor with D entries).
        covariance_matrix: a `D x D` symmetric positive-definite tensor.
        event_shape: the shape of one draw; ``prod(event_shape)`` must equal ``D``.

    Example:
        >>> p = Gaussian(torch.zeros(2), torch.eye(2))
        >>> p.sample((5,)).shape
        torch.Size([5, 2])
    """

    has_pull = True

    def __init__(
        self,
        loc: Tensor,
        covariance_matrix: Tensor,
        event_shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        loc = torch.as_tensor(loc).reshape(-1)
        cov = torch.as_tensor(covariance_matrix, device=loc.device, dtype=loc.dtype)
        d = loc.numel()
        if cov.shape != (d, d):
            raise ValueError(
                f"Gaussian: covariance_matrix must be {d} x {d} to match loc, "
                f"got shape {tuple(cov.shape)}"
            )
        event_shape = torch.Size((d,) if event_shape is None else event_shape)
        if event_shape.numel() != d:
            raise ValueError(
                f"Gaussian: event_shape {tuple(event_shape)} has {event_shape.numel()} entries, "
                f"loc has {d}"
            )
        super().__init__(_GaussianModule(loc, cov), event_shape, validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        """The mean as a flat `D` tensor."""
        return self.module.loc

    @property
    def covariance_matrix(self) -> Tensor:
        """The `D x D` covariance."""
        return self.module.covariance_matrix

    @property
    def scale_tril(self) -> Tensor:
        return self.module.scale_tril

    @property
    def mean(self) -> Tensor:
        return self.loc.reshape(self.event_shape).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        var = self.covariance_matrix.diagonal().reshape(self.event_shape)
        return var.expand(self.batch_shape + self.event_shape)

    def push(self, z: Tensor) -> Tensor:
        """``x = loc + L z``; ``z`` is `(..., *event_shape)`, returns `(..., *event_shape)`."""
        flat, batch = self._flatten_source(z)  # (N, D)
        x = self.loc + flat @ self.scale_tril.mT  # (N, D)
        return x.reshape(batch + self.event_shape)

    def pull(self, x: Tensor) -> Tensor:
        """``z = L^{-1}(x - loc)``; shapes as in ``push``."""
        flat, batch = self._flatten_event(x, "pull")  # (N, D)
        z = torch.linalg.solve_triangular(
            self.scale_tril, (flat - self.loc).mT, upper=False
        ).mT  # (N, D)
        return z.reshape(batch + self.source_event_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density; ``x`` is `(..., *event_shape)`, returns `(...)`."""
        if self._validate_args:
            self._validate_value(x)
        z = self.pull(x)
        flat = z.reshape(z.shape[: z.dim() - len(self.event_shape)] + (-1,))  # (..., D)
        d = flat.shape[-1]
        half_logdet = self.scale_tril.diagonal().log().sum()
        return -0.5 * flat.pow(2).sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)

    def entropy(self) -> Tensor:
        d = self.loc.numel()
        half_logdet = self.scale_tril.diagonal().log().sum()
        return (0.5 * d * (1 + math.log(2 * math.pi)) + half_logdet).expand(self.batch_shape)
