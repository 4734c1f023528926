"""Simulation-based calibration of ESS on location finding (methods.md 7.3(6), 10.2).

For r = 1..200: theta* ~ prior, y ~ p(y | theta*, xi) at 5 random designs, then 49 ESS draws
from independent chains (100 warm-up iterations); the rank of each coordinate of theta* among
the draws is uniform on 0..49 when the sampler is exact. Ranks go into 10 bins and a chi-square
test per coordinate must give p > 0.01 / 4 (Bonferroni over the 4 coordinates: family-wise level 0.01).
"""

import pyro.distributions as dist
import pytest
import torch
from scipy.stats import chisquare

import bed
import priors

NUM_REPS, NUM_DRAWS, NUM_DESIGNS, WARMUP = 200, 49, 5, 100


def location_finding_likelihood(theta, xi):
    """theta `(..., K=2, 2)`, xi `(..., 2)`: y ~ N(log(0.1 + sum_k 1/(1e-4 + |theta_k - xi|^2)),
    0.5^2)."""
    d2 = (theta - xi.unsqueeze(-2)).pow(2).sum(-1)  # (..., K)
    mu = 0.1 + (1.0 / (1e-4 + d2)).sum(-1)  # (...)
    return dist.Normal(mu.log(), 0.5)


def _priors():
    out = [
        pytest.param(
            lambda: priors.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=(2, 2)),
            id="gaussian",
        )
    ]
    if "sources-2x2" in priors.available():
        out.append(pytest.param(lambda: priors.load("sources-2x2"), id="sources-2x2"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("make_prior", _priors())
def test_ess_sbc_location_finding(make_prior):
    prior = make_prior()
    exp = bed.Experiment(prior, location_finding_likelihood, bed.Box([-4.0, -4.0], [4.0, 4.0]))
    gen = torch.Generator().manual_seed(0)
    ranks = []
    for _ in range(NUM_REPS):
        theta = prior.sample_with_generator((), gen)  # (2, 2)
        designs = exp.design_space.sample(NUM_DESIGNS, gen)  # (n, 2)
        loc = location_finding_likelihood(theta, designs).loc  # (n,)
        y = loc + 0.5 * torch.randn(loc.shape, generator=gen)
        post = bed.condition(
            exp, designs, y, "ess", NUM_DRAWS, num_chains=NUM_DRAWS, warmup=WARMUP, generator=gen
        )
        ranks.append((post.samples < theta).reshape(NUM_DRAWS, 4).sum(0))  # (4,) in 0..49
    ranks = torch.stack(ranks)  # (reps, 4)
    bins = ranks * 10 // (NUM_DRAWS + 1)  # 10 equiprobable bins
    for j in range(4):
        counts = torch.bincount(bins[:, j], minlength=10).numpy()
        p = chisquare(counts).pvalue
        assert p > 0.01 / 4, (j, counts, p)
