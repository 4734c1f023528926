"""Image measurement design: which patch of an image to measure next.

The unknown is a `16 x 16` image with the ``digits-16`` diffusion prior (pixels in
``[-1, 1]``). A design is the top-left corner ``(row, col)`` of one of the 16 non-overlapping
`4 x 4` patches (``bed.Candidates``, corners in ``{0, 4, 8, 12}^2``); the observation is that
patch with Gaussian noise of standard deviation 0.1 (``bed.conditioning.irsde
.PatchObservation``), the measurement the shipped IR-SDE ``digits-16-irsde`` was trained for:

.. math:: y = \\theta[r:r+4,\\, c:c+4] + 0.1\\, \\varepsilon, \\qquad \\varepsilon \\sim N(0, I_{16}).

Posteriors: ``"irsde"`` (the amortised IR-SDE, the default: 100 network calls per draw,
batched), ``"fbs"`` (forward-backward bridging on the prior, exact up to discretisation, slow
on a CPU) and ``"dps"`` (the biased baseline; pass ``tempering="snr"``, since plain DPS
diverges at this noise level, see BENCHMARKS.md).

Strategies compared by :func:`compare_strategies` (all on the same posterior draws):

- ``"eig"``: the candidate with the largest expected information gain under the posterior
  draws, as the sequential loop chooses it. The estimator is the moment-matched Gaussian
  upper bound ``bed.eig.gaussian``: a 16-pixel patch at noise 0.1 carries tens of nats, so
  sPCE with ``L`` contrasts sits at its cap ``log(L + 1)`` for every candidate and cannot rank
  them (the loop's ``acquisition="gaussian"``);
- ``"max-variance"``: the unmeasured patch with the largest summed posterior pixel variance;
- ``"random"``: a uniformly random order of the 16 patches.

Quality of the posterior mean against the true image: PSNR (peak-to-peak 2) and SSIM
(:func:`psnr`, :func:`ssim`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import priors
from bed.conditioning.irsde import PatchObservation, load_model, masked_point_estimate
from bed.conditioning.irsde import sample as irsde_sample
from bed.design_space import Candidates
from bed.eig import gaussian
from bed.experiment import Experiment

__all__ = [
    "IMAGE",
    "IRSDE_MODEL",
    "NOISE",
    "PATCH",
    "STEPS",
    "STRATEGIES",
    "ImageMask",
    "compare_strategies",
    "heldout_images",
    "image_mask",
    "patch_corners",
    "psnr",
    "random_designs",
    "ssim",
]

IMAGE = (16, 16)
PATCH = 4
NOISE = 0.1
STEPS = 6  # T: the default horizon (6 of 16 patches)
IRSDE_MODEL = "digits-16-irsde"
STRATEGIES = ("eig", "max-variance", "random")


def patch_corners(image_shape: Sequence[int] = IMAGE, patch: int = PATCH) -> Tensor:
    """`(m, 2)` top-left corners ``(row, col)`` of the non-overlapping ``patch x patch`` tiles
    of an image, row-major (``m = (H / patch) (W / patch)``)."""
    h, w = image_shape
    if h % patch or w % patch:
        raise ValueError(f"patch_corners: patch {patch} does not tile an image of shape {(h, w)}")
    r, c = torch.meshgrid(
        torch.arange(0, h, patch), torch.arange(0, w, patch), indexing="ij"
    )  # (H/p, W/p)
    return torch.stack([r.reshape(-1), c.reshape(-1)], -1).to(torch.get_default_dtype())


def image_mask(prior: str = "digits-16") -> Experiment:
    """The image-mask ``Experiment``: prior ``digits-16``, a noisy `4 x 4` patch per
    measurement, the 16 patch corners as ``Candidates``.

    Args:
        prior: ``"digits-16"`` (the only choice for now).
    """
    if prior != "digits-16":
        raise ValueError(f"image-mask: unknown prior {prior!r}; choose 'digits-16'")
    return Experiment(
        priors.load(prior),
        PatchObservation(PATCH, NOISE, IMAGE),
        Candidates(patch_corners()),
        name="image-mask",
    )


class ImageMask:
    """The simulator: the true image's patch at ``design`` plus ``N(0, 0.1^2)`` noise."""

    def __init__(self) -> None:
        self.likelihood = PatchObservation(PATCH, NOISE, IMAGE)

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., 16, 16)` true images.
            design: `(..., 2)` patch corners.
            generator: a ``torch.Generator`` for the measurement noise.

        Returns:
            `(..., 4, 4)` noisy patches.
        """
        loc = self.likelihood(theta, design).base_dist.loc
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + NOISE * noise

    def __repr__(self) -> str:
        return "ImageMask()"


def random_designs(
    shape: tuple[int, ...], generator: torch.Generator, like: Tensor | None = None
) -> Tensor:
    """Random patch orders: for each leading index, the first ``shape[-1]`` patches of a
    uniformly random permutation of the 16 (no patch twice). Returns `(*shape, 2)`."""
    corners = patch_corners()
    m = corners.shape[0]
    *lead, steps = shape
    if steps > m:
        raise ValueError(f"image-mask: at most {m} distinct patches, asked for {steps}")
    n = int(torch.Size(lead).numel())
    order = torch.rand(n, m, generator=generator).argsort(-1)[:, :steps]  # (n, T)
    out = corners[order].reshape(*lead, steps, 2)
    return out if like is None else out.to(like)


def heldout_images(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` held-out digits (``priors.data.digits16_test``, never seen in training),
    `(n, 16, 16)`."""
    from priors.data import digits16_test

    return digits16_test(n, generator)


# ---------------------------------------------------------------------- image quality
def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """PSNR in dB of images `(..., H, W)` on the ``[-1, 1]`` range (peak-to-peak 2) -> `(...)`."""
    mse = (x - reference).pow(2).mean((-2, -1))
    return 10 * torch.log10(4.0 / mse)


def ssim(x: Tensor, reference: Tensor, data_range: float = 2.0, size: int = 7) -> Tensor:
    """Mean SSIM (Wang et al. 2004) of images `(..., H, W)` -> `(...)`: Gaussian window
    ``size x size`` (sigma 1.5), constants ``(0.01 L)^2`` and ``(0.03 L)^2``, valid positions."""
    lead = torch.broadcast_shapes(x.shape[:-2], reference.shape[:-2])
    x = x.expand(lead + x.shape[-2:]).reshape(-1, 1, *x.shape[-2:])
    y = reference.expand(lead + reference.shape[-2:]).reshape(-1, 1, *reference.shape[-2:])
    ax = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * 1.5**2))
    window = ((g[:, None] * g[None, :]) / g.sum() ** 2)[None, None]  # (1, 1, size, size)

    def filt(a: Tensor) -> Tensor:
        return F.conv2d(a, window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    vx, vy = filt(x * x) - mx**2, filt(y * y) - my**2
    cxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


# ---------------------------------------------------------------------- strategies
def choose_eig(exp: Experiment, samples: Tensor) -> int:
    """Index of the candidate with the largest EIG (``bed.eig.gaussian``) under the posterior
    draws ``samples`` `(S, 16, 16)`."""
    cand = exp.design_space.points.to(samples)  # (m, 2)
    est, _ = gaussian(exp, cand[:, None, :], samples)  # (m,)
    return int(est.argmax())


def choose_max_variance(samples: Tensor, measured: Tensor) -> int:
    """Index of the unmeasured patch (``measured`` `(m,)` bool) with the largest summed
    posterior pixel variance under ``samples`` `(S, H, W)`."""
    h, w = samples.shape[-2:]
    var = samples.var(0)  # (H, W)
    per_patch = var.reshape(h // PATCH, PATCH, w // PATCH, PATCH).sum((1, 3)).reshape(-1)
    return int(per_patch.masked_fill(measured, -float("inf")).argmax())


def compare_strategies(
    images: Tensor,
    steps: int = STEPS,
    strategies: Sequence[str] = STRATEGIES,
    num_samples: int = 32,
    model=IRSDE_MODEL,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Sequential patch selection on each image by each strategy, IR-SDE posteriors.

    Every (strategy, image) pair runs its own sequential design: measure -> condition ->
    choose; the conditioning of all pairs at one step is a single batched IR-SDE call
    (``num_samples`` draws each, ``"posterior"`` mode). Step 0 is the posterior given no patch.
    Measurement noise is shared across strategies (the same noisy patch for the same image and
    corner), so differences come from the order alone (a paired comparison).

    Args:
        images: `(n, 16, 16)` true images.
        steps: patches measured per image ``T``.
        strategies: a subset of ``STRATEGIES``.
        num_samples: posterior draws per pair and step.
        model: the IR-SDE (name or ``IRSDEModel``).
        seed: seeds the noise, the random orders, the IR-SDE draws and the EIG estimates.
        progress: show a progress bar over steps.

    Returns:
        ``{"psnr", "ssim"}``: `(len(strategies), n, steps + 1)` quality of the posterior mean
        after ``0..T`` patches; ``"order"``: `(len(strategies), n, T)` chosen patch indices.
    """
    from tqdm.auto import trange

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"image-mask: unknown strategies {unknown}; choose from {STRATEGIES}")
    if images.dim() != 3 or tuple(images.shape[-2:]) != IMAGE:
        raise ValueError(f"image-mask: images must be (n, 16, 16), got {tuple(images.shape)}")
    n, k = images.shape[0], len(strategies)
    exp = image_mask()
    model = load_model(model, images.device, images.dtype) if isinstance(model, str) else model
    corners = patch_corners().to(images)  # (m, 2)
    m = corners.shape[0]
    gen = torch.Generator(device=images.device).manual_seed(seed)
    # one noisy reading per (image, patch), shared by every strategy
    readings = ImageMask()(images[:, None], corners, gen)  # (n, m, 4, 4)
    random_order = torch.rand(n, m, generator=gen, device=images.device).argsort(-1)  # (n, m)
    measured = torch.zeros(k, n, m, dtype=torch.bool, device=images.device)
    order = torch.zeros(k, n, steps, dtype=torch.long, device=images.device)
    quality = {
        "psnr": images.new_zeros(k, n, steps + 1),
        "ssim": images.new_zeros(k, n, steps + 1),
    }
    lik = exp.likelihood
    for t in trange(steps + 1, disable=not progress, desc="image-mask"):
        mus = images.new_empty(k, n, *IMAGE)
        for s in range(k):
            for i in range(n):
                idx = measured[s, i].nonzero().reshape(-1)
                mus[s, i] = masked_point_estimate(
                    model, lik.observed_index, corners[idx], readings[i, idx]
                )[0]
        draws = irsde_sample(
            model, mus.repeat_interleave(num_samples, 1).reshape(-1, *IMAGE), generator=gen
        ).reshape(k, n, num_samples, *IMAGE)
        mean = draws.mean(2).clamp(-1, 1)  # (k, n, H, W)
        quality["psnr"][:, :, t] = psnr(mean, images)
        quality["ssim"][:, :, t] = ssim(mean, images)
        if t == steps:
            break
        for s, strategy in enumerate(strategies):
            for i in range(n):
                if strategy == "eig":
                    j = choose_eig(exp, draws[s, i])
                elif strategy == "max-variance":
                    j = choose_max_variance(draws[s, i], measured[s, i])
                else:
                    j = int(random_order[i, t])
                order[s, i, t] = j
                measured[s, i, j] = True
    return {**quality, "order": order}
