"""The image-mask problem: patches, simulator, image metrics, strategies, and EIG vs random."""

import math

import pytest
import torch
from scipy import stats

import bed
import bed.problems
from bed.problems import image_mask as im


def test_registered_with_sixteen_patch_candidates():
    p = bed.problems.get("image-mask")
    assert p.experiment.event_shape == (16, 16)
    corners = p.experiment.design_space.points
    assert corners.shape == (16, 2)
    # the 16 tiles cover every pixel exactly once
    idx = p.experiment.likelihood.observed_index(corners).reshape(-1)
    assert sorted(idx.tolist()) == list(range(256))
    assert p.loop_defaults["method"] == "irsde" and p.loop_defaults["acquisition"] == "gaussian"
    truth = p.draw_truth(torch.Generator().manual_seed(0))
    held = im.heldout_images(359)
    assert (held - truth).abs().flatten(1).amax(1).min() == 0  # a held-out digit


def test_simulator_reads_the_patch_with_the_stated_noise():
    theta = torch.arange(256.0).reshape(16, 16) / 256
    design = torch.tensor([4.0, 8.0])
    y = im.ImageMask()(theta.expand(20000, 16, 16), design, torch.Generator().manual_seed(0))
    assert y.shape == (20000, 4, 4)
    torch.testing.assert_close(y.mean(0), theta[4:8, 8:12], atol=4 * 0.1 / math.sqrt(2e4), rtol=0)
    assert abs(y.std(0).mean().item() - im.NOISE) < 0.003


def test_random_designs_are_orders_without_repeats():
    d = im.random_designs((50, 16), torch.Generator().manual_seed(0))
    assert d.shape == (50, 16, 2)
    for order in d:
        assert len({tuple(c) for c in order.tolist()}) == 16
    with pytest.raises(ValueError, match="at most 16"):
        im.random_designs((2, 17), torch.Generator())


def test_psnr_and_ssim_closed_forms_and_batching():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 16, generator=g) * 2 - 1
    # a constant offset c: MSE = c^2, PSNR = 10 log10(4 / c^2)
    torch.testing.assert_close(im.psnr(x + 0.2, x), torch.full((3,), 10 * math.log10(4 / 0.04)))
    torch.testing.assert_close(im.ssim(x, x), torch.ones(3))
    # SSIM falls with noise and is symmetric; batched equals one by one
    noisy = x + 0.3 * torch.randn(3, 16, 16, generator=g)
    s = im.ssim(noisy, x)
    assert (s < 0.9).all() and (s > 0).all()
    torch.testing.assert_close(s, im.ssim(x, noisy))
    torch.testing.assert_close(s, torch.stack([im.ssim(noisy[i], x[i]) for i in range(3)]))


def test_max_variance_picks_the_most_uncertain_unmeasured_patch():
    g = torch.Generator().manual_seed(0)
    samples = 0.01 * torch.randn(64, 16, 16, generator=g)
    samples[:, 8:12, 4:8] += torch.randn(64, 1, 1, generator=g)  # patch 9
    samples[:, 0:4, 12:16] += 0.5 * torch.randn(64, 1, 1, generator=g)  # patch 3
    measured = torch.zeros(16, dtype=torch.bool)
    assert im.choose_max_variance(samples, measured) == 9
    measured[9] = True
    assert im.choose_max_variance(samples, measured) == 3


def test_eig_choice_prefers_the_uncertain_patch_and_is_exact_for_gaussians():
    """With belief samples uncertain in one patch only, the Gaussian EIG picks it, and its
    value matches 0.5 logdet(I + C / sigma^2) of that patch's covariance C."""
    exp = bed.problems.get("image-mask").experiment
    g = torch.Generator().manual_seed(1)
    samples = torch.zeros(4000, 16, 16)
    samples[:, 4:8, 0:4] = 0.5 * torch.randn(4000, 4, 4, generator=g)  # patch 4, C = 0.25 I
    assert im.choose_eig(exp, samples) == 4
    est, _ = bed.eig.gaussian(exp, torch.tensor([[[4.0, 0.0]]]), samples)
    exact = 0.5 * 16 * math.log(1 + 0.25 / im.NOISE**2)
    assert abs(est.item() - exact) < 0.05 * exact


@pytest.mark.slow
def test_eig_patch_order_beats_random_order():
    """Paired over held-out digits: PSNR of the posterior mean after 3 patches chosen by EIG vs
    in a random order (same noisy readings, IR-SDE posteriors); one-sided Wilcoxon."""
    images = im.heldout_images(10, torch.Generator().manual_seed(3))
    out = im.compare_strategies(images, steps=3, strategies=("eig", "random"), num_samples=12)
    final = out["psnr"][:, :, -1].double()  # (2, n)
    p_value = stats.wilcoxon((final[0] - final[1]).numpy(), alternative="greater").pvalue
    assert p_value < 0.05, (final, p_value)
    # the chosen patches never repeat under EIG
    for order in out["order"][0]:
        assert len(set(order.tolist())) == 3


def test_loop_records_patches_and_resumes(tmp_path):
    path = tmp_path / "im.nc"
    sd = bed.SequentialDesign.from_problem("image-mask", num_samples=8, record=path, seed=2)
    ds = sd.run(2, progress=False)
    corners = {tuple(c) for c in im.patch_corners().tolist()}
    assert all(tuple(d) in corners for d in ds["design"].values.tolist())
    assert ds["observation"].shape == (2, 4, 4)
    assert "posterior_source" not in ds  # the IR-SDE draws have no source-space version
    ds2 = bed.SequentialDesign.resume(path).run(until=3, progress=False)
    assert ds2.sizes["step"] == 3
    torch.testing.assert_close(
        torch.as_tensor(ds2["design"].values[:2]), torch.as_tensor(ds["design"].values)
    )


@pytest.mark.parametrize("prior", ["digits-16", "mnist-28"])
def test_batched_readings_give_the_exact_likelihood_differences(prior):
    """The batched posterior calls of ``compare_strategies`` see every run's readings through
    per-pixel means and counts; summed, their log-density must differ between two images by
    exactly what the experiment's likelihood of the raw readings (repeats included) says."""
    st = im.setting(prior)
    exp = im.image_mask(prior)
    lik = exp.likelihood
    corners = im.patch_corners(st.image, st.patch)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(1, *st.image, generator=g) * 2 - 1
    readings = im.ImageMask(prior)(truth[:, None], corners, g)  # (1, 16, p, p)
    measured = torch.zeros(1, 1, 16, dtype=torch.bool)
    measured[0, 0, [0, 5, 9]] = True
    values, counts = im._masked_data(lik, corners, readings, measured)  # (1, 1, H, W)
    # a repeated reading of patch 5 enters as a second count on its pixels
    designs = corners[[0, 5, 9, 5]]
    obs = torch.cat([readings[0, [0, 5, 9]], readings[0, [5]] + 0.05])
    v2 = values.clone()[0, 0]
    c2 = counts.clone()[0, 0]
    r5, c5 = (int(x) for x in corners[5])
    patch = (slice(r5, r5 + st.patch), slice(c5, c5 + st.patch))
    v2[patch] = (2 * readings[0, 5] + 0.05) / 2
    c2[patch] = 2
    fn = im.pixel_elements(v2[None], c2[None], st.noise)
    a, b = torch.rand(2, *st.image, generator=g) * 2 - 1
    ours = fn(a[None])[0].sum() - fn(b[None])[0].sum()
    exact = exp.log_likelihood(a[None], designs, obs) - exp.log_likelihood(b[None], designs, obs)
    torch.testing.assert_close(ours, exact[0], rtol=1e-4, atol=1e-3)
    assert int(counts.sum()) == 3 * st.patch**2
