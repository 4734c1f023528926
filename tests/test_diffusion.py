"""DiffusionPrior with exact scores (analytic Gaussian and Gaussian mixture) against closed forms."""

import math

import pytest
import torch
from torch import nn

from priors.analytic import Gaussian, GaussianMixture
from priors.diffusion import DiffusionPrior
from priors.sde import VPSDE, MeanRevertingSDE

LOC = [1.0, -0.5]
COV = [[1.0, 0.6], [0.6, 0.8]]


def _gaussian(dtype=None):
    dtype = dtype or torch.get_default_dtype()
    return Gaussian(torch.tensor(LOC, dtype=dtype), torch.tensor(COV, dtype=dtype))


def _mixture(**kwargs):
    locs = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    covs = torch.stack([torch.eye(2) * 0.5, torch.tensor([[0.8, 0.3], [0.3, 0.4]]), torch.eye(2)])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), locs, covs, **kwargs)


def _check_moments(x, mean, cov, bias=0.0):
    """Sample mean/cov within 5 Monte Carlo standard errors (+ a stated discretisation bias)."""
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean + bias).all(), (x.mean(0), mean)
    var = cov.diagonal()
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < 5 * se_cov + bias).all(), (torch.cov(x.T), cov)


@pytest.mark.slow
def test_gaussian_exact_score_reverse_sde_and_ode_give_the_right_moments():
    g = _gaussian()
    p = g.as_diffusion(ode_steps=100, sde_steps=500)
    gen = torch.Generator(device=g.loc.device).manual_seed(0)
    # bias: the reference N(0, I) at T differs from p_T by alpha_T * loc (alpha_T = 6.7e-3)
    x_sde = p.sample((20000,), generator=gen)
    _check_moments(x_sde, g.loc, g.covariance_matrix, bias=0.015)
    z = torch.randn(20000, 2, generator=gen, device=g.loc.device)
    x_ode = p.push(z)
    _check_moments(x_ode, g.loc, g.covariance_matrix, bias=0.015)


def test_gaussian_ode_log_prob_matches_analytic_at_100_steps():
    g = _gaussian()
    # with beta_max = 25 the reference-law mismatch alpha_T = 1.8e-3 is below the tolerance
    # (beta_max = 20 leaves a floor of ~2e-2 from alpha_T * loc . x_T in the tails)
    p = g.as_diffusion(sde=VPSDE(beta_max=25.0), ode_steps=100)
    x = g.sample((200,))
    lp, info = p.ode_log_prob(x)
    torch.testing.assert_close(lp, g.log_prob(x), atol=2e-2, rtol=0)
    assert info == {"nfe": 200, "vjp": 400, "divergence": "exact", "steps": 100}
    torch.testing.assert_close(p.log_prob(x), g.log_prob(x))  # the mixture's exact density


def test_hutchinson_log_prob_is_unbiased_over_points_and_reported():
    d = 20
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(d, d, generator=gen) / math.sqrt(d)
    g = Gaussian(torch.randn(d, generator=gen), a @ a.T + 0.5 * torch.eye(d))
    p = g.as_diffusion(sde=VPSDE(beta_max=25.0), ode_steps=40)
    x = g.sample((200,))
    exact, info_e = p.ode_log_prob(x, exact=True)
    est, info_h = p.ode_log_prob(x)  # d > 16: Hutchinson by default
    assert info_e["divergence"] == "exact" and info_h["divergence"] == "hutchinson"
    assert info_h["nfe"] == 80 and info_h["vjp"] == 80 and info_e["vjp"] == 80 * d
    err = est - exact
    assert abs(err.mean().item()) < 5 * err.std().item() / math.sqrt(200)
    assert (exact - g.log_prob(x)).abs().max() < 0.1
    # the fixed probe makes the estimate deterministic
    torch.testing.assert_close(p.ode_log_prob(x)[0], est)


def test_mixture_push_puts_the_right_mass_in_each_component():
    p = _mixture(ode_steps=60)
    z = torch.randn(4000, 2)
    x = p.push(z)
    comp = p.responsibilities(x).argmax(-1)
    mass = torch.bincount(comp, minlength=3).to(x.dtype) / x.shape[0]
    torch.testing.assert_close(mass, p.weights, atol=0.03, rtol=0)
    # exact draws are classified the same way (components are well separated)
    exact = torch.bincount(p.responsibilities(p.sample((4000,))).argmax(-1), minlength=3)
    torch.testing.assert_close(exact.to(x.dtype) / 4000, p.weights, atol=0.03, rtol=0)


def test_mixture_exact_log_prob_and_score_against_autograd():
    p = _mixture()
    x = torch.randn(7, 2, requires_grad=True)
    comps = torch.distributions.MultivariateNormal(p.locs, p.covariance_matrices)
    ref = (p.weights.log() + comps.log_prob(x[:, None, :])).logsumexp(-1)
    torch.testing.assert_close(p.log_prob(x), ref)
    t = torch.linspace(0.05, 0.9, 7)
    lpt = p.marginal_log_prob(x, t)
    (grad,) = torch.autograd.grad(lpt.sum(), x)
    torch.testing.assert_close(p.score(x, t), grad, rtol=1e-4, atol=1e-5)
    # scalar t equals per-point t
    torch.testing.assert_close(p.score(x, 0.3), p.score(x, torch.full((7,), 0.3)))


def test_mixture_exact_sampling_moments():
    p = _mixture()
    x = p.sample((20000,), generator=torch.Generator().manual_seed(5))
    comps = torch.distributions.MultivariateNormal(p.locs, p.covariance_matrices)
    w, m = p.weights, p.locs
    cov = (w[:, None, None] * (comps.covariance_matrix + m[:, :, None] * m[:, None, :])).sum(0)
    cov = cov - p.mean[:, None] * p.mean[None, :]
    _check_moments(x, p.mean, cov)
    torch.testing.assert_close(p.variance, cov.diagonal())


def test_mixture_ode_log_prob_integrates_and_matches():
    p = _mixture(sde=VPSDE(beta_max=25.0), ode_steps=100)
    x = p.sample((100,))
    lp, _ = p.ode_log_prob(x)
    torch.testing.assert_close(lp, p.log_prob(x), atol=5e-2, rtol=0)


def _exact_nets(p):
    """eps-, score- and x0-parameterised nets built from the exact score of ``p``."""
    sde = p.sde

    class Eps(nn.Module):
        def forward(self, x, t):
            return -sde.marginal(t)[1][:, None] * p.score(x, t)

    class Score(nn.Module):
        def forward(self, x, t):
            return p.score(x, t)

    class X0(nn.Module):
        def forward(self, x, t):
            alpha, std = sde.marginal(t)
            return (x + std[:, None] ** 2 * p.score(x, t)) / alpha[:, None]

    return {"eps": Eps(), "score": Score(), "x0": X0()}


def test_parameterizations_agree():
    p = _gaussian().as_diffusion()
    x = torch.randn(5, 2)
    t = torch.linspace(0.1, 0.9, 5)
    priors = {
        k: DiffusionPrior(net, p.sde, event_shape=(2,), parameterization=k)
        for k, net in _exact_nets(p).items()
    }
    for q in priors.values():
        torch.testing.assert_close(q.score(x, t), p.score(x, t), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(q.denoise(x, t), p.denoise(x, t), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(q.noise(x, t), p.noise(x, t), rtol=1e-4, atol=1e-4)
    # Tweedie for a Gaussian: E[x0 | x_t] = m + S alpha C_t^{-1} (x_t - alpha m)
    alpha, std = p.sde.marginal(torch.tensor(0.4))
    g = _gaussian()
    c = alpha**2 * g.covariance_matrix + std**2 * torch.eye(2)
    ref = g.loc + (alpha * g.covariance_matrix @ torch.linalg.solve(c, (x - alpha * g.loc).T)).T
    torch.testing.assert_close(p.denoise(x, 0.4), ref, rtol=1e-4, atol=1e-4)


def test_mean_reverting_sde_exact_score_reverse_sde():
    """IR-SDE with an oracle score, 1-D, lam=0.5, T=100 (methods.md §2.8: bias ~0.011)."""
    sde = MeanRevertingSDE(lam=0.5, T=100, schedule="cosine", eps=0.005)
    p = GaussianMixture(torch.ones(1), torch.tensor([[1.5]]), torch.full((1, 1, 1), 0.16), sde=sde)
    x = p.sample_sde((20000,), generator=torch.Generator().manual_seed(7), steps=100)
    assert abs(x.mean().item() - 1.5) < 0.03
    assert abs(x.std().item() - 0.4) < 0.02
    y = p.push(torch.randn(20000, 1), steps=100)
    assert abs(y.mean().item() - 1.5) < 0.03
    assert abs(y.std().item() - 0.4) < 0.02


def test_shapes_batch_and_errors():
    p = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None], event_shape=(2, 2))
    z = torch.randn(3, 5, 2, 2)
    assert p.push(z, steps=4).shape == (3, 5, 2, 2)
    assert p.score(z, 0.5).shape == (3, 5, 2, 2)
    assert p.score(z, torch.rand(3, 5)).shape == (3, 5, 2, 2)
    assert p.log_prob(z).shape == (3, 5)
    assert p.ode_log_prob(z, steps=4)[0].shape == (3, 5)
    assert p.sample((6,)).shape == (6, 2, 2)
    assert p.sample_sde((6,), steps=3).shape == (6, 2, 2)
    assert p.time_grid(4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match=r"score: t must be a scalar or have the batch shape"):
        p.score(z, torch.rand(4))
    with pytest.raises(ValueError, match=r"push: expected a tensor of shape \(\.\.\., 2, 2\)"):
        p.push(torch.randn(3, 4))
    with pytest.raises(ValueError, match="parameterization"):
        DiffusionPrior(nn.Identity(), VPSDE(), event_shape=(2,), parameterization="v")
    with pytest.raises(ValueError, match="event_shape"):
        DiffusionPrior(nn.Identity(), VPSDE())
    with pytest.raises(ValueError, match="covariance_matrices must be 1 x 4 x 4"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(3)[None])


def test_gaussian_score_and_as_diffusion_keep_the_affine_push():
    g = _gaussian()
    z = torch.randn(4, 2)
    torch.testing.assert_close(g.push(z), g.loc + z @ g.scale_tril.mT)  # unchanged
    x = torch.randn(4, 2, requires_grad=True)
    alpha, std = VPSDE().marginal(torch.tensor(0.3))
    c = alpha**2 * g.covariance_matrix + std**2 * torch.eye(2)
    lp = torch.distributions.MultivariateNormal(alpha * g.loc, c).log_prob(x).sum()
    (grad,) = torch.autograd.grad(lp, x)
    torch.testing.assert_close(g.score(x, 0.3), grad, rtol=1e-4, atol=1e-5)


def test_to_float64_moves_everything():
    p = _mixture(ode_steps=5).to(dtype=torch.float64)
    assert p.dtype == torch.float64
    x = p.push(torch.randn(3, 2, dtype=torch.float64))
    assert x.dtype == torch.float64
    assert p.sample((2,)).dtype == torch.float64


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None]], -1))


def test_push_is_differentiable_gradcheck_float64():
    net = _TinyNet().double()
    p = DiffusionPrior(net, VPSDE().double(), event_shape=(2,), ode_steps=3, t_min=1e-2)
    z = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(p.push, (z,))
    # and gradients reach the weights
    p.push(z).sum().backward()
    assert all(w.grad is not None for w in net.parameters())


def test_nets_shapes_and_zero_initialised_unet_output():
    from priors.nets import TimeMLP, TimeUNet, vp_mlp

    mlp = TimeMLP(3, hidden=16, depth=2)
    assert mlp(torch.randn(5, 3), torch.rand(5)).shape == (5, 3)
    for shape in ((16, 16), (32, 32), (1, 16, 16)):
        net = TimeUNet(shape, base=8)
        x = torch.randn((2,) + shape)
        out = net(x, torch.rand(2))
        assert out.shape == x.shape and out.abs().max() == 0  # zero-initialised output conv
    with pytest.raises(ValueError, match="divisible"):
        TimeUNet((10, 10), base=8)
    # a zoo module round-trips through DiffusionPrior.from_module
    module = vp_mlp(2, hidden=16, depth=1, ode_steps=7)
    p = DiffusionPrior.from_module(module, event_shape=(2,))
    assert p.module is module and p.ode_steps == 7 and p.parameterization == "eps"
    assert p.push(torch.randn(4, 2)).shape == (4, 2)


def test_dsm_loss_is_smaller_for_the_exact_score():
    from priors.diffusion import dsm_loss

    g = _gaussian()
    p = g.as_diffusion()
    x0 = g.sample((4000,))
    nets = _exact_nets(p)
    exact = DiffusionPrior(nets["eps"], p.sde, event_shape=(2,), parameterization="eps")

    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    zero = DiffusionPrior(Zero(), p.sde, event_shape=(2,), parameterization="eps")
    gen = torch.Generator().manual_seed(0)
    le = dsm_loss(exact, x0, torch.Generator().manual_seed(0))
    lz = dsm_loss(zero, x0, gen)
    # the zero net scores E||eps||^2 = D = 2; the exact posterior mean of eps does better
    assert le < 2.0 < lz
