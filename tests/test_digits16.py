"""The shipped ``digits-16`` diffusion prior against the held-out digits.

Samples are ``push`` draws (probability-flow ODE, 30 Heun steps, 256 draws) compared with the
359 held-out test images on statistics whose sampling error is small at these sizes: the mean
image, the per-pixel standard deviation image and the pixel histogram. Each tolerance is about
twice the value a set of 256 *real* training images reaches against the same test set (stated
next to it), so a prior that has collapsed, blurred or shifted fails.
"""

from __future__ import annotations

import pytest
import torch

import priors
from priors import zoo
from priors.data import digits16, digits16_split, digits16_test

EDGES = 20  # histogram bins on [-1, 1]


def _histogram(x: torch.Tensor) -> torch.Tensor:
    return torch.histc(x.flatten().float(), EDGES, -1, 1) / x.numel()


def _stats(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Mean-image RMSE, std-image RMSE and pixel-histogram L1 distance of `n x 16 x 16` x."""
    return {
        "mean_rmse": (x.mean(0) - ref.mean(0)).pow(2).mean().sqrt().item(),
        "std_rmse": (x.std(0) - ref.std(0)).pow(2).mean().sqrt().item(),
        "hist_l1": (_histogram(x) - _histogram(ref)).abs().sum().item(),
    }


@pytest.fixture(scope="module")
def samples() -> torch.Tensor:
    prior = priors.load("digits-16")
    z = torch.randn(256, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return prior.push(z, steps=30)


def test_split_is_fixed_and_scaled():
    train, test = digits16_split("train"), digits16_split("test")
    assert train.shape == (1438, 16, 16) and test.shape == (359, 16, 16)
    assert float(train.min()) >= -1 and float(train.max()) <= 1
    torch.testing.assert_close(digits16_test(1000), test)
    draws = digits16(8, torch.Generator().manual_seed(0))
    # every training draw is one of the train images, none is a test image position
    assert all((train == d).all((1, 2)).any() for d in draws)


def test_card_and_checkpoint_size():
    info = zoo.card("digits-16")
    assert info["kind"] == "diffusion" and info["event_shape"] == [16, 16]
    assert info["metrics"]["num_heldout"] == 359
    assert (zoo.CHECKPOINT_DIR / "digits-16.pt").stat().st_size < 5e6
    assert info["training"]["wall_time_s"] > 0


def test_reference_tolerances_hold_for_real_images():
    """The tolerances below are loose for 256 real training images (the reference scale)."""
    real = digits16(256, torch.Generator().manual_seed(1))
    s = _stats(real, digits16_test(359))
    assert s["mean_rmse"] < 0.05 and s["std_rmse"] < 0.05 and s["hist_l1"] < 0.05, s


def test_mean_and_std_images_match_heldout(samples):
    s = _stats(samples.clamp(-1, 1), digits16_test(359))
    # real images (256 train vs test): mean_rmse ~ 0.03, std_rmse ~ 0.03
    assert s["mean_rmse"] < 0.1, s
    assert s["std_rmse"] < 0.1, s


def test_pixel_histogram_matches_heldout(samples):
    s = _stats(samples.clamp(-1, 1), digits16_test(359))
    # real images: hist_l1 ~ 0.02; a prior that never reaches the background value -1 or
    # spreads mass uniformly scores > 0.3
    assert s["hist_l1"] < 0.15, s
    # the data lie in [-1, 1]: almost no sample pixel may leave [-1.2, 1.2] (measured: 0.02 %)
    assert (samples.abs() > 1.2).float().mean() < 5e-3


def test_push_shapes_and_gradient():
    prior = priors.load("digits-16")
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    x = prior.push(z, steps=4)
    assert x.shape == (2, 3, 16, 16)
    (g,) = torch.autograd.grad(x.pow(2).sum(), z)
    assert g.shape == z.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    assert prior.sample((2,), steps=5).shape == (2, 16, 16)
