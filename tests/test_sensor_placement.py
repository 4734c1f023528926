"""sensor-placement: the GP field prior, the batched Darcy likelihood and its cache, the
simulator's noise, and (slow) EIG-chosen sensors beat random sensors, paired over seeds."""

import math

import pytest
import torch
from scipy import stats

import bed.problems
from bed.loop import SequentialDesign
from bed.problems import darcy
from bed.problems import sensor_placement as sp


def test_registered_with_gp_prior():
    p = bed.problems.get("sensor-placement")
    assert tuple(p.experiment.event_shape) == (32, 32) and p.experiment.design_dim == 2
    assert p.priors[0] == "gp" and bed.problems.prior_choices("sensor-placement")[0] == "gp"
    with pytest.raises(ValueError, match="unknown prior"):
        bed.problems.get("sensor-placement", prior="nope")


def test_gp_prior_covariance_is_matern_three_halves():
    prior = sp.gp_prior(n=8, dtype=torch.float64)
    pts = sp.cell_centres(8, torch.float64)
    r = torch.cdist(pts, pts) * math.sqrt(3) / sp.LENGTHSCALE
    matern = (1 + r) * torch.exp(-r) + sp.JITTER * torch.eye(64, dtype=torch.float64)
    torch.testing.assert_close(prior.covariance_matrix, matern)
    # push / log_prob consistency: log_prob(push(z)) = log N(z; 0, I) - log det L
    z = torch.randn(5, 8, 8, dtype=torch.float64)
    x = prior.push(z)
    ref = torch.distributions.MultivariateNormal(prior.loc, prior.covariance_matrix)
    torch.testing.assert_close(prior.log_prob(x), ref.log_prob(x.reshape(5, 64)))
    # sample moments: the marginal variance 1 (+ jitter) within Monte Carlo error
    g = torch.Generator().manual_seed(0)
    u = sp.gp_prior().sample_with_generator((2000,), g)  # the default 32 x 32, float32
    var = u.double().var(0).mean()  # average over cells; each is 1 + 1e-4
    assert abs(var - 1) < 0.1


def test_mean_field_peak_pressure_and_simulator_noise():
    u = torch.zeros(32, 32, dtype=torch.float64)
    centre = torch.tensor([0.5, 0.5], dtype=torch.float64)
    lik = sp.DarcyLikelihood()
    # -lap p = 10 on the unit square peaks at 10 * 0.0736713... (series solution)
    assert abs(lik(u, centre).loc - 0.736713) < 0.01
    g = torch.Generator().manual_seed(1)
    n = 4000
    y = sp.SensorPlacement()(u, centre.expand(n, 2), g)
    mean = lik(u, centre).loc
    assert abs(y.mean() - mean) < 4 * sp.NOISE / math.sqrt(n)
    assert abs(y.std() / sp.NOISE - 1) < 4 * math.sqrt(0.5 / n)


def test_likelihood_broadcasts_fields_against_designs_and_matches_single_calls():
    exp = sp.sensor_placement()
    g = torch.Generator().manual_seed(2)
    theta = exp.prior.sample_with_generator((3,), g)  # (M, 32, 32)
    designs = torch.rand(4, 2, 2, generator=g)  # (b, q, 2)
    lik = exp.likelihood(theta[None, :, None], designs[:, None])  # batch (b, M, q)
    assert lik.batch_shape == (4, 3, 2) and lik.event_shape == ()
    for b in range(4):
        for m in range(3):
            one = darcy.interpolate(darcy.pad(darcy.solve(theta[m], sp.SOURCE)), designs[b])
            torch.testing.assert_close(lik.loc[b, m], one, rtol=1e-5, atol=1e-6)
    ll = exp.log_likelihood(theta, designs[0], torch.zeros(2))
    assert ll.shape == (3,) and torch.isfinite(ll).all()


def test_cache_reuses_solves_by_value_and_steps_aside_for_gradients():
    lik = sp.DarcyLikelihood(cache_size=2)
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(2, 32, 32, generator=g)
    first = lik.pressure(theta)
    assert lik.pressure(theta.clone()) is first  # equal values, new tensor: a hit
    other = theta + 1
    assert lik.pressure(other) is not first
    assert lik.pressure(theta) is first  # still cached (size 2)
    torch.testing.assert_close(lik.pressure(other), darcy.pad(darcy.solve(other, sp.SOURCE)))
    # with a gradient: computed fresh, and the gradient reaches theta
    t = theta.clone().requires_grad_(True)
    y = lik(t, torch.tensor([0.4, 0.6])).loc.sum()
    (grad,) = torch.autograd.grad(y, t)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the design gradient used by optimize_acqf
    xi = torch.tensor([[0.3, 0.7]], requires_grad=True)
    (gx,) = torch.autograd.grad(lik(theta, xi).loc.sum(), xi)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_sobol_layout_and_field_rmse():
    pts = sp.sobol_designs(8, seed=0)
    assert pts.shape == (8, 2) and ((pts >= 0) & (pts <= 1)).all()
    truth = torch.zeros(4, 4)
    samples = torch.ones(10, 4, 4)
    torch.testing.assert_close(sp.field_rmse(samples, truth), torch.tensor(1.0))


@pytest.mark.slow
def test_eig_sensors_beat_random_sensors():
    """Per seed (same true field): the total information (sPCE over ``L`` shared prior
    contrasts) of a 2-sensor run placed by the loop vs 2 uniformly random sensors; a one-sided
    Wilcoxon signed-rank test over the seeds."""
    p = bed.problems.get("sensor-placement")
    exp = p.experiment
    steps, seeds, num_inner = 2, 10, 1000
    contrasts = exp.prior.sample_with_generator((num_inner,), torch.Generator().manual_seed(99))

    def spce(designs, obs, theta):  # one rollout: designs (T, 2), obs (T,), theta (32, 32)
        lik = exp.likelihood(torch.cat([theta[None], contrasts])[:, None], designs[None])
        lp = lik.log_prob(obs[None]).sum(-1)  # (1 + L,)
        return lp[0] - lp.logsumexp(0) + math.log(num_inner + 1)

    chosen, random = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        theta = exp.prior.sample_with_generator((), g)
        sd = SequentialDesign.from_problem(
            p,
            seed=seed,
            theta_true=theta,
            num_samples=24,
            condition_options={"warmup": 4},
            optimize_options={"num_restarts": 1, "raw_samples": 16},
        )
        sd.run(steps, progress=False)
        rd, ro = bed.problems.random_rollouts(p, theta[None], steps, g)
        chosen.append(spce(sd.designs(), sd.observations(), theta))
        random.append(spce(rd[0], ro[0], theta))
    chosen, random = torch.stack(chosen).double(), torch.stack(random).double()
    p_value = stats.wilcoxon((chosen - random).numpy(), alternative="greater").pvalue
    assert p_value < 0.05, (chosen, random, p_value)
