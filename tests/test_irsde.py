"""``method="irsde"``: the conditional IR-SDE sampler with an oracle score, the point-estimate
protocol, errors, and the shipped ``digits-16-irsde`` against DPS on held-out digits.

The SDE's closed forms (marginals, bridge, ML loss) are tested in ``test_sde.py``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

import bed
import priors
from bed.conditioning.irsde import PatchObservation, masked_point_estimate
from priors.data import digits16_test
from priors.nets import ConditionalTimeUNet, IRSDEModel
from priors.sde import MeanRevertingSDE

# 1-D conjugate problem: x0 ~ N(M0, S0^2), y = x0 + N(0, R^2), mu := y
M0, S0, R, Y, LAM = 1.5, 0.8, 0.5, 0.3, 0.5
SP = 1 / (1 / S0**2 + 1 / R**2)  # posterior variance
MP = SP * (M0 / S0**2 + Y / R**2)  # posterior mean


class OracleNoise(torch.nn.Module):
    r"""Exact conditional noise: :math:`p_t(x \mid y) = N(\mu + (m_p - \mu)c_t,
    c_t^2 S_p + \bar\sigma_t^2)` with :math:`c_t = e^{-\bar\theta_t}` and :math:`\mu = y`
    (methods.md 7.3(2)); noise :math:`= -\bar\sigma_t \nabla \log p_t`."""

    event_shape = (1,)

    def __init__(self, sde: MeanRevertingSDE) -> None:
        super().__init__()
        self.sde = sde

    def forward(self, x, mu, t):
        c, std = self.sde.marginal(t)
        c, std = c[:, None], std[:, None]  # (N, 1)
        m_p = SP * (M0 / S0**2 + mu / R**2)
        mean = mu + (m_p - mu) * c
        return std * (x - mean) / (c**2 * SP + std**2)


class FirstCoordinate:
    """y = theta[0] + N(0, R^2); the design is unused; observed_index gives coordinate 0."""

    def __call__(self, theta, xi):
        return dist.Normal(theta[..., :1], R).to_event(1)

    def observed_index(self, xi):
        return torch.zeros(1, dtype=torch.long, device=xi.device)


def _oracle_experiment():
    sde = MeanRevertingSDE(lam=LAM, T=100)
    model = IRSDEModel(OracleNoise(sde), sde, fill=0.0)
    prior = priors.analytic.Gaussian(torch.tensor([M0]), torch.tensor([[S0**2]]))
    return bed.Experiment(prior, FirstCoordinate(), bed.Box([0.0], [1.0])), model


@pytest.mark.parametrize(
    "mode, lo, hi",
    [
        ("sde", 0.97, 1.03),  # Euler-Maruyama at T = 100: std about 1 % high
        ("ode", 0.98, 1.02),
        ("posterior", 0.93, 0.99),  # plug-in x0-hat drops Var(x0 | x_t): about 4 % low
    ],
)
def test_oracle_conditional_gaussian(mode, lo, hi):
    """10^5 draws at T = 100 from mu + lam * eps match N(m_p, S_p): mean within 2 % of
    |m_p - mu| (discretisation) plus 5 standard errors; std ratio in [lo, hi]."""
    exp, model = _oracle_experiment()
    n = 100_000
    post = bed.condition(
        exp,
        torch.zeros(1, 1),
        torch.tensor([[Y]]),
        "irsde",
        n,
        model=model,
        mode=mode,
        generator=torch.Generator().manual_seed(0),
    )
    x = post.samples[:, 0].double()
    se = math.sqrt(SP / n)
    assert abs(float(x.mean()) - MP) < 0.02 * abs(MP - Y) + 5 * se, float(x.mean())
    ratio = float(x.std()) / math.sqrt(SP)
    assert lo < ratio < hi, ratio
    assert post.diagnostics["num_evals"] == 100 * n and post.diagnostics["mode"] == mode
    assert post.diagnostics["observed_fraction"] == 1.0


def test_coarser_grid_still_close():
    """steps=25 (every fourth index): the posterior mode stays within 10 % in std."""
    exp, model = _oracle_experiment()
    post = bed.condition(
        exp, torch.zeros(1, 1), torch.tensor([[Y]]), "irsde", 20_000, model=model,
        mode="posterior", steps=25, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    x = post.samples[:, 0].double()
    assert abs(float(x.mean()) - MP) < 0.03
    assert 0.85 < float(x.std()) / math.sqrt(SP) < 1.0


def test_patch_observation_and_point_estimate():
    lik = PatchObservation(patch=4, noise=0.1)
    theta = torch.arange(256.0).reshape(16, 16)
    design = torch.tensor([[2.0, 3.0], [0.0, 0.0]])
    idx = lik.observed_index(design[0])
    assert idx.tolist()[:5] == [35, 36, 37, 38, 51]
    d = lik(theta, design)  # batch (2,), event (4, 4)
    assert d.batch_shape == (2,) and d.event_shape == (4, 4)
    torch.testing.assert_close(d.mean[0], theta[2:6, 3:7])
    sde = MeanRevertingSDE(lam=0.5, T=10)
    model = IRSDEModel(ConditionalTimeUNet((16, 16), base=8), sde, fill=-0.5)
    # overlapping patches: the shared pixels take the mean of their two observations
    y = torch.stack([torch.ones(4, 4), 3 * torch.ones(4, 4)])
    mu, mask = masked_point_estimate(
        model, lik.observed_index, torch.tensor([[0.0, 0], [2, 2]]), y
    )
    assert mask.sum() == 16 + 16 - 4
    assert mu[0, 0] == 1 and mu[5, 5] == 3 and mu[2, 2] == 2 and mu[10, 10] == -0.5
    with pytest.raises(ValueError, match="corners"):
        lik.observed_index(torch.tensor([13.0, 0.0]))


def test_errors_name_the_problem():
    exp, model = _oracle_experiment()
    args = (exp, torch.zeros(1, 1), torch.tensor([[Y]]), "irsde", 4)
    with pytest.raises(ValueError, match="needs model="):
        bed.condition(*args)
    with pytest.raises(ValueError, match="unknown model 'nope'.*digits-16-irsde"):
        bed.condition(*args, model="nope")
    with pytest.raises(ValueError, match="mode must be one of"):
        bed.condition(*args, model=model, mode="ddim")
    with pytest.raises(ValueError, match=r"event shape \(16, 16\) differs"):
        bed.condition(*args, model="digits-16-irsde")
    plain = bed.Experiment(
        exp.prior, lambda theta, xi: dist.Normal(theta, R).to_event(1), bed.Box([0.0], [1.0])
    )
    with pytest.raises(ValueError, match="observed_index"):
        bed.condition(plain, torch.zeros(1, 1), torch.tensor([[Y]]), "irsde", 4, model=model)
    post = bed.condition(
        plain, torch.zeros(1, 1), torch.tensor([[Y]]), "irsde", 4, model=model,
        point_estimate=lambda d, y: y[0],
    )  # fmt: skip
    assert post.samples.shape == (4, 1)


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB on the [-1, 1] range (peak-to-peak 2)."""
    return float(10 * torch.log10(4.0 / (x.clamp(-1, 1) - ref).pow(2).mean()))


@pytest.mark.slow
def test_digits_irsde_beats_dps():
    """4 held-out digits, 3 random 4x4 patches each, noise 0.1; PSNR of posterior means of 16
    draws. Asserted (robust over images): IR-SDE ("posterior" mode, T = 100) beats plain DPS
    (``bed.condition(method="dps")``, 100 steps), which diverges on this sharp likelihood
    (NaN; PSNR taken as -inf), and improves on its own point estimate ``mu`` on average and
    is not worse on any image. Reported only: SNR-tempered DPS (``tempering="snr"``, the SMC twist's
    tempering, stable), which scores about 2 dB *higher* than this IR-SDE (trained
    for under 10 CPU minutes): see benchmarks/inpainting.py."""
    prior = priors.load("digits-16")
    lik = PatchObservation(patch=4, noise=0.1)
    exp = bed.Experiment(prior, lik, bed.Box([0.0, 0.0], [12.0, 12.0]))
    g = torch.Generator().manual_seed(0)
    truth = digits16_test(4, g)
    psnr = {"irsde": [], "dps": [], "dps_snr": [], "mu": []}
    for i, x in enumerate(truth):
        designs = torch.randint(0, 13, (3, 2), generator=g).float()
        y = lik(x, designs).mean + 0.1 * torch.randn((3, 4, 4), generator=g)
        gen = torch.Generator().manual_seed(10 + i)
        ir = bed.condition(exp, designs, y, "irsde", 16, model="digits-16-irsde", generator=gen)
        try:
            dps_x = bed.condition(exp, designs, y, "dps", 16, steps=100, generator=gen).samples
            psnr["dps"].append(_psnr(dps_x.mean(0), x))
        except ValueError as err:  # NaN reached the likelihood's validation: diverged
            assert "invalid values" in str(err)
            psnr["dps"].append(-math.inf)
        snr = bed.condition(exp, designs, y, "dps", 16, steps=100, tempering="snr", generator=gen)
        psnr["dps_snr"].append(_psnr(snr.samples.mean(0), x))
        psnr["irsde"].append(_psnr(ir.samples.mean(0), x))
        psnr["mu"].append(_psnr(ir.diagnostics["point_estimate"], x))
    mean = {k: sum(v) / len(v) for k, v in psnr.items()}
    print("PSNR (dB)", psnr, mean)
    assert mean["irsde"] > mean["dps"], psnr
    assert mean["irsde"] > mean["mu"] + 0.5, psnr
    assert all(a >= b - 0.5 for a, b in zip(psnr["irsde"], psnr["mu"])), psnr
