"""Location finding (methods.md §10.2): the model exactly, broadcasting, the simulator, the registry."""

import math

import pytest
import torch
from pyro.distributions import Normal

import bed.problems
import priors
from bed.problems import location_finding as lf


def test_signal_matches_the_formula_by_hand():
    theta = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    xi = torch.tensor([1.0, 0.0])
    # b + 1/(m + |(0,0)-(1,0)|^2) + 1/(m + |(1,2)-(1,0)|^2) = 0.1 + 1/1.0001 + 1/4.0001
    expected = 0.1 + 1 / (1e-4 + 1.0) + 1 / (1e-4 + 4.0)
    assert lf.signal(theta, xi).item() == pytest.approx(expected, rel=1e-6)
    lik = lf.likelihood(theta, xi)
    assert isinstance(lik, Normal) and lik.event_shape == ()
    assert lik.mean.item() == pytest.approx(math.log(expected), rel=1e-6)
    assert lik.stddev.item() == 0.5
    on_top = lf.signal(theta, theta[1])  # a sensor on a source reads about 1/m
    assert on_top.item() == pytest.approx(0.1 + 1e4 + 1 / (1e-4 + 5.0), rel=1e-5)


def test_likelihood_broadcasts_theta_against_designs():
    theta = torch.randn(5, 1, 2, 2)
    xi = torch.randn(3, 2)
    lik = lf.likelihood(theta, xi)
    assert lik.batch_shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert lik.mean[i, j] == pytest.approx(lf.signal(theta[i, 0], xi[j]).log().item())


def test_likelihood_is_reparameterized_in_the_design():
    xi = torch.tensor([0.3, -0.2], requires_grad=True)
    y = lf.likelihood(torch.randn(7, 2, 2), xi).rsample()
    y.sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simulator_noise_is_normal_with_sigma_half(dtype):
    theta = torch.tensor([[0.5, -0.5], [-1.0, 1.0]], dtype=dtype)
    xi = torch.zeros(20000, 2, dtype=dtype)
    y = lf.LocationFinding()(theta, xi, torch.Generator().manual_seed(0))
    assert y.dtype == dtype and y.shape == (20000,)
    resid = y - lf.signal(theta, xi).log()
    # Monte Carlo standard errors: mean 0.5/sqrt(n) = 0.0035, sd about 0.0025; 5 s.e. margin
    assert abs(resid.mean().item()) < 5 * 0.5 / math.sqrt(20000)
    assert abs(resid.std().item() - 0.5) < 5 * 0.5 / math.sqrt(2 * 20000)
    again = lf.LocationFinding()(theta, xi, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_problem_registry():
    assert "location-finding" in bed.problems.available()
    p = bed.problems.get("location-finding", prior="gaussian")
    exp = p.experiment
    assert p.steps == 30 and p.options == {"prior": "gaussian"}
    assert exp.event_shape == (2, 2) and exp.observation_shape() == ()
    assert torch.equal(exp.design_space.bounds, torch.tensor([[-4.0, -4.0], [4.0, 4.0]]))
    assert isinstance(exp.prior, priors.analytic.Gaussian)
    torch.testing.assert_close(exp.prior.covariance_matrix, torch.eye(4))
    flow = bed.problems.get("location-finding")
    assert flow.options == {"prior": "sources-2x2"}
    assert flow.experiment.event_shape == (2, 2)
    with pytest.raises(ValueError, match="unknown problem 'nope'; available: .*location-finding"):
        bed.problems.get("nope")
    with pytest.raises(ValueError, match="unknown prior 'x'.*'sources-2x2'.*'gaussian'"):
        bed.problems.get("location-finding", prior="x")


def test_log_likelihood_through_the_experiment():
    exp = bed.problems.get("location-finding", prior="gaussian").experiment
    theta = torch.randn(4, 2, 2)
    designs, obs = torch.randn(6, 2), torch.randn(6)
    ll = exp.log_likelihood(theta, designs, obs)
    by_hand = torch.stack(
        [sum(lf.likelihood(t, designs[i]).log_prob(obs[i]) for i in range(6)) for t in theta]
    )
    torch.testing.assert_close(ll, by_hand)


def test_random_designs_are_standard_normal():
    x = lf.random_designs((4000, 5), torch.Generator().manual_seed(1))
    assert x.shape == (4000, 5, 2)
    flat = x.reshape(-1, 2)
    # s.e. of the mean is 1/sqrt(20000) = 0.007; of the variance about 0.01
    assert flat.mean(0).abs().max() < 0.035
    assert (flat.var(0) - 1).abs().max() < 0.05
    assert flat.abs().max() <= 4.0
    assert lf.spce_ceiling(500_000) == pytest.approx(13.122, abs=1e-3)
