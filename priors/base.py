"""The common face of every generative prior: a Pyro distribution with a source-space view.

A generative prior is a deterministic map ``push`` from a standard-normal *source* variable
``z`` to the data ``x = push(z)``. Training-free conditioning methods (ESS-Flow, NUTS in source
space) work on ``z``; everything else sees an ordinary Pyro distribution over ``x``.

Direction convention (kept by every subclass): ``push`` runs source -> data, ``pull`` runs
data -> source.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
from pyro.distributions import Normal, TorchDistribution, constraints
from torch import Tensor, nn

__all__ = ["GenerativePrior", "check_event_shape"]


def check_event_shape(x: Tensor, event_shape: torch.Size, site: str) -> None:
    """Raise a ValueError naming ``site`` if the trailing dims of ``x`` are not ``event_shape``."""
    n = len(event_shape)
    trailing = tuple(x.shape[x.dim() - n :]) if n else ()
    if x.dim() < n or trailing != tuple(event_shape):
        raise ValueError(
            f"{site}: expected a tensor of shape (..., {', '.join(map(str, event_shape))}) "
            f"(event shape {tuple(event_shape)}), got shape {tuple(x.shape)}"
        )


class GenerativePrior(TorchDistribution):
    """Base class: a distribution over ``x = push(z)`` with ``z ~ N(0, I)``.

    Subclasses hold their weights in an ``nn.Module`` (``self.module``) and implement
    ``push``, ``log_prob`` and, where the map is invertible, ``pull``. This class is a light
    view over that module: ``.to(device, dtype)`` moves the module and returns a new view.

    Args:
        module: the ``nn.Module`` holding weights and buffers (its device and dtype are the
            prior's).
        event_shape: the shape of one draw ``x``.
        source_event_shape: the shape of one source draw ``z`` (defaults to ``event_shape``).
        batch_shape: batch shape of the distribution (``()`` for a single prior).
        validate_args: Pyro/torch argument validation flag.
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = True
    #: whether ``pull`` (data -> source) is available; subclasses with an inverse set True.
    has_pull = False

    def __init__(
        self,
        module: nn.Module,
        event_shape: Sequence[int],
        source_event_shape: Sequence[int] | None = None,
        batch_shape: Sequence[int] = (),
        validate_args: bool | None = None,
    ) -> None:
        self.module = module
        self.source_event_shape = torch.Size(
            event_shape if source_event_shape is None else source_event_shape
        )
        super().__init__(
            torch.Size(batch_shape), torch.Size(event_shape), validate_args=validate_args
        )

    # ------------------------------------------------------------------ device and dtype
    def _reference(self) -> Tensor:
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.is_floating_point():
                return t
        return torch.zeros(())

    @property
    def device(self) -> torch.device:
        return self._reference().device

    @property
    def dtype(self) -> torch.dtype:
        return self._reference().dtype

    def to(self, device=None, dtype=None) -> GenerativePrior:
        """Return a new view whose module lives on ``device`` with floating dtype ``dtype``."""
        new = copy.copy(self)
        new.module = copy.deepcopy(self.module).to(device=device, dtype=dtype)
        return new

    # ------------------------------------------------------------------ the Pyro contract
    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> GenerativePrior:
        new = copy.copy(self)
        new._batch_shape = torch.Size(batch_shape)
        return new

    @property
    def source(self) -> TorchDistribution:
        """The standard-normal source distribution over ``z``, event shape ``source_event_shape``."""
        ref = self._reference()
        zero = ref.new_zeros(())
        return (
            Normal(zero, zero + 1.0)
            .expand(self.batch_shape + self.source_event_shape)
            .to_event(len(self.source_event_shape))
        )

    def push(self, z: Tensor) -> Tensor:
        """Map source draws ``z`` of shape ``(..., *source_event_shape)`` to data
        ``(..., *event_shape)``."""
        raise TypeError(f"{type(self).__name__} does not define push (source -> data map)")

    def pull(self, x: Tensor) -> Tensor:
        """Map data ``x`` of shape ``(..., *event_shape)`` back to source
        ``(..., *source_event_shape)``."""
        raise TypeError(f"{type(self).__name__} has no inverse map (pull); has_pull is False")

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        z = self.source.rsample(torch.Size(sample_shape))
        return self.push(z)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def sample_with_generator(
        self, sample_shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``x = push(z)`` with ``z`` from ``generator`` (reproducible on any device)."""
        shape = torch.Size(sample_shape) + self.batch_shape + self.source_event_shape
        z = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            return self.push(z)

    def _validate_value(self, x: Tensor, site: str = "log_prob") -> None:
        check_event_shape(x, self.event_shape, f"{type(self).__name__}.{site}")

    def log_prob(self, x: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} does not define log_prob")

    # ------------------------------------------------------------------ helpers
    def _flatten_source(self, z: Tensor) -> tuple[Tensor, torch.Size]:
        """Reshape ``(..., *source_event_shape)`` to ``(N, prod(source_event_shape))``."""
        check_event_shape(z, self.source_event_shape, f"{type(self).__name__}.push")
        batch = z.shape[: z.dim() - len(self.source_event_shape)]
        return z.reshape(-1, self.source_event_shape.numel()), batch

    def _flatten_event(self, x: Tensor, site: str) -> tuple[Tensor, torch.Size]:
        """Reshape ``(..., *event_shape)`` to ``(N, prod(event_shape))``."""
        check_event_shape(x, self.event_shape, f"{type(self).__name__}.{site}")
        batch = x.shape[: x.dim() - len(self.event_shape)]
        return x.reshape(-1, self.event_shape.numel()), batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_shape={tuple(self.event_shape)}, "
            f"batch_shape={tuple(self.batch_shape)}, device={self.device}, dtype={self.dtype})"
        )
