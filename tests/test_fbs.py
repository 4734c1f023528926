"""Forward-backward bridging Gibbs-CSMC (``method="fbs"``) against exact conditionals.

Oracle priors (Gaussians with exact scores). Chains are autocorrelated, so the Monte Carlo
standard errors use the bulk effective sample size reported by the sampler.
"""

import math

import pyro.distributions as dist
import pytest
import torch

import bed
import priors


class Coordinates:
    """Likelihood: the design's integer entries are observed coordinates (+ small noise)."""

    def __init__(self, noise):
        self.noise = noise

    def __call__(self, theta, xi):
        idx = xi.long()  # (..., m)
        vals = torch.gather(theta, -1, idx.expand(theta.shape[:-1] + idx.shape[-1:]))
        return dist.Normal(vals, self.noise).to_event(1)

    def observed_index(self, xi):
        return xi.long()


def test_joint_gaussian_repo_case():
    """methods.md 7.3(4a): (x, y) ~ N((-1, 1), [[2, .4], [.4, .5]]), y = 0 observed:
    x | y ~ N(-1.8, 1.68)."""
    prior = priors.analytic.Gaussian(
        torch.tensor([-1.0, 1.0]), torch.tensor([[2.0, 0.4], [0.4, 0.5]])
    ).as_diffusion()
    exp = bed.Experiment(prior, Coordinates(0.01), bed.Box([0.0], [1.0]))
    chains, sweeps = 64, 100
    post = bed.condition(
        exp,
        torch.ones(1, 1),
        torch.zeros(1, 1),
        "fbs",
        chains * sweeps,
        num_chains=chains,
        warmup=10,
        noiseless=True,
        num_particles=16,
        steps=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert (post.samples[:, 1] == 0).all()
    x = post.samples[:, 0].double()
    d = post.diagnostics
    ess = d["ess_bulk"]
    assert ess > 500 and d["rhat"] < 1.05
    assert 0 < d["autocorrelation_lag1"] < 0.9
    se_mean = math.sqrt(1.68 / ess)
    se_var = 1.68 * math.sqrt(2 / ess)
    # 5 standard errors plus the O(step) Euler/forward mismatch (about 1.5 % at 50 steps)
    assert abs(float(x.mean()) + 1.8) < 5 * se_mean + 0.02, (float(x.mean()), se_mean)
    assert abs(float(x.var()) - 1.68) < 5 * se_var + 0.04, (float(x.var()), se_var)


@pytest.mark.slow
@pytest.mark.parametrize("noiseless", [True, False])
def test_inpainting_gaussian_4d(noiseless):
    """4-D Gaussian prior, coordinates 1 and 3 observed: the exact conditional of 0 and 2
    (noiseless), or the exact linear-Gaussian posterior with noise 0.3 (Gibbs over blocks)."""
    m0 = torch.tensor([0.5, -0.3, 0.2, 0.1])
    a = torch.tensor(
        [[1.0, 0.4, 0.0, 0.2], [0.0, 1.0, 0.5, 0.0], [0.3, 0.0, 1.0, 0.4], [0.0, 0.2, 0.0, 1.0]]
    )
    s0 = 0.5 * a @ a.T + 0.2 * torch.eye(4)
    noise = 0.3
    prior = priors.analytic.Gaussian(m0, s0).as_diffusion()
    exp = bed.Experiment(prior, Coordinates(noise), bed.Box([0.0, 0.0], [3.0, 3.0]))
    designs = torch.tensor([[1.0, 3.0]])
    y = torch.tensor([[0.8, -0.6]])
    obs = torch.tensor([1, 3])
    sel = torch.zeros(2, 4)
    sel[0, 1] = sel[1, 3] = 1.0
    s0d, m0d, yd = s0.double(), m0.double(), y[0].double()
    r = (0.0 if noiseless else noise**2) * torch.eye(2, dtype=torch.float64)
    gain = s0d @ sel.double().T @ torch.linalg.inv(sel.double() @ s0d @ sel.double().T + r)
    m = m0d + gain @ (yd - m0d[obs])
    s = s0d - gain @ sel.double() @ s0d
    chains, sweeps = 64, 60
    post = bed.condition(
        exp,
        designs,
        y,
        "fbs",
        chains * sweeps,
        num_chains=chains,
        warmup=10,
        noiseless=noiseless,
        num_particles=16,
        steps=40,
        generator=torch.Generator().manual_seed(1),
    )
    x = post.samples.double()
    free = torch.tensor([0, 2]) if noiseless else torch.arange(4)
    ess = post.diagnostics["ess_bulk"]
    assert ess > 200
    sd = s.diagonal()[free].sqrt()
    err = (x[:, free].mean(0) - m[free]).abs()
    assert (err <= 5 * sd / math.sqrt(ess) + 0.03 * sd).all(), (x.mean(0), m)
    cov = x[:, free].T.cov()
    sf = s[free][:, free]
    se_cov = ((sf.diagonal()[:, None] * sf.diagonal()[None] + sf.pow(2)) / ess).sqrt()
    assert ((cov - sf).abs() <= 5 * se_cov + 0.05 * sf.diagonal().max()).all(), (cov, sf)
    if noiseless:
        assert (post.samples[:, obs] == y[0]).all()


def test_bad_input():
    prior = priors.analytic.Gaussian(torch.zeros(2), torch.eye(2)).as_diffusion()
    exp = bed.Experiment(prior, lambda th, xi: dist.Normal(th[..., 0], 0.1), bed.Box([0.0], [1.0]))
    with pytest.raises(ValueError, match="observed_index"):
        bed.condition(exp, torch.zeros(1, 1), torch.zeros(1), "fbs", 10)
    exp2 = bed.Experiment(prior, Coordinates(0.1), bed.Box([0.0, 0.0], [1.0, 1.0]))
    with pytest.raises(ValueError, match="more than once"):
        bed.condition(
            exp2, torch.zeros(1, 2), torch.zeros(1, 2), "fbs", 10, noiseless=True, steps=5
        )
