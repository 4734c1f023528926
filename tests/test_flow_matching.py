"""FlowMatchingPrior with the closed-form Gaussian (and mixture) velocity against exact answers."""

import math

import pytest
import torch
from torch import nn

from priors.analytic import Gaussian, GaussianMixture
from priors.flow_matching import FlowMatchingPrior, fm_loss

LOC = [1.0, -0.5]
COV = [[1.0, 0.6], [0.6, 0.8]]


def _sqrtm(s):
    evals, evecs = torch.linalg.eigh(s)
    return evecs @ torch.diag(evals.sqrt()) @ evecs.T


def test_gaussian_push_is_the_symmetric_square_root_map():
    g = Gaussian(torch.tensor(LOC), torch.tensor(COV))
    p = g.as_flow_matching(steps=100)
    z = torch.randn(500, 2)
    ref = g.loc + z @ _sqrtm(g.covariance_matrix)
    torch.testing.assert_close(p.push(z), ref, atol=1e-3, rtol=0)


def test_gaussian_velocity_matches_closed_form():
    g = Gaussian(torch.tensor(LOC), torch.tensor(COV))
    p = g.as_flow_matching()
    x, t = torch.randn(6, 2), torch.linspace(0.0, 1.0, 6)
    m, s, eye = g.loc, g.covariance_matrix, torch.eye(2)
    for xi, ti in zip(x, t):
        c = ti**2 * s + (1 - ti) ** 2 * eye
        ref = m + (ti * s - (1 - ti) * eye) @ torch.linalg.solve(c, xi - ti * m)
        torch.testing.assert_close(p.velocity(xi[None], ti[None])[0], ref, atol=1e-5, rtol=1e-5)


def test_gaussian_log_prob_matches_analytic():
    g = Gaussian(torch.tensor(LOC), torch.tensor(COV))
    p = g.as_flow_matching(steps=100)
    x = g.sample((200,))
    lp, info = p.ode_log_prob(x)
    torch.testing.assert_close(lp, g.log_prob(x), atol=2e-3, rtol=0)
    assert info == {"nfe": 200, "vjp": 400, "divergence": "exact", "steps": 100}
    torch.testing.assert_close(p.log_prob(x), lp)


def test_hutchinson_log_prob_above_16_dims():
    d = 18
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(d, d, generator=gen) / math.sqrt(d)
    g = Gaussian(torch.randn(d, generator=gen), a @ a.T + 0.5 * torch.eye(d))
    p = g.as_flow_matching(steps=30)
    x = g.sample((200,))
    est, info = p.ode_log_prob(x)
    assert info["divergence"] == "hutchinson" and info["vjp"] == 60
    err = est - g.log_prob(x)
    assert abs(err.mean().item()) < 5 * err.std().item() / math.sqrt(200) + 1e-2


def test_mixture_push_mass_and_log_prob():
    locs = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    covs = torch.stack([torch.eye(2) * 0.5, torch.tensor([[0.8, 0.3], [0.3, 0.4]]), torch.eye(2)])
    mix = GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), locs, covs)
    p = mix.as_flow_matching(steps=60)
    x = p.sample((4000,), generator=torch.Generator().manual_seed(1))
    mass = torch.bincount(mix.responsibilities(x).argmax(-1), minlength=3).to(x.dtype) / 4000
    torch.testing.assert_close(mass, mix.weights, atol=0.03, rtol=0)
    y = mix.sample((100,))
    torch.testing.assert_close(p.ode_log_prob(y)[0], mix.log_prob(y), atol=5e-2, rtol=0)


def test_fm_loss_is_minimised_by_the_exact_velocity_in_expectation():
    g = Gaussian(torch.tensor(LOC), torch.tensor(COV))
    exact = g.as_flow_matching().net
    gen = torch.Generator().manual_seed(4)
    n = 20000
    x1 = g.loc + torch.randn(n, 2, generator=gen) @ g.scale_tril.mT
    z = torch.randn(n, 2, generator=gen)
    t = torch.rand(n, generator=gen)

    class Shifted(nn.Module):
        def forward(self, x, t):
            return exact(x, t) + 0.1

    assert fm_loss(exact, x1, z, t).mean() < fm_loss(Shifted(), x1, z, t).mean()
    assert fm_loss(exact, x1, z, t).shape == (n,)


def test_shapes_and_errors():
    g = Gaussian(torch.zeros(4), torch.eye(4), event_shape=(2, 2))
    p = g.as_flow_matching(steps=4)
    z = torch.randn(3, 5, 2, 2)
    assert p.push(z).shape == (3, 5, 2, 2)
    assert p.log_prob(z).shape == (3, 5)
    assert p.sample((6,)).shape == (6, 2, 2)
    assert p.velocity(z, torch.rand(3, 5)).shape == (3, 5, 2, 2)
    with pytest.raises(ValueError, match="t must be a scalar or have the batch shape"):
        p.velocity(z, torch.rand(4))
    with pytest.raises(ValueError, match="event_shape"):
        FlowMatchingPrior(nn.Identity())


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None]], -1))


def test_push_gradcheck_float64():
    p = FlowMatchingPrior(_TinyNet().double(), event_shape=(2,), steps=3)
    z = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(p.push, (z,))
