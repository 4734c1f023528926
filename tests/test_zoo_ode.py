"""Shipped ODE-based priors (diffusion, flow matching): sample quality and density checks.

These priors have no exact inverse, so the exact-flow battery (test_priors_flow.py) does not
apply; here they are checked against held-out data with an MMD two-sample permutation test, and
their ODE log-density must integrate to one on a grid.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

import priors
from priors.data import two_moons

# the 2-D two-moons ODE priors (image priors such as digits-16 have their own tests)
ODE_PRIORS = [
    n
    for n in priors.available()
    if priors.zoo.card(n)["kind"] != "flow" and priors.zoo.card(n)["event_shape"] == [2]
]


def _mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0)) -> torch.Tensor:
    """Unbiased squared MMD with a sum of Gaussian kernels; x, y are `n x d`."""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)
    k = sum(torch.exp(-d2 / (2 * b * b)) for b in bandwidths)
    n = x.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    off = n * (n - 1)
    return (
        (kxx.sum() - kxx.diag().sum()) / off
        + (kyy.sum() - kyy.diag().sum()) / off
        - 2 * kxy.mean()
    )


def test_ode_priors_are_shipped():
    assert {"two-moons-diffusion", "two-moons-fm"} <= set(ODE_PRIORS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ODE_PRIORS)
def test_samples_match_heldout_data_mmd(name):
    """Two-sample permutation test at the 1% level against fresh two-moons data."""
    prior = priors.load(name)
    n = 500
    with torch.no_grad():
        x = prior.push(torch.randn(n, 2, generator=torch.Generator().manual_seed(7)))
    y = two_moons(n, torch.Generator().manual_seed(99))
    stat = _mmd2(x, y)
    xy, g, count, perms = torch.cat([x, y]), torch.Generator().manual_seed(0), 0, 100
    for _ in range(perms):
        idx = torch.randperm(2 * n, generator=g)
        count += int(_mmd2(xy[idx[:n]], xy[idx[n:]]) >= stat)
    p_value = (count + 1) / (perms + 1)
    assert p_value > 0.01, (name, stat.item(), p_value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ODE_PRIORS)
def test_ode_density_integrates_to_one_on_a_grid(name):
    prior = priors.load(name)
    gx, gy = torch.linspace(-4, 4, 80), torch.linspace(-3, 3, 60)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    lp, info = prior.ode_log_prob(pts, steps=30)
    mass = lp.exp().sum() * (gx[1] - gx[0]) * (gy[1] - gy[0])
    assert abs(mass.item() - 1.0) < 0.05, (name, mass.item(), info)


@pytest.mark.parametrize("name", ODE_PRIORS)
def test_pyro_face_and_push_shapes(name):
    prior = priors.load(name)
    z = prior.source.sample((3, 4))
    assert prior.push(z).shape == (3, 4, 2)

    def model():
        with pyro.plate("items", 3):
            return pyro.sample("theta", prior)

    x = prior.push(prior.source.sample((3,))).detach()
    tr = poutine.trace(poutine.condition(model, data={"theta": x})).get_trace()
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["theta"]["log_prob"], prior.log_prob(x))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        prior.log_prob(torch.zeros(5, 3))
