"""Time-conditioned networks for diffusion and flow-matching priors.

Every network has the signature ``net(x (N, *event), t (N,)) -> (N, *event)`` and an
``event_shape`` attribute, and embeds ``t * time_scale`` with a sinusoidal embedding (the
default ``time_scale=1000`` suits times in ``[0, 1]``: the VP SDE with ``T=1`` and flow matching;
use ``1000 / T`` for the mean-reverting SDE's ``[0, T]``).

- ``TimeMLP``: a residual MLP for vectors (low-dimensional toys).
- ``TimeUNet``: a small UNet (GroupNorm, SiLU, sinusoidal time embedding added in every residual
  block) for single- or few-channel images, sized for 16x16 and 32x32 (two or three
  resolutions; side lengths divisible by ``2 ** (len(mults) - 1)``).
- ``ConditionalTimeUNet``: ``net(x, mu, t)``, a ``TimeUNet`` over ``x`` and a same-shape
  condition ``mu`` stacked as two channels (the IR-SDE's conditional noise network), and
  ``IRSDEModel`` / ``irsde_unet``: it with a ``MeanRevertingSDE`` (the zoo's ``"irsde"`` kind).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from priors.diffusion import DiffusionModel
from priors.sde import VPSDE, MeanRevertingSDE

__all__ = [
    "ConditionalTimeUNet",
    "IRSDEModel",
    "SinusoidalEmbedding",
    "TimeMLP",
    "TimeUNet",
    "irsde_unet",
    "vp_mlp",
    "vp_unet",
]


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding of a scalar time, `(N,)` -> `(N, dim)`.

    Args:
        dim: embedding size (even).
        time_scale: ``t`` is multiplied by this before embedding.
        max_period: the longest period of the sinusoids.
    """

    def __init__(self, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding: dim must be even, got {dim}")
        self.dim, self.time_scale, self.max_period = dim, float(time_scale), float(max_period)

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half
        )  # (half,)
        args = (t * self.time_scale)[:, None] * freqs  # (N, half)
        return torch.cat([args.cos(), args.sin()], -1)  # (N, dim)


class TimeMLP(nn.Module):
    """A residual MLP ``(x (N, dim), t (N,)) -> (N, dim)`` with a sinusoidal time embedding.

    Args:
        dim: data dimension.
        hidden: width.
        depth: number of residual blocks.
        time_dim: sinusoidal embedding size.
        time_scale: multiplier of ``t`` before embedding.

    Example:
        >>> net = TimeMLP(2, hidden=16, depth=1)
        >>> net(torch.zeros(3, 2), torch.rand(3)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 32,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.event_shape = (dim,)
        self.embed = nn.Sequential(
            SinusoidalEmbedding(time_dim, time_scale), nn.Linear(time_dim, hidden), nn.SiLU()
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t)  # (N, hidden)
        h = self.inp(x)  # (N, hidden)
        for block in self.blocks:
            h = h + block(torch.cat([h, emb], -1))
        return self.out(h)  # (N, dim)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (N, c_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class TimeUNet(nn.Module):
    """A small time-conditioned UNet ``(x (N, *event), t (N,)) -> (N, *event)``.

    ``event_shape`` is ``(H, W)`` (one channel, added and removed inside) or ``(C, H, W)``.
    One residual block per resolution on the way down and up, stride-2 convolutions down,
    nearest-neighbour upsampling, skip connections by concatenation; the output convolution is
    zero-initialised.

    Args:
        event_shape: ``(H, W)`` or ``(C, H, W)``.
        base: channels at full resolution.
        mults: channel multipliers per resolution (``(1, 2, 2)``: 16x16 -> 8x8 -> 4x4).
        time_dim: sinusoidal embedding size.
        groups: GroupNorm groups.
        time_scale: multiplier of ``t`` before embedding.

    Example:
        >>> net = TimeUNet((16, 16), base=8)
        >>> net(torch.zeros(2, 16, 16), torch.rand(2)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        base: int = 32,
        mults: Sequence[int] = (1, 2, 2),
        time_dim: int = 64,
        groups: int = 8,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        event_shape = tuple(event_shape)
        if len(event_shape) not in (2, 3):
            raise ValueError(
                f"TimeUNet: event_shape must be (H, W) or (C, H, W), got {event_shape}"
            )
        self.event_shape = event_shape
        channels = 1 if len(event_shape) == 2 else event_shape[0]
        h, w = event_shape[-2:]
        if h % 2 ** (len(mults) - 1) or w % 2 ** (len(mults) - 1):
            raise ValueError(
                f"TimeUNet: side lengths {(h, w)} must be divisible by {2 ** (len(mults) - 1)}"
            )
        emb_dim = 4 * base
        self.embed = nn.Sequential(
            SinusoidalEmbedding(time_dim, time_scale),
            nn.Linear(time_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        widths = [base * m for m in mults]
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = widths[0]
        for i, width in enumerate(widths):
            self.down.append(_ResBlock(c, width, emb_dim, groups))
            c = width
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = _ResBlock(c, c, emb_dim, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            self.up.append(_ResBlock(c + width, width, emb_dim, groups))
            c = width
            if i > 0:
                self.upsample.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2), nn.Conv2d(c, widths[i - 1], 3, padding=1)
                    )
                )
                c = widths[i - 1]
        self.out = nn.Sequential(
            nn.GroupNorm(min(groups, c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        squeeze = len(self.event_shape) == 2
        h = x[:, None] if squeeze else x  # (N, C, H, W)
        emb = self.embed(t)  # (N, emb_dim)
        h = self.inp(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], 1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        out = self.out(h)  # (N, C, H, W)
        return out[:, 0] if squeeze else out


# ---------------------------------------------------------------------- zoo architectures
def vp_mlp(
    dim: int,
    hidden: int = 128,
    depth: int = 3,
    time_dim: int = 32,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    ode_steps: int = 100,
    sde_steps: int = 500,
    t_min: float = 1e-3,
) -> DiffusionModel:
    """A ``DiffusionModel``: an eps-predicting ``TimeMLP`` with a ``VPSDE`` (zoo architecture)."""
    net = TimeMLP(dim, hidden=hidden, depth=depth, time_dim=time_dim)
    sde = VPSDE(beta_min=beta_min, beta_max=beta_max)
    return DiffusionModel(net, sde, "eps", ode_steps=ode_steps, sde_steps=sde_steps, t_min=t_min)


def vp_unet(
    event_shape: Sequence[int],
    base: int = 32,
    mults: Sequence[int] = (1, 2, 2),
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    ode_steps: int = 50,
    sde_steps: int = 200,
    t_min: float = 1e-3,
) -> DiffusionModel:
    """A ``DiffusionModel``: an eps-predicting ``TimeUNet`` with a ``VPSDE`` (zoo architecture)."""
    net = TimeUNet(event_shape, base=base, mults=mults)
    sde = VPSDE(beta_min=beta_min, beta_max=beta_max)
    return DiffusionModel(net, sde, "eps", ode_steps=ode_steps, sde_steps=sde_steps, t_min=t_min)


# ---------------------------------------------------------------------- conditional (IR-SDE)
class ConditionalTimeUNet(nn.Module):
    """``net(x (N, H, W), mu (N, H, W), t (N,)) -> (N, H, W)``: a ``TimeUNet`` whose input is
    ``x`` and the condition ``mu`` stacked as two channels and whose output is one channel
    (zero-initialised), as the IR-SDE's "ConditionalUNet" (methods.md section 2.1).

    Args:
        event_shape: ``(H, W)`` of one image.
        base: channels at full resolution.
        mults: channel multipliers per resolution.
        time_dim: sinusoidal embedding size.
        groups: GroupNorm groups.
        time_scale: multiplier of ``t`` before embedding (``1000 / T`` for times in ``[0, T]``).

    Example:
        >>> net = ConditionalTimeUNet((8, 8), base=8, mults=(1, 2))
        >>> net(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), torch.rand(2)).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        base: int = 32,
        mults: Sequence[int] = (1, 2),
        time_dim: int = 64,
        groups: int = 8,
        time_scale: float = 10.0,
    ) -> None:
        super().__init__()
        event_shape = tuple(event_shape)
        if len(event_shape) != 2:
            raise ValueError(f"ConditionalTimeUNet: event_shape must be (H, W), got {event_shape}")
        self.event_shape = event_shape
        self.unet = TimeUNet((2,) + event_shape, base, mults, time_dim, groups, time_scale)
        last = self.unet.out[-1]
        self.unet.out[-1] = nn.Conv2d(last.in_channels, 1, 3, padding=1)  # one output channel
        nn.init.zeros_(self.unet.out[-1].weight)
        nn.init.zeros_(self.unet.out[-1].bias)

    def forward(self, x: Tensor, mu: Tensor, t: Tensor) -> Tensor:
        h = torch.stack([x, mu], 1)  # (N, 2, H, W)
        return self.unet(h, t)[:, 0]  # (N, H, W)


class IRSDEModel(nn.Module):
    r"""An amortised conditional IR-SDE: a noise network ``net(x_t, mu, t)`` and a
    ``MeanRevertingSDE`` whose mean is the per-sample condition ``mu`` (methods.md section 2).

    ``mu`` is a point estimate of ``x_0`` of the same shape: for partial observations (a
    boolean ``mask`` and observed ``values``) :meth:`point_estimate` fills the unobserved
    entries with the buffer ``fill`` (the training data's mean image). The score is
    :math:`-\hat\varepsilon / \bar\sigma_t`. Samplers live in ``bed.conditioning.irsde``.

    Args:
        net: ``net(x (N, *event), mu (N, *event), t (N,)) -> (N, *event)``, predicting noise.
        sde: the mean-reverting SDE (its ``mu`` is overridden per call).
        fill: the value of unobserved entries in ``point_estimate``, `(*event)` or a scalar.
    """

    def __init__(self, net: nn.Module, sde: MeanRevertingSDE, fill: Tensor | float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.sde = sde
        self.event_shape = tuple(net.event_shape)
        fill = torch.as_tensor(fill, dtype=torch.get_default_dtype())
        self.register_buffer("fill", fill.expand(self.event_shape).clone())

    def point_estimate(self, values: Tensor, mask: Tensor) -> Tensor:
        """``mu = where(mask, values, fill)``; ``values`` and ``mask`` are `(..., *event)`."""
        return torch.where(mask, values, self.fill.to(values))

    def noise(self, x: Tensor, mu: Tensor, t: Tensor | float) -> Tensor:
        """Predicted noise at ``x`` `(N, *event)` given ``mu`` `(N, *event)`, ``t`` scalar or `(N,)`."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[:1])
        return self.net(x, mu, t)

    def loss(self, x0: Tensor, mu: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""The IR-SDE maximum-likelihood loss (L1, methods.md section 2.4), mean over the batch:
        :math:`i \sim U\{1..T\}`, :math:`x_i = \mu + e^{-\bar\theta_i}(x_0 - \mu)
        + \bar\sigma_i \varepsilon`, one Euler reverse step regressed on the bridge mean.

        Args:
            x0: clean data `(N, *event)`; mu: conditions `(N, *event)`.
            generator: source of ``i`` and the noise.
        """
        n = x0.shape[0]
        i = torch.randint(1, self.sde.steps + 1, (n,), generator=generator, device=x0.device)
        i = i.to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_i = self.sde.perturb(x0, i, noise, mu)
        eps_hat = self.net(x_i, mu, i)
        return self.sde.ml_loss(eps_hat, x_i, x0, i, mu).mean()


def irsde_unet(
    event_shape: Sequence[int],
    base: int = 32,
    mults: Sequence[int] = (1, 2),
    lam: float = 0.5,
    T: int = 100,
    schedule: str = "cosine",
    eps: float = 0.005,
    fill: float | str = 0.0,
) -> IRSDEModel:
    """An ``IRSDEModel``: a ``ConditionalTimeUNet`` with a ``MeanRevertingSDE`` (zoo
    architecture ``"irsde_unet"``).

    Args:
        event_shape: ``(H, W)``.
        base, mults: the UNet's widths.
        lam, T, schedule, eps: the SDE (``MeanRevertingSDE``).
        fill: the unobserved-entry value of ``point_estimate``: a float, or the name of a
            function of ``priors.data`` returning the mean image (e.g. ``"digits16_mean"``);
            it is a buffer, so the checkpoint restores it either way.
    """
    net = ConditionalTimeUNet(event_shape, base=base, mults=mults, time_scale=1000.0 / T)
    sde = MeanRevertingSDE(lam=lam, T=T, schedule=schedule, eps=eps)
    if isinstance(fill, str):
        from priors import data

        fill = getattr(data, fill)()
    return IRSDEModel(net, sde, fill)
