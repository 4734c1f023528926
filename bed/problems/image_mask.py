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

**Settings** (``SETTINGS``, chosen by the prior): ``"digits-16"`` above, and ``"mnist-28"``,
the published setting of image measurement design (contrastive-diffusion BED, active diffusion
subsampling): a 28x28 MNIST digit (the ``mnist-28`` prior, held-out digits of
``priors.data.mnist28_test``), 16 candidate 7x7 patches, noise 0.1. No IR-SDE is shipped for
it, so its posteriors are DPS with variance-tempered guidance (``bed.condition(method="dps",
tempering="variance")``, 50 steps; batched over runs in :func:`compare_strategies`). With
``"snr"`` tempering the DPS posterior collapsed once 3-4 informative patches were observed
(PSNR falling from 17 to 7 dB, ``benchmarks/results/image_mask_mnist_snr.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import priors
from bed.conditioning import dps as _dps
from bed.conditioning.irsde import PatchObservation, load_model
from bed.conditioning.irsde import sample as irsde_sample
from bed.conditioning.smc import TweedieTwist
from bed.design_space import Candidates
from bed.eig import gaussian
from bed.experiment import Experiment

__all__ = [
    "IMAGE",
    "IRSDE_MODEL",
    "NOISE",
    "PATCH",
    "SETTINGS",
    "STEPS",
    "STRATEGIES",
    "ImageMask",
    "Setting",
    "compare_strategies",
    "heldout_images",
    "image_mask",
    "patch_corners",
    "pixel_elements",
    "psnr",
    "random_designs",
    "setting",
    "ssim",
]

IMAGE = (16, 16)
PATCH = 4
NOISE = 0.1
STEPS = 6  # T: the default horizon (6 of 16 patches)
IRSDE_MODEL = "digits-16-irsde"
STRATEGIES = ("eig", "max-variance", "random")


@dataclass(frozen=True)
class Setting:
    """One image-measurement setting.

    Attributes:
        prior: the zoo prior over images (also the setting's name).
        image: ``(H, W)``.
        patch: side of the square patches (tiling the image: 16 candidates here).
        noise: measurement noise sd.
        posterior: the default conditioning method (``"irsde"`` or ``"dps"``).
        condition_options: its ``bed.condition`` options.
        heldout: ``fn(n, generator) -> (n, H, W)`` held-out images.
    """

    prior: str
    image: tuple[int, int]
    patch: int
    noise: float
    posterior: str
    condition_options: dict
    heldout: Callable[[int, torch.Generator | None], Tensor]


def _digits_heldout(n: int, generator: torch.Generator | None = None) -> Tensor:
    from priors.data import digits16_test

    return digits16_test(n, generator)


def _mnist_heldout(n: int, generator: torch.Generator | None = None) -> Tensor:
    from priors.data import mnist28_test

    return mnist28_test(n, generator)


SETTINGS = {
    "digits-16": Setting(
        "digits-16", IMAGE, PATCH, NOISE, "irsde", {"model": IRSDE_MODEL}, _digits_heldout
    ),
    "mnist-28": Setting(
        "mnist-28",
        (28, 28),
        7,
        NOISE,
        "dps",
        {"tempering": "variance", "steps": 50},
        _mnist_heldout,
    ),
}


def setting(prior: str) -> Setting:
    """The ``Setting`` of ``prior`` (an error listing the settings otherwise)."""
    if prior not in SETTINGS:
        raise ValueError(f"image-mask: unknown prior {prior!r}; choose one of {list(SETTINGS)}")
    return SETTINGS[prior]


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
    """The image-mask ``Experiment``: the prior, a noisy square patch per measurement, the
    tiling patches' corners as ``Candidates``.

    Args:
        prior: a key of ``SETTINGS``: ``"digits-16"`` (16x16, 4x4 patches) or ``"mnist-28"``
            (28x28, 7x7 patches).
    """
    st = setting(prior)
    return Experiment(
        priors.load(prior),
        PatchObservation(st.patch, st.noise, st.image),
        Candidates(patch_corners(st.image, st.patch)),
        name="image-mask",
    )


class ImageMask:
    """The simulator: the true image's patch at ``design`` plus ``N(0, noise^2)`` noise.

    Args:
        prior: the setting (a key of ``SETTINGS``).
    """

    def __init__(self, prior: str = "digits-16") -> None:
        self.setting = setting(prior)
        st = self.setting
        self.likelihood = PatchObservation(st.patch, st.noise, st.image)

    def __call__(
        self, theta: Tensor, design: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Args:
            theta: `(..., H, W)` true images.
            design: `(..., 2)` patch corners.
            generator: a ``torch.Generator`` for the measurement noise.

        Returns:
            `(..., p, p)` noisy patches.
        """
        loc = self.likelihood(theta, design).base_dist.loc
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + self.setting.noise * noise

    def __repr__(self) -> str:
        return f"ImageMask({self.setting.prior!r})"


def random_designs(
    shape: tuple[int, ...],
    generator: torch.Generator,
    like: Tensor | None = None,
    prior: str = "digits-16",
) -> Tensor:
    """Random patch orders: for each leading index, the first ``shape[-1]`` patches of a
    uniformly random permutation of the setting's 16 patches (no patch twice).
    Returns `(*shape, 2)`."""
    st = setting(prior)
    corners = patch_corners(st.image, st.patch)
    m = corners.shape[0]
    *lead, steps = shape
    if steps > m:
        raise ValueError(f"image-mask: at most {m} distinct patches, asked for {steps}")
    n = int(torch.Size(lead).numel())
    order = torch.rand(n, m, generator=generator).argsort(-1)[:, :steps]  # (n, T)
    out = corners[order].reshape(*lead, steps, 2)
    return out if like is None else out.to(like)


def heldout_images(
    n: int, generator: torch.Generator | None = None, prior: str = "digits-16"
) -> Tensor:
    """``n`` held-out images of the setting (never seen in training), `(n, H, W)`."""
    return setting(prior).heldout(n, generator)


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


def choose_max_variance(samples: Tensor, measured: Tensor, patch: int = PATCH) -> int:
    """Index of the unmeasured tile (``measured`` `(m,)` bool, row-major tiles of side
    ``patch``) with the largest summed posterior pixel variance under ``samples`` `(S, H, W)`."""
    h, w = samples.shape[-2:]
    var = samples.var(0)  # (H, W)
    per_patch = var.reshape(h // patch, patch, w // patch, patch).sum((1, 3)).reshape(-1)
    return int(per_patch.masked_fill(measured, -float("inf")).argmax())


def _masked_data(
    lik: PatchObservation, corners: Tensor, readings: Tensor, measured: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean observed value and observation count per pixel of every run.

    Args:
        corners: `(m, 2)`; readings: `(n, m, p, p)` one reading per image and patch;
        measured: `(k, n, m)` which patches each run has measured.

    Returns:
        ``(values, counts)``, each `(k, n, H, W)` (values 0 where unobserved).
    """
    k, n, m = measured.shape
    h, w = lik.image_shape
    idx = lik.observed_index(corners)  # (m, p * p) flat pixels of each patch
    onehot = torch.zeros(m, h * w, dtype=readings.dtype, device=readings.device)
    onehot.scatter_(1, idx, 1.0)  # (m, H W): tiles do not overlap within a patch
    sel = measured.to(readings.dtype)  # (k, n, m)
    counts = torch.einsum("knm,md->knd", sel, onehot)  # (k, n, H W)
    flat = torch.zeros(n, m, h * w, dtype=readings.dtype, device=readings.device)
    flat.scatter_(2, idx.expand(n, m, -1), readings.reshape(n, m, -1))  # (n, m, H W)
    sums = torch.einsum("knm,nmd->knd", sel, flat)
    values = sums / counts.clamp_min(1)
    return values.reshape(k, n, h, w), counts.reshape(k, n, h, w)


def pixel_elements(values: Tensor, counts: Tensor, noise: float):
    """``theta (N, H, W) -> (log_p (N, H W), var (N, H W))`` for per-pixel readings: the
    log-density of each pixel's mean reading ``values`` (variance ``noise^2 / counts``) up to a
    constant that does not depend on theta, and that variance (1 where unobserved, where the
    log-density term is 0). ``values``, ``counts``: `(N, H, W)`. Summed over pixels it is the
    patch likelihood of all readings up to a constant (the within-pixel spread of repeated
    readings does not depend on theta)."""

    def elements(theta: Tensor) -> tuple[Tensor, Tensor]:
        log_p = -0.5 * counts * (theta - values) ** 2 / noise**2
        var = torch.where(counts > 0, noise**2 / counts.clamp_min(1), torch.ones_like(counts))
        return log_p.flatten(1), var.flatten(1)

    return elements


def _dps_draws(
    prior, values: Tensor, counts: Tensor, noise: float, num_samples: int, options: dict, gen
) -> Tensor:
    """Tempered DPS draws (``options["tempering"]``, default "snr") for many runs at once: `(R, S, H, W)` given per-run pixel means
    ``values`` and counts ``counts`` `(R, H, W)` of Gaussian readings with sd ``noise``."""
    r = values.shape[0]
    event = tuple(values.shape[1:])
    elements = pixel_elements(
        values.repeat_interleave(num_samples, 0), counts.repeat_interleave(num_samples, 0), noise
    )

    def loglik(theta: Tensor) -> Tensor:  # (R S, H, W) -> (R S,), up to a constant
        return elements(theta)[0].sum(-1)

    steps = int(options.get("steps") or prior.sde_steps)
    tw = TweedieTwist(prior, loglik, True, options.get("tempering", "snr"), elements)
    ts = prior.time_grid(steps, like=values)
    with torch.no_grad():
        x = prior.sde.prior_sample(
            torch.randn((r * num_samples,) + event, generator=gen, dtype=values.dtype)
        )
        state = _dps.init(x)
        for _ in range(steps):
            state, _ = _dps.step(state, tw, ts, gen, float(options.get("guidance_scale", 1.0)))
    return state.x.reshape((r, num_samples) + event)


def compare_strategies(
    images: Tensor,
    steps: int = STEPS,
    strategies: Sequence[str] = STRATEGIES,
    num_samples: int = 32,
    prior: str = "digits-16",
    posterior: str | None = None,
    seed: int = 0,
    progress: bool = False,
    **condition_options,
) -> dict[str, Tensor]:
    """Sequential patch selection on each image by each strategy.

    Every (strategy, image) pair runs its own sequential design: measure -> condition ->
    choose; the conditioning of all pairs at one step is a single batched call (the IR-SDE's
    reverse SDE, or DPS, ``num_samples`` draws each). Step 0 is the posterior given no patch.
    Measurement noise is shared across strategies (the same noisy patch for the same image and
    corner), so differences come from the order alone (a paired comparison).

    Args:
        images: `(n, H, W)` true images of the setting.
        steps: patches measured per image ``T``.
        strategies: a subset of ``STRATEGIES``.
        num_samples: posterior draws per pair and step.
        prior: the setting (a key of ``SETTINGS``).
        posterior: ``"irsde"`` or ``"dps"`` (default: the setting's).
        seed: seeds the noise, the random orders and the posterior draws.
        progress: show a progress bar over steps.
        **condition_options: override the setting's ``condition_options`` (``model`` for
            irsde; ``steps``, ``tempering``, ``guidance_scale`` for dps).

    Returns:
        ``{"psnr", "ssim"}``: `(len(strategies), n, steps + 1)` quality of the posterior mean
        after ``0..T`` patches; ``"order"``: `(len(strategies), n, T)` chosen patch indices.
    """
    from tqdm.auto import trange

    st = setting(prior)
    posterior = st.posterior if posterior is None else posterior
    options = {**(st.condition_options if posterior == st.posterior else {}), **condition_options}
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"image-mask: unknown strategies {unknown}; choose from {STRATEGIES}")
    if posterior not in ("irsde", "dps"):
        raise ValueError(f"image-mask: posterior must be 'irsde' or 'dps', got {posterior!r}")
    if images.dim() != 3 or tuple(images.shape[-2:]) != st.image:
        raise ValueError(
            f"image-mask ({prior}): images must be (n, {st.image[0]}, {st.image[1]}), "
            f"got {tuple(images.shape)}"
        )
    n, k = images.shape[0], len(strategies)
    exp = image_mask(prior)
    lik = exp.likelihood
    if posterior == "irsde":
        model = options.get("model")
        if model is None:
            raise ValueError(f"image-mask ({prior}): posterior 'irsde' needs model=")
        model = load_model(model, images.device, images.dtype) if isinstance(model, str) else model
    else:
        diffusion = exp.prior.to(device=images.device, dtype=images.dtype)
    corners = patch_corners(st.image, st.patch).to(images)  # (m, 2)
    m = corners.shape[0]
    gen = torch.Generator(device=images.device).manual_seed(seed)
    # one noisy reading per (image, patch), shared by every strategy
    readings = ImageMask(prior)(images[:, None], corners, gen)  # (n, m, p, p)
    random_order = torch.rand(n, m, generator=gen, device=images.device).argsort(-1)  # (n, m)
    measured = torch.zeros(k, n, m, dtype=torch.bool, device=images.device)
    order = torch.zeros(k, n, steps, dtype=torch.long, device=images.device)
    quality = {
        "psnr": images.new_zeros(k, n, steps + 1),
        "ssim": images.new_zeros(k, n, steps + 1),
    }
    for t in trange(steps + 1, disable=not progress, desc="image-mask"):
        values, counts = _masked_data(lik, corners, readings, measured)  # (k, n, H, W)
        if posterior == "irsde":
            mus = model.point_estimate(values, counts > 0)  # (k, n, H, W)
            flat = mus.repeat_interleave(num_samples, 1).reshape(-1, *st.image)
            draws = irsde_sample(model, flat, options.get("steps"), "posterior", gen)
        else:
            draws = _dps_draws(
                diffusion,
                values.reshape(-1, *st.image),
                counts.reshape(-1, *st.image),
                st.noise,
                num_samples,
                options,
                gen,
            )
        draws = draws.reshape(k, n, num_samples, *st.image)
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
                    j = choose_max_variance(draws[s, i], measured[s, i], st.patch)
                else:
                    j = int(random_order[i, t])
                order[s, i, t] = j
                measured[s, i, j] = True
    return {**quality, "order": order}
