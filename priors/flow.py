"""Normalizing-flow priors: any ``normflows.NormalizingFlow`` seen as a generative prior.

Direction convention (the one of :mod:`priors.base`): ``push`` runs source -> data and is the
flow's forward map (``NormalizingFlow.forward``); ``pull`` runs data -> source and is its inverse.

normflows flows start from a base distribution ``q0`` that may have a trainable mean and
log-scale (``DiagGaussian``). ``FlowPrior`` whitens it, so that its ``source`` is a *standard*
normal ``xi`` and

.. math:: x = \\mathrm{push}(\\xi) = f(\\mathrm{loc} + \\mathrm{scale} \\odot \\xi),

with ``f`` the flow's layers (methods.md section 4.2). The density stays exact:

.. math:: \\log p(x) = \\log \\mathcal{N}(\\xi; 0, I) + \\log |\\det \\partial \\xi / \\partial x|.

The constructors :func:`realnvp` and :func:`neural_spline` build the architectures that the zoo
ships, from normflows' own layers; a model card records their keyword arguments so that
:func:`priors.load` can rebuild the module before loading its weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import normflows as nf
import torch
from torch import Tensor, nn

from priors.base import GenerativePrior

__all__ = ["FlowPrior", "glow", "neural_spline", "realnvp"]


class FlowPrior(GenerativePrior):
    """A prior ``x = f(loc + scale * xi)``, ``xi ~ N(0, I)``, from a ``normflows`` flow.

    The flow acts on tensors of shape ``(N, *q0.shape)`` (usually flat ``(N, D)`` vectors) on
    the source side and ``(N, *flow.data_shape)`` on the data side (an attribute set by
    multi-scale flows such as :func:`glow`; default ``q0.shape``);
    ``push``/``pull``/``log_prob`` accept any leading dims and reshape to ``event_shape``
    (default ``q0.shape``; any shape with the same number of entries, e.g. ``(2, 2)`` for a flow
    over ``D = 4``). The network stays in the ``nn.Module`` (``self.module is flow``); this
    object is a light view, and ``.to(device, dtype)`` returns a new view over a moved copy.

    Args:
        flow: a ``normflows.NormalizingFlow`` whose base ``q0`` is a ``DiagGaussian`` and whose
            layers all define ``inverse`` (coupling, autoregressive, permutation, ActNorm...).
        event_shape: the shape of one draw; ``prod(event_shape)`` must equal ``prod(q0.shape)``.
        validate_args: Pyro/torch argument validation flag.

    Example:
        >>> flow = realnvp(4, num_layers=2, hidden=8)
        >>> p = FlowPrior(flow, event_shape=(2, 2))
        >>> p.sample((3,)).shape
        torch.Size([3, 2, 2])
        >>> p.log_prob(p.sample((5, 3))).shape
        torch.Size([5, 3])
    """

    has_pull = True

    def __init__(
        self,
        flow: nf.NormalizingFlow,
        event_shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(flow, nf.NormalizingFlow):
            raise TypeError(
                f"FlowPrior: expected a normflows.NormalizingFlow, got {type(flow).__name__}"
            )
        if not isinstance(flow.q0, nf.distributions.DiagGaussian):
            raise TypeError(
                "FlowPrior: the flow's base distribution q0 must be a normflows DiagGaussian "
                f"(whitened to a standard normal source), got {type(flow.q0).__name__}"
            )
        self.flow_shape = torch.Size(flow.q0.shape)
        # the shape the last layer outputs (a multi-scale flow un-squeezes: see ``glow``)
        self.data_shape = torch.Size(getattr(flow, "data_shape", self.flow_shape))
        event_shape = self.flow_shape if event_shape is None else torch.Size(event_shape)
        if event_shape.numel() != self.flow_shape.numel():
            raise ValueError(
                f"FlowPrior: event_shape {tuple(event_shape)} has {event_shape.numel()} entries, "
                f"the flow's base q0 has shape {tuple(self.flow_shape)} "
                f"({self.flow_shape.numel()} entries)"
            )
        super().__init__(flow, event_shape, validate_args=validate_args)

    @property
    def flow(self) -> nf.NormalizingFlow:
        """The wrapped ``normflows.NormalizingFlow`` (the same object as ``module``)."""
        return self.module

    # ------------------------------------------------------------------ whitening
    def _base_loc_log_scale(self) -> tuple[Tensor, Tensor]:
        """The base's mean and log-scale as flat `D` tensors (temperature included)."""
        q0 = self.module.q0
        loc = q0.loc.reshape(-1)  # (D,)
        log_scale = q0.log_scale.reshape(-1)  # (D,)
        if q0.temperature is not None:
            log_scale = log_scale + math.log(q0.temperature)
        return loc, log_scale

    # ------------------------------------------------------------------ maps
    def push_and_log_det(self, xi: Tensor) -> tuple[Tensor, Tensor]:
        """``x = push(xi)`` and ``log |det dx/dxi|``.

        Args:
            xi: a `(..., *source_event_shape)` tensor of standard-normal source draws.

        Returns:
            ``x`` of shape `(..., *event_shape)` and the log-determinant of shape `(...)`.
        """
        flat, batch = self._flatten_source(xi)  # (N, D)
        loc, log_scale = self._base_loc_log_scale()
        z = (loc + log_scale.exp() * flat).reshape((-1,) + self.flow_shape)  # (N, *flow_shape)
        log_det = log_scale.sum().expand(flat.shape[0])  # (N,)
        for layer in self.module.flows:
            z, ld = layer(z)
            log_det = log_det + ld
        return z.reshape(batch + self.event_shape), log_det.reshape(batch)

    def pull_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``xi = pull(x)`` and ``log |det dxi/dx|``.

        Args:
            x: a `(..., *event_shape)` tensor of data.

        Returns:
            ``xi`` of shape `(..., *source_event_shape)` and the log-determinant of shape `(...)`.
        """
        flat, batch = self._flatten_event(x, "pull")  # (N, D)
        z = flat.reshape((-1,) + self.data_shape)  # (N, *data_shape)
        log_det = flat.new_zeros(flat.shape[0])  # (N,)
        for layer in reversed(self.module.flows):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        loc, log_scale = self._base_loc_log_scale()
        xi = (z.reshape(flat.shape) - loc) * (-log_scale).exp()  # (N, D)
        log_det = log_det - log_scale.sum()
        return xi.reshape(batch + self.source_event_shape), log_det.reshape(batch)

    def push(self, z: Tensor) -> Tensor:
        """The flow's forward map on whitened source draws.

        Args:
            z: a `(..., *source_event_shape)` tensor (standard-normal source).

        Returns:
            A `(..., *event_shape)` tensor.
        """
        flat, batch = self._flatten_source(z)  # (N, D)
        loc, log_scale = self._base_loc_log_scale()
        y = (loc + log_scale.exp() * flat).reshape((-1,) + self.flow_shape)  # (N, *flow_shape)
        for layer in self.module.flows:
            y, _ = layer(y)
        return y.reshape(batch + self.event_shape)

    def pull(self, x: Tensor) -> Tensor:
        """The flow's inverse map, whitened: data `(..., *event_shape)` -> source
        `(..., *source_event_shape)`."""
        return self.pull_and_log_det(x)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density by the change of variables.

        Args:
            x: a `(..., *event_shape)` tensor; its leading dims broadcast with ``batch_shape``.

        Returns:
            A tensor of shape ``broadcast(x.shape[:-len(event_shape)], batch_shape)``.
        """
        if self._validate_args:
            self._validate_value(x)
        xi, log_det = self.pull_and_log_det(x)
        d = self.source_event_shape.numel()
        flat = xi.reshape(log_det.shape + (d,))  # (..., D)
        lp = -0.5 * flat.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi) + log_det  # (...)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))


# ---------------------------------------------------------------------- architectures
def realnvp(
    dim: int,
    num_layers: int = 4,
    hidden: int = 64,
    init_identity: bool = True,
    trainable_base: bool = True,
) -> nf.NormalizingFlow:
    """A RealNVP flow on flat `dim` vectors from normflows layers.

    Each of ``num_layers`` blocks is an ``AffineCouplingBlock`` (split in halves, exp-scale
    affine coupling with a 2-hidden-layer MLP of width ``hidden``) followed by a swap
    ``Permute``, so every coordinate is transformed.

    Args:
        dim: the flat dimension `D` (at least 2).
        num_layers: number of coupling blocks.
        hidden: width of the two hidden layers of each coupling MLP.
        init_identity: zero the last layer of each MLP, so the flow starts as the identity.
        trainable_base: whether the ``DiagGaussian`` base has trainable loc/log_scale.

    Returns:
        A ``normflows.NormalizingFlow`` on `(N, dim)` tensors.
    """
    if dim < 2:
        raise ValueError(f"realnvp: dim must be at least 2 for a coupling flow, got {dim}")
    half = dim // 2
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        net = nf.nets.MLP([half, hidden, hidden, 2 * (dim - half)], init_zeros=init_identity)
        layers += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=trainable_base), layers)


def neural_spline(
    dim: int,
    num_layers: int = 6,
    hidden: int = 64,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    trainable_base: bool = False,
) -> nf.NormalizingFlow:
    """A rational-quadratic neural spline coupling flow (Durkan et al. 2019) from normflows.

    Args:
        dim: the flat dimension `D` (at least 2).
        num_layers: number of ``CoupledRationalQuadraticSpline`` layers (alternating masks).
        hidden: hidden width of each layer's residual network.
        num_blocks: residual blocks per network.
        num_bins: spline bins; outside ``[-tail_bound, tail_bound]`` the map is the identity.
        tail_bound: half-width of the spline interval.
        trainable_base: whether the ``DiagGaussian`` base has trainable loc/log_scale.

    Returns:
        A ``normflows.NormalizingFlow`` on `(N, dim)` tensors.

    References:
        Neural Spline Flows, https://arxiv.org/abs/1906.04032
    """
    if dim < 2:
        raise ValueError(f"neural_spline: dim must be at least 2 for a coupling flow, got {dim}")
    layers = [
        nf.flows.CoupledRationalQuadraticSpline(
            dim,
            num_blocks,
            hidden,
            num_bins=num_bins,
            tail_bound=tail_bound,
            reverse_mask=bool(i % 2),
        )
        for i in range(num_layers)
    ]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=trainable_base), layers)


def glow(
    event_shape: Sequence[int] = (32, 32),
    levels: int = 2,
    blocks_per_level: int = 4,
    hidden: int = 64,
) -> nf.NormalizingFlow:
    """A single-scale Glow flow (Kingma & Dhariwal 2018) over one-channel images, from normflows.

    The base is a ``DiagGaussian`` over the image squeezed ``levels`` times, shape
    ``(4^levels, H / 2^levels, W / 2^levels)``. Going towards the data, each level applies
    ``blocks_per_level`` ``GlowBlock`` s (affine coupling with a 3-1-3 conv net of width
    ``hidden``, invertible 1x1 convolution, ActNorm) and then un-squeezes (``Squeeze``), so the
    last layer outputs `(N, 1, H, W)`. Wrap it as ``FlowPrior(flow, event_shape=(H, W))``.
    ActNorm initialises from the first batch it sees (the first training batch).

    Args:
        event_shape: ``(H, W)``, each divisible by ``2^levels``.
        levels: number of squeezes.
        blocks_per_level: Glow blocks at each resolution.
        hidden: channels of the coupling networks.

    Returns:
        A ``normflows.NormalizingFlow`` on `(N, 4^levels, H / 2^levels, W / 2^levels)` tensors.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, https://arxiv.org/abs/1807.03039
    """
    h, w = (int(s) for s in event_shape)
    if len(tuple(event_shape)) != 2 or h % 2**levels or w % 2**levels:
        raise ValueError(
            f"glow: event_shape must be (H, W) with sides divisible by {2**levels}, "
            f"got {tuple(event_shape)}"
        )
    layers: list[nn.Module] = []
    for level in range(levels, 0, -1):
        channels = 4**level
        layers += [nf.flows.GlowBlock(channels, hidden) for _ in range(blocks_per_level)]
        layers.append(nf.flows.Squeeze())
    base_shape = (4**levels, h // 2**levels, w // 2**levels)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(base_shape, trainable=True), layers)
    flow.data_shape = (1, h, w)  # read by FlowPrior: the data-side shape of the layers
    return flow
