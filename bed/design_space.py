"""Design spaces: a continuous box or a finite set of candidate designs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Box", "Candidates", "DesignSpace"]


class DesignSpace:
    """Base class. ``dim`` is the design dimension ``d``."""

    dim: int

    def check(self, designs: Tensor, site: str = "design") -> Tensor:
        """Return ``designs`` if it is `(..., d)` and inside the space, else raise ValueError."""
        designs = torch.as_tensor(designs)
        if designs.dim() == 0 or designs.shape[-1] != self.dim:
            raise ValueError(
                f"{site}: expected designs of shape (..., {self.dim}), got {tuple(designs.shape)}"
            )
        if not torch.isfinite(designs).all():
            raise ValueError(f"{site}: designs contain NaN or inf: {designs}")
        return designs

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n x d` designs drawn uniformly from the space."""
        raise TypeError(f"{type(self).__name__} cannot be sampled")


class Box(DesignSpace):
    """The continuous box ``[low, high]`` (elementwise) in ``R^d``.

    Args:
        low: a `d` tensor (or sequence) of lower bounds.
        high: a `d` tensor (or sequence) of upper bounds, each > low.

    Example:
        >>> Box([-4.0, -4.0], [4.0, 4.0]).bounds.shape
        torch.Size([2, 2])
    """

    def __init__(self, low, high) -> None:
        low = torch.as_tensor(low, dtype=torch.get_default_dtype()).reshape(-1)
        high = torch.as_tensor(high, device=low.device, dtype=low.dtype).reshape(-1)
        if low.shape != high.shape:
            raise ValueError(f"Box: low {tuple(low.shape)} and high {tuple(high.shape)} differ")
        if not (high > low).all():
            raise ValueError(f"Box: every high must exceed low, got low={low}, high={high}")
        self.low, self.high = low, high
        self.dim = low.numel()

    @property
    def bounds(self) -> Tensor:
        """The `2 x d` bounds tensor that BoTorch's ``optimize_acqf`` takes."""
        return torch.stack([self.low, self.high])

    def check(self, designs: Tensor, site: str = "design") -> Tensor:
        designs = super().check(designs, site)
        low, high = self.low.to(designs), self.high.to(designs)
        tol = 1e-6 * (high - low)
        outside = ((designs < low - tol) | (designs > high + tol)).any(-1)
        if outside.any():
            bad = designs[outside][0]
            raise ValueError(
                f"{site}: design {bad.tolist()} lies outside the box "
                f"[{low.tolist()}, {high.tolist()}]"
            )
        return designs

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, self.dim, generator=generator, dtype=self.low.dtype)
        return self.low + (self.high - self.low) * u

    def to(self, device=None, dtype=None) -> Box:
        return Box(self.low.to(device=device, dtype=dtype), self.high.to(device, dtype))

    def __repr__(self) -> str:
        return f"Box(low={self.low.tolist()}, high={self.high.tolist()})"


class Candidates(DesignSpace):
    """A finite set of candidate designs (e.g. which image patch to measure).

    Args:
        points: an `m x d` tensor, one candidate design per row.
    """

    def __init__(self, points) -> None:
        points = torch.as_tensor(points)
        if points.dim() == 1:
            points = points.unsqueeze(-1)
        if points.dim() != 2 or points.shape[0] == 0:
            raise ValueError(f"Candidates: expected an m x d tensor, got {tuple(points.shape)}")
        self.points = points
        self.dim = points.shape[-1]

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def bounds(self) -> Tensor:
        return torch.stack([self.points.min(0).values, self.points.max(0).values])

    def check(self, designs: Tensor, site: str = "design") -> Tensor:
        designs = super().check(designs, site)
        pts = self.points.to(designs)
        flat = designs.reshape(-1, self.dim)
        dist = torch.cdist(flat, pts).min(-1).values  # (N,)
        if (dist > 1e-6 * (1 + pts.abs().max())).any():
            bad = flat[dist.argmax()]
            raise ValueError(
                f"{site}: design {bad.tolist()} is not one of the {len(self)} candidates"
            )
        return designs

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(len(self), (n,), generator=generator)
        return self.points[idx]

    def to(self, device=None, dtype=None) -> Candidates:
        return Candidates(self.points.to(device=device, dtype=dtype))

    def __repr__(self) -> str:
        return f"Candidates({len(self)} points in R^{self.dim})"
