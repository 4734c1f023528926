"""Closed forms of the VP and mean-reverting SDEs against simulation and brute-force conditioning."""

import math

import pytest
import torch

from priors.sde import VPSDE, MeanRevertingSDE

SDES = {
    "vp": lambda: VPSDE(beta_min=0.1, beta_max=20.0, T=1.0),
    "mr-cosine": lambda: MeanRevertingSDE(lam=0.5, T=100, schedule="cosine", eps=0.005, mu=0.3),
    "mr-linear": lambda: MeanRevertingSDE(lam=0.5, T=50, schedule="linear", eps=0.01, mu=-0.2),
}


def _euler_maruyama(sde, x0, t_end, steps, generator):
    x = x0.clone()
    ts = torch.linspace(0.0, t_end, steps + 1, dtype=x0.dtype)
    for k in range(steps):
        h = ts[k + 1] - ts[k]
        # midpoint rule: exact for the mean-reverting SDE's piecewise-linear rate
        tm = 0.5 * (ts[k] + ts[k + 1])
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + sde.drift(x, tm) * h + sde.diffusion(tm) * h.sqrt() * noise
    return x


@pytest.mark.parametrize("name", list(SDES))
def test_forward_simulation_matches_closed_form_marginal(name):
    sde = SDES[name]().double()
    g = torch.Generator().manual_seed(1)
    n = 20000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    for frac in (0.1, 0.4):
        t_end = frac * sde.T
        x = _euler_maruyama(sde, x0, t_end, 400, g)
        mean = sde.marginal_mean(x0[:1], t_end).item()
        _, std = sde.marginal(t_end)
        se_mean = std.item() / math.sqrt(n)
        se_std = std.item() / math.sqrt(2 * n)
        assert abs(x.mean().item() - mean) < 5 * se_mean + 5e-3
        assert abs(x.std().item() - std.item()) < 5 * se_std + 5e-3


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_endpoints_and_transition_composition(name):
    sde = SDES[name]().double()
    coeff0, std0 = sde.marginal(0.0)
    assert coeff0.item() == pytest.approx(1.0) and std0.item() == pytest.approx(0.0)
    # x_t | x_0 composed from x_s | x_0 and x_t | x_s
    s, t = 0.3 * sde.T, 0.7 * sde.T
    a_s, sd_s = sde.marginal(s)
    a_st, sd_st = sde.transition(s, t)
    a_t, sd_t = sde.marginal(t)
    assert (a_s * a_st).item() == pytest.approx(a_t.item(), rel=1e-10)
    assert (a_st**2 * sd_s**2 + sd_st**2).item() == pytest.approx(sd_t.item() ** 2, rel=1e-10)


def test_mean_reverting_delta_makes_terminal_residual_eps():
    for schedule in ("cosine", "linear", "constant"):
        for T, eps in ((100, 0.005), (20, 0.01)):
            sde = MeanRevertingSDE(lam=0.3, T=T, schedule=schedule, eps=eps).double()
            assert torch.exp(-sde.integrated_rate(float(T))).item() == pytest.approx(eps, rel=1e-9)
            # integrated rate is the integral of the (piecewise-linear) rate
            grid = torch.linspace(0, T, 20 * T + 1, dtype=torch.float64)
            mids = 0.5 * (grid[1:] + grid[:-1])
            riemann = (sde.rate(mids) * grid.diff()).sum()
            assert riemann.item() == pytest.approx(sde.integrated_rate(float(T)).item(), rel=1e-9)
            assert sde.diffusion(3.0).item() ** 2 == pytest.approx(
                2 * 0.3**2 * sde.rate(3.0).item()
            )


def test_vp_integrated_rate_is_half_integral_of_beta():
    sde = VPSDE(beta_min=0.1, beta_max=20.0).double()
    grid = torch.linspace(0, 0.8, 8001, dtype=torch.float64)
    mids = 0.5 * (grid[1:] + grid[:-1])
    assert (0.5 * sde.beta(mids) * grid.diff()).sum().item() == pytest.approx(
        sde.integrated_rate(0.8).item(), rel=1e-7
    )


@pytest.mark.parametrize("name", list(SDES))
def test_conditional_score_is_gradient_of_log_marginal(name):
    sde = SDES[name]().double()
    x0 = torch.randn(5, 3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.2, 0.9, 5, dtype=torch.float64) * sde.T
    m = sde.marginal_mean(x0, t)
    _, std = sde.marginal(t)
    logp = torch.distributions.Normal(m, std[:, None]).log_prob(x).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(sde.conditional_score(x, x0, t), grad)


@pytest.mark.parametrize("name", list(SDES))
def test_bridge_matches_brute_force_gaussian_conditioning(name):
    sde = SDES[name]().double()
    mu = sde.mu
    x0 = torch.randn(7, 2, dtype=torch.float64)
    x_t = torch.randn(7, 2, dtype=torch.float64)
    for s, t in ((0.2 * sde.T, 0.5 * sde.T), (0.49 * sde.T, 0.5 * sde.T)):
        if isinstance(sde, MeanRevertingSDE):
            s, t = float(round(s)), float(round(s) + 1)
        mean, var = sde.bridge(x_t, x0, s, t)
        # joint of (x_s, x_t) | x_0: x_s ~ N(m_s, v_s), x_t = mu + A (x_s - mu) + N(0, v_st)
        a_s, sd_s = sde.marginal(s)
        A, sd_st = sde.transition(s, t)
        m_s = mu + a_s * (x0 - mu)
        m_t = mu + A * (m_s - mu)
        v_s, var_t = sd_s**2, A**2 * sd_s**2 + sd_st**2
        cov = A * v_s
        torch.testing.assert_close(mean, m_s + cov / var_t * (x_t - m_t), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(var.reshape(()), v_s - cov**2 / var_t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "mr-cosine"])
def test_bridge_monte_carlo_recovers_marginal_and_covariance(name):
    """x_t ~ p(x_t | x0) then x_s ~ bridge(x_t, x0) must give p(x_s | x0) and Cov = A v_s."""
    sde = SDES[name]().double()
    g = torch.Generator().manual_seed(2)
    n = 40000
    x0 = torch.full((n, 1), 1.2, dtype=torch.float64)
    s, t = (0.3, 0.35) if isinstance(sde, VPSDE) else (40.0, 41.0)
    x_t = sde.perturb(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    mean, var = sde.bridge(x_t, x0, s, t)
    x_s = mean + var.sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    _, sd_s = sde.marginal(s)
    A, _ = sde.transition(s, t)
    se = sd_s.item() / math.sqrt(n)
    assert abs(x_s.mean().item() - sde.marginal_mean(x0[:1], s).item()) < 5 * se
    assert abs(x_s.var().item() - sd_s.item() ** 2) < 5 * math.sqrt(2 / n) * sd_s.item() ** 2
    c = torch.cov(torch.cat([x_s, x_t], 1).T)[0, 1].item()
    assert abs(c - A.item() * sd_s.item() ** 2) < 5 * math.sqrt(2 / n) * sd_s.item() ** 2


def test_ml_loss_is_zero_when_the_euler_step_hits_the_bridge_mean():
    sde = SDES["mr-cosine"]().double()
    x0 = torch.randn(6, 4, dtype=torch.float64)
    i = torch.arange(1, 7, dtype=torch.float64) * 10
    x_i = sde.perturb(x0, i, torch.randn(6, 4, dtype=torch.float64))
    target, _ = sde.bridge(x_i, x0, i - 1, i)
    # x_i - [theta (mu - x_i) - sigma^2 s] = target  =>  s, then eps_hat = -std * s
    drift = sde.drift(x_i, i)
    g2 = sde.diffusion(i)[:, None] ** 2
    s = (target - x_i + drift) / g2
    eps_hat = -sde.marginal(i)[1][:, None] * s
    loss = sde.ml_loss(eps_hat, x_i, x0, i)
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    noisy = sde.ml_loss(eps_hat + 0.1, x_i, x0, i, norm="l2")
    assert (noisy > 0).all()
    with pytest.raises(ValueError, match="norm"):
        sde.ml_loss(eps_hat, x_i, x0, i, norm="huber")


def test_bad_time_shape_names_the_shapes():
    sde = VPSDE()
    with pytest.raises(ValueError, match="leading shape"):
        sde.drift(torch.zeros(4, 2), torch.zeros(3))
