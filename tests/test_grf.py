"""Gaussian-random-field data, the Glow flow wrapper, and the shipped ``grf-32`` priors.

The training fields are exactly Gaussian with a known covariance (``grf32_covariance``), so the
flow's held-out NLL is compared with the exact one, and samples of both priors are compared
with held-out fields on the mean field, the pixel variance and the radially averaged power
spectrum. Each tolerance is set against the value that 256 *real* fields reach against the same
held-out set (the sampling-error scale, stated next to it).
"""

from __future__ import annotations

import math

import pytest
import torch

import priors
from priors import data, metrics, zoo
from priors.flow import FlowPrior, glow

HELDOUT = 2000


@pytest.fixture(scope="module")
def heldout() -> torch.Tensor:
    return data.grf32(HELDOUT, torch.Generator().manual_seed(1_000_003))


def _stats(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    err = metrics.spectrum_log_error(x, ref)
    return {
        "mean_rmse": (x.mean(0) - ref.mean(0)).pow(2).mean().sqrt().item(),
        "var_ratio": (x.var(0).mean() / ref.var(0).mean()).item(),
        "spec_mean": err.mean().item(),
        "spec_max": err.max().item(),
    }


# ---------------------------------------------------------------------- the data
def test_grf32_covariance_matches_the_generator():
    """Empirical covariance of 4000 fields vs the exact one: the entry-wise error of a sample
    covariance of unit-variance data has sd about sqrt((1 + rho^2) / n) <= 0.023."""
    x = data.grf32(4000, torch.Generator().manual_seed(0)).double().reshape(4000, -1)
    cov = data.grf32_covariance()
    torch.testing.assert_close(cov.diagonal(), torch.ones(1024, dtype=torch.float64))
    assert (torch.cov(x.T) - cov).abs().max() < 6 * math.sqrt(2 / 4000)
    assert torch.linalg.eigvalsh(cov).min() > 0  # a proper covariance
    # stationary and smooth: neighbours correlate strongly, distant cells weakly
    assert 0.9 < cov[0, 1] < 1 and abs(cov[0, 31]) < 0.2


def test_radial_power_spectrum_of_white_noise_is_flat():
    x = torch.randn(500, 32, 32, generator=torch.Generator().manual_seed(0))
    p = metrics.radial_power_spectrum(x)
    assert p.shape == (16,)
    torch.testing.assert_close(p, torch.ones(16), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        metrics.radial_power_spectrum(torch.zeros(32, 32))


def test_reference_scale_of_real_fields(heldout):
    """256 fresh real fields against the held-out ones: the scale of the tolerances below."""
    s = _stats(data.grf32(256, torch.Generator().manual_seed(5)), heldout)
    assert s["mean_rmse"] < 0.1 and abs(s["var_ratio"] - 1) < 0.1, s
    assert s["spec_mean"] < 0.08 and s["spec_max"] < 0.2, s


# ---------------------------------------------------------------------- Glow wrapper
def _small_glow() -> FlowPrior:
    torch.manual_seed(0)
    flow = glow((8, 8), levels=1, blocks_per_level=2, hidden=8)
    prior = FlowPrior(flow, event_shape=(8, 8))
    with torch.no_grad():  # initialise ActNorm from data and leave the identity
        prior.log_prob(torch.randn(32, 8, 8))
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior


def test_glow_push_pull_and_log_det_against_autograd():
    prior = _small_glow().to(dtype=torch.float64)
    z = torch.randn(3, *prior.source_event_shape, dtype=torch.float64)
    x = prior.push(z)
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(prior.pull(x), z)
    for zi in z:
        jac = torch.autograd.functional.jacobian(
            lambda v: prior.push(v.reshape(prior.source_event_shape)).reshape(-1), zi.reshape(-1)
        )  # (64, 64)
        expected = prior.source.log_prob(zi) - torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(prior.log_prob(prior.push(zi)), expected)


def test_glow_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        glow((30, 32), levels=2)


# ---------------------------------------------------------------------- shipped priors
def test_cards_and_checkpoint_sizes():
    for name in ("grf-32", "grf-32-flow"):
        info = zoo.card(name)
        assert info["event_shape"] == [32, 32]
        assert (zoo.CHECKPOINT_DIR / f"{name}.pt").stat().st_size < 5e6
    assert zoo.card("grf-32")["kind"] == "diffusion" and zoo.card("grf-32-flow")["kind"] == "flow"


def test_flow_heldout_nll_is_near_the_exact_gaussian_nll(heldout):
    """The exact data density is known, so the NLL gap is KL(data || model) per dimension,
    estimated; the trained flow's card reports about 0.006 nats/dim."""
    prior = priors.load("grf-32-flow")
    x = heldout[:500]
    with torch.no_grad():
        nll = -prior.log_prob(x).mean().item() / 1024
    cov = data.grf32_covariance()
    exact = torch.distributions.MultivariateNormal(torch.zeros(1024, dtype=cov.dtype), cov)
    exact_nll = -exact.log_prob(x.reshape(500, -1).double()).mean().item() / 1024
    assert 0 <= nll - exact_nll + 0.005 and nll - exact_nll < 0.03, (nll, exact_nll)


def test_flow_samples_match_heldout_fields(heldout):
    prior = priors.load("grf-32-flow")
    with torch.no_grad():
        x = prior.sample_with_generator((256,), torch.Generator().manual_seed(0))
    s = _stats(x, heldout)
    # real fields: mean_rmse ~ 0.06, var_ratio ~ 1 +- 0.05, spec_mean ~ 0.04, spec_max ~ 0.1
    assert s["mean_rmse"] < 0.12 and abs(s["var_ratio"] - 1) < 0.15, s
    assert s["spec_mean"] < 0.2 and s["spec_max"] < 0.35, s


@pytest.mark.slow
def test_diffusion_sde_samples_match_heldout_fields(heldout):
    """``sample`` (the reverse SDE, 200 Euler-Maruyama steps) matches the held-out spectrum;
    measured: spectrum ratio 1.00-1.07 on every ring, pixel variance ratio 1.10 (128 draws)."""
    prior = priors.load("grf-32")
    with torch.no_grad():
        x = prior.sample((128,), generator=torch.Generator().manual_seed(0))
    s = _stats(x, heldout)
    assert s["mean_rmse"] < 0.15 and abs(s["var_ratio"] - 1) < 0.2, s
    assert s["spec_mean"] < 0.1 and s["spec_max"] < 0.2, s


@pytest.mark.slow
def test_diffusion_ode_push_is_rougher_than_the_data(heldout):
    """The probability-flow ODE map (``push``, what source-space samplers use) is less accurate
    than the SDE for this network: too much power at fine scales and an overdispersed field
    mean. Pinned here so a better checkpoint shows up as a change (measured: power ratio 1.06
    on ring 1 rising to 3.4 on ring 16; pixel variance ratio 1.46)."""
    prior = priors.load("grf-32")
    z = torch.randn(128, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = prior.push(z)
    ratio = metrics.radial_power_spectrum(x) / metrics.radial_power_spectrum(heldout)
    assert 0.9 < ratio[0] < 1.2  # coarse scales right
    assert ratio[-4:].mean() > 1.5  # fine scales too rough
    assert 1.2 < _stats(x, heldout)["var_ratio"] < 1.7


def test_sensor_placement_offers_and_runs_the_learned_field_priors():
    import bed
    import bed.problems

    assert {"gp", "grf-32", "grf-32-flow"} <= set(bed.problems.prior_choices("sensor-placement"))
    p = bed.problems.get("sensor-placement", prior="grf-32-flow")
    sd = bed.SequentialDesign.from_problem(
        p, seed=0, num_samples=16, optimize_options={"num_restarts": 1, "raw_samples": 8}
    )
    ds = sd.run(2, progress=False)
    assert ds["posterior"].shape == (2, 16, 32, 32)
    assert torch.isfinite(torch.as_tensor(ds["posterior"].values)).all()
