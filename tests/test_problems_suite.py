"""The standard suite beside location finding: ``pharmacokinetics`` and ``ces``.

Exact formulas, broadcasting, the censored likelihood's atoms, the priors' push/log_prob
consistency, and (slow) the acceptance test of issue 7: EIG-chosen designs beat random designs,
paired over seeds, with a one-sided Wilcoxon signed-rank test.
"""

import math

import pytest
import torch
from scipy import stats

import bed.problems
from bed.eig import pce
from bed.loop import SequentialDesign
from bed.problems import ces
from bed.problems import pharmacokinetics as pk

F64 = torch.float64


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "event", "d", "steps"),
    [("pharmacokinetics", (3,), 1, 5), ("ces", (5,), 6, 10)],
)
def test_registered_with_shapes_and_simulator_broadcast(name, event, d, steps):
    p = bed.problems.get(name)
    assert name in bed.problems.available()
    assert tuple(p.experiment.event_shape) == event
    assert p.experiment.design_dim == d and p.steps == steps
    g = torch.Generator().manual_seed(0)
    theta = p.experiment.prior.sample_with_generator((4,), g)
    designs, obs = bed.problems.random_rollouts(p, theta, 3, g)
    assert designs.shape == (4, 3, d) and obs.shape == (4, 3)
    p.experiment.design_space.check(designs)
    assert torch.isfinite(obs).all()


def test_pharmacokinetics_steps_option_and_bad_prior():
    assert bed.problems.get("pharmacokinetics", steps=10).steps == 10
    with pytest.raises(ValueError, match="only choice is 'gaussian'"):
        bed.problems.get("pharmacokinetics", prior="flow")
    with pytest.raises(ValueError, match="only choice is 'ces'"):
        bed.problems.get("ces", prior="gaussian")


# ----------------------------------------------------------------------------- pharmacokinetics


def test_concentration_formula_by_hand_and_at_equal_rates():
    theta = torch.tensor([1.0, 0.1, 20.0], dtype=F64).log()
    t = torch.tensor([[0.0], [2.0], [24.0]], dtype=F64)
    expected = 400 / 20 * 1 / 0.9 * (torch.exp(-0.1 * t[:, 0]) - torch.exp(-t[:, 0]))
    torch.testing.assert_close(pk.concentration(theta, t), expected)
    # k_a = k_e = k: the limit D/V k t e^{-k t}, no 0/0
    same = torch.tensor([0.3, 0.3, 10.0], dtype=F64).log()
    torch.testing.assert_close(
        pk.concentration(same, t), 400 / 10 * 0.3 * t[:, 0] * torch.exp(-0.3 * t[:, 0])
    )


def test_pharmacokinetics_prior_is_the_stated_gaussian_and_push_matches_log_prob():
    prior = pk.prior(F64)
    torch.testing.assert_close(prior.loc, torch.tensor([1.0, 0.1, 20.0], dtype=F64).log())
    torch.testing.assert_close(prior.covariance_matrix, 0.05 * torch.eye(3, dtype=F64))
    z = torch.randn(7, 3, dtype=F64)
    x = prior.push(z)
    ref = torch.distributions.MultivariateNormal(prior.loc, prior.covariance_matrix)
    torch.testing.assert_close(prior.log_prob(x), ref.log_prob(x))


def test_pharmacokinetics_likelihood_broadcasts_and_simulator_moments():
    exp = pk.pharmacokinetics()
    g = torch.Generator().manual_seed(1)
    theta = exp.prior.sample_with_generator((5,), g)  # (5, 3)
    t = 24 * torch.rand(4, 1, generator=g)  # (4, 1)
    lik = exp.likelihood(theta[:, None], t[None])  # batch (5, 4)
    assert lik.batch_shape == (5, 4) and lik.event_shape == ()
    for i in range(5):
        for j in range(4):
            one = exp.likelihood(theta[i], t[j])
            torch.testing.assert_close(lik.loc[i, j], one.loc)
            torch.testing.assert_close(lik.scale[i, j], one.scale)
    # y ~ N(c, (0.1 c)^2 + 0.1): sample moments within Monte Carlo error
    n = 20000
    th, xi = theta[0].double(), torch.tensor([3.0], dtype=F64)
    y = pk.Pharmacokinetics()(th.expand(n, 3), xi.expand(n, 1), g)
    c = pk.concentration(th, xi)
    var = (0.1 * c) ** 2 + 0.1
    assert abs(y.mean() - c) < 4 * math.sqrt(var / n)
    assert abs(y.var() / var - 1) < 4 * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- CES


def test_censored_sigmoid_normal_integrates_to_one_with_its_atoms():
    loc = torch.tensor([0.3, 14.0, -16.0, 40.0], dtype=F64)
    scale = torch.tensor([2.0, 1.0, 3.0, 5.0], dtype=F64)
    d = ces.CensoredSigmoidNormal(loc, scale)
    eta = torch.linspace(d.eta_low, d.eta_high, 400001, dtype=F64)
    y = torch.sigmoid(eta)
    # the two ends one ulp inside, so they take the interior density (not the atoms)
    y[0], y[-1] = torch.nextafter(y[0], y[1]), torch.nextafter(y[-1], y[-2])
    dens = d.log_prob(y[:, None]).exp()  # (E, 4)
    interior = torch.trapezoid(dens * (y * (1 - y))[:, None], eta, dim=0)  # dy = y(1-y) d eta
    low = d.log_prob(torch.tensor(ces.EPSILON, dtype=F64)).exp()
    high = d.log_prob(torch.tensor(1 - ces.EPSILON, dtype=F64)).exp()
    torch.testing.assert_close(interior + low + high, torch.ones(4, dtype=F64), atol=1e-6, rtol=0)
    # the atoms are the normal tails beyond the clip points in eta-space
    n = torch.distributions.Normal(loc, scale)
    torch.testing.assert_close(low, n.cdf(torch.tensor(d.eta_low, dtype=F64)))
    torch.testing.assert_close(high, 1 - n.cdf(torch.tensor(d.eta_high, dtype=F64)))


def test_censored_sigmoid_normal_atom_frequencies_and_stability():
    d = ces.CensoredSigmoidNormal(torch.tensor([14.0], dtype=F64), torch.tensor([1.5], dtype=F64))
    n = 40000
    y = d.sample((n,))
    assert ((y >= ces.EPSILON) & (y <= 1 - ces.EPSILON)).all()
    freq = (y == 1 - ces.EPSILON).double().mean()
    mass = d.log_prob(torch.tensor([1 - ces.EPSILON], dtype=F64)).exp()[0]
    assert abs(freq - mass) < 4 * math.sqrt(mass * (1 - mass) / n)
    # far tails: finite log-masses (log_ndtr), never -inf or NaN
    far = ces.CensoredSigmoidNormal(torch.tensor([-1e3, 1e3]), torch.tensor([1.0, 1.0]))
    lp = far.log_prob(torch.tensor([1 - ces.EPSILON, ces.EPSILON]))
    assert torch.isfinite(lp).all() and (lp < -1e4).all()
    lp_interior = far.log_prob(torch.tensor([0.5, 0.5]))
    assert torch.isfinite(lp_interior).all()


def test_ces_prior_push_marginals_and_exact_log_prob():
    prior = ces.CESPrior()
    g = torch.Generator().manual_seed(2)
    x = prior.sample_with_generator((4000,), g)
    rho, alpha, log_u = x[:, 0], x[:, 1:4], x[:, 4]
    assert ((rho > 0) & (rho <= 1)).all() and (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4000, dtype=F64))
    # rho ~ U(0, 1); each alpha_i ~ Beta(1, 2) (Dirichlet(1,1,1) marginal); log u ~ N(1, 9)
    assert stats.kstest(rho.numpy(), "uniform").pvalue > 1e-3
    for i in range(3):
        assert stats.kstest(alpha[:, i].numpy(), stats.beta(1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(log_u.numpy(), stats.norm(1, 3).cdf).pvalue > 1e-3
    # the density: Beta(1,1) = 1, Dirichlet(1,1,1) = 2 on the simplex, N(1, 3^2)
    expected = math.log(2) + stats.norm(1, 3).logpdf(log_u.numpy())
    torch.testing.assert_close(prior.log_prob(x), torch.as_tensor(expected))
    off = x[:3].clone()
    off[0, 0], off[1, 1], off[2, 1:4] = 1.5, -0.1, torch.tensor([0.5, 0.5, 0.5])
    assert torch.isneginf(prior.log_prob(off)).all()


def test_ces_utility_matches_the_power_formula_and_the_cobb_douglas_limit():
    g = torch.Generator().manual_seed(3)
    theta = ces.CESPrior().sample_with_generator((6,), g)
    z = 1 + 99 * torch.rand(6, 3, generator=g, dtype=F64)
    for rho in (0.9, 0.5, 0.2):
        theta[:, 0] = rho
        naive = (theta[:, 1:4] * z**rho).sum(-1) ** (1 / rho)
        torch.testing.assert_close(ces.utility(theta, z), naive)
    theta[:, 0] = 1e-6  # the Cobb-Douglas limit prod z_i^alpha_i, where the naive form fails
    cobb = (theta[:, 1:4] * z.log()).sum(-1).exp()
    torch.testing.assert_close(ces.utility(theta, z), cobb, rtol=1e-4, atol=0)


def test_ces_likelihood_broadcasts_and_has_finite_design_gradients_on_the_box_edge():
    exp = ces.ces()
    g = torch.Generator().manual_seed(4)
    theta = exp.prior.sample_with_generator((5,), g)
    designs = ces.random_designs((3, 2), g, like=theta)  # (b=3, q=2, 6)
    designs[0, 0, :3] = 0.0  # an empty basket on the boundary
    xi = designs.clone().requires_grad_(True)
    lik = exp.likelihood(theta[None, :, None], xi[:, None])  # batch (3, 5, 2)
    assert lik.batch_shape == (3, 5, 2)
    y = lik.rsample()
    assert torch.isfinite(lik.log_prob(y)).all()
    (grad,) = torch.autograd.grad(lik.loc.sum() + lik.scale.sum(), xi)
    assert torch.isfinite(grad).all()
    one = exp.likelihood(theta[2], designs[1, 0])
    torch.testing.assert_close(lik.loc[1, 2, 0], one.loc)
    torch.testing.assert_close(lik.scale[1, 2, 0], one.scale)


# ----------------------------------------------------------------------------- acceptance


def _paired_eig_vs_random(name, steps, seeds, num_eval, **loop):
    """Per seed: the joint EIG (sPCE under the prior, ``num_eval`` shared prior draws) of the
    ``steps`` designs chosen by the loop and of ``steps`` random designs, same theta_true."""
    p = bed.problems.get(name)
    exp = p.experiment
    chosen, random = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        theta = exp.prior.sample_with_generator((), g)
        sd = SequentialDesign.from_problem(p, seed=seed, theta_true=theta, **loop)
        sd.run(steps, progress=False)
        rd, _ = bed.problems.random_rollouts(p, theta[None], steps, g)
        belief = exp.prior.sample_with_generator((num_eval,), g)
        chosen.append(pce(exp, sd.designs()[None], belief)[0])
        random.append(pce(exp, rd, belief)[0])
    return torch.stack(chosen).double(), torch.stack(random).double()


def _assert_beats(chosen, random):
    diff = (chosen - random).numpy()
    p_value = stats.wilcoxon(diff, alternative="greater").pvalue
    assert p_value < 0.05, (chosen, random, p_value)
    assert chosen.mean() > random.mean()


@pytest.mark.slow
def test_pharmacokinetics_eig_designs_beat_random_designs():
    chosen, random = _paired_eig_vs_random(
        "pharmacokinetics", steps=5, seeds=10, num_eval=1000, num_samples=64
    )
    _assert_beats(chosen, random)


@pytest.mark.slow
def test_ces_eig_designs_beat_random_designs():
    chosen, random = _paired_eig_vs_random(
        "ces",
        steps=2,
        seeds=8,
        num_eval=500,
        num_samples=48,
        condition_options={"warmup": 8},
        optimize_options={"num_restarts": 2, "raw_samples": 64},
    )
    _assert_beats(chosen, random)
