"""EIG estimators against exact answers: analytic linear-Gaussian EIG and 1-D quadrature."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import priors
from bed import Box, Experiment, eig

SIGMA = 0.5
COV = [[1.0, 0.3], [0.3, 0.5]]


def linear_experiment() -> Experiment:
    """y = <theta, xi> + N(0, SIGMA^2), theta ~ N(0, COV) in R^2, xi in [-1, 1]^2."""
    prior = priors.analytic.Gaussian(torch.zeros(2), torch.tensor(COV))
    return Experiment(
        prior, lambda t, x: dist.Normal((t * x).sum(-1), SIGMA), Box([-1.0, -1.0], [1.0, 1.0])
    )


def linear_truth(designs: torch.Tensor) -> torch.Tensor:
    """0.5 logdet(I + A Sigma A^T / sigma^2) for each `q x d` design block A; returns `(b,)`."""
    a = designs.double()
    cov = torch.tensor(COV, dtype=torch.float64, device=a.device)
    eye = torch.eye(a.shape[-2], dtype=torch.float64, device=a.device)
    return 0.5 * torch.logdet(eye + a @ cov @ a.mT / SIGMA**2)


def nonlinear_experiment() -> Experiment:
    """theta ~ N(0.5, 0.5^2); y ~ N(exp(-2 (theta - xi)^2), 0.1^2), xi in [-3, 3].

    The EIG is bimodal (maxima near xi = -0.1 and 1.1, a dip at the prior mean); about 12% of
    the box reaches 97% of the maximum.
    """
    prior = priors.analytic.Gaussian(torch.full((1,), 0.5), torch.full((1, 1), 0.25))
    return Experiment(
        prior,
        lambda t, x: dist.Normal(torch.exp(-2.0 * (t[..., 0] - x[..., 0]) ** 2), 0.1),
        Box([-3.0], [3.0]),
    )


def nonlinear_truth(xi: torch.Tensor) -> torch.Tensor:
    """EIG of the 1-D model by quadrature: H[y] - H[y | theta] on fine grids (float64)."""
    xi = xi.double().reshape(-1, 1)  # (b, 1)
    th = torch.linspace(0.5 - 4.5, 0.5 + 4.5, 601, dtype=torch.float64)  # (G,)
    w = torch.exp(-0.5 * ((th - 0.5) / 0.5) ** 2)
    w = w / w.sum()
    y = torch.linspace(-1.0, 2.0, 1201, dtype=torch.float64)  # (Y,)
    out = []
    for chunk in xi.split(16):  # 16 x Y x G doubles at a time
        m = torch.exp(-2.0 * (th - chunk) ** 2)  # (c, G)
        lp = torch.distributions.Normal(m[:, None, :], 0.1).log_prob(y[None, :, None])
        py = (lp.exp() * w).sum(-1)  # (c, Y)
        out.append(-(py * py.clamp_min(1e-300).log()).sum(-1) * (y[1] - y[0]))
    return torch.cat(out) - 0.5 * math.log(2 * math.pi * math.e * 0.1**2)


def designs_for(q: int, b: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(q)
    return torch.rand(b, q, 2, generator=g) * 2 - 1


def test_quadrature_oracle_limits():
    # far from the prior mass the EIG vanishes; it never exceeds the Gaussian-channel capacity
    assert nonlinear_truth(torch.tensor([-30.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.5 < nonlinear_truth(torch.tensor([0.5])).item() < math.log(1 + 1 / 0.1**2)


@pytest.mark.parametrize("q", [1, 3])
def test_nmc_matches_linear_gaussian(q):
    exp = linear_experiment()
    theta = exp.prior.sample_with_generator((2000,), torch.Generator().manual_seed(1))
    designs = designs_for(q)
    est, se = eig.nmc(
        exp, designs, theta, num_inner=1999, generator=torch.Generator().manual_seed(2)
    )
    truth = linear_truth(designs).to(est)
    assert est.shape == se.shape == (4,)
    assert ((est - truth).abs() < 3 * se + 0.01).all(), (est, se, truth)


@pytest.mark.parametrize("q", [1, 3])
def test_bounds_sandwich_truth_and_converge(q):
    exp = linear_experiment()
    theta = exp.prior.sample_with_generator((2000,), torch.Generator().manual_seed(3))
    designs = designs_for(q) * 1.0
    truth = linear_truth(designs).to(theta)
    gaps = {}
    for num_inner in (4, 1999):
        g = torch.Generator().manual_seed(4)
        lo, lo_se = eig.pce(exp, designs, theta, num_inner, generator=g)
        g = torch.Generator().manual_seed(4)
        hi, hi_se = eig.snmc(exp, designs, theta, num_inner, generator=g)
        assert (lo <= truth + 3 * lo_se).all() and (hi >= truth - 3 * hi_se).all()
        assert (lo <= math.log(num_inner + 1) + 1e-5).all()
        assert (lo < hi).all()
        gaps[num_inner] = hi - lo
        if num_inner == 1999:  # converged: both within Monte Carlo error of the truth
            assert ((lo - truth).abs() < 3 * lo_se + 0.01).all(), (lo, truth)
            assert ((hi - truth).abs() < 3 * hi_se + 0.01).all(), (hi, truth)
    assert (gaps[1999] < gaps[4] / 10).all(), gaps
    # at small L the lower bound is visibly below the truth for informative designs
    lo4 = eig.pce(exp, designs, theta, 4, generator=torch.Generator().manual_seed(4))[0]
    assert (truth - lo4 > 0.05).any()


def test_nonlinear_estimates_match_quadrature():
    exp = nonlinear_experiment()
    theta = exp.prior.sample_with_generator((1500,), torch.Generator().manual_seed(5))
    xi = torch.tensor([-1.0, 0.0, 0.5, 1.2, 2.5]).reshape(5, 1, 1)
    truth = nonlinear_truth(xi).to(theta)
    for f in (eig.pce, eig.nmc):
        est, se = f(exp, xi, theta, num_inner=1499, generator=torch.Generator().manual_seed(6))
        assert ((est - truth).abs() < 3 * se + 0.02).all(), (f.__name__, est, se, truth)


def test_pce_gradcheck_wrt_design():
    prior = priors.analytic.Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2).double())
    exp = Experiment(
        prior,
        lambda t, x: dist.Normal(torch.tanh((t * x).sum(-1)), 0.3),
        Box([-2.0, -2.0], [2.0, 2.0]),
    )
    theta = prior.sample_with_generator((6,), torch.Generator().manual_seed(7))

    def f(x):
        return eig.pce(exp, x, theta, num_inner=4, generator=torch.Generator().manual_seed(8))[0]

    x = (torch.rand(2, 2, 2, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))
    f(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_chunking_does_not_change_the_estimate():
    exp = linear_experiment()
    theta = exp.prior.sample_with_generator((300,), torch.Generator().manual_seed(9))
    designs = designs_for(2, b=7)
    a = eig.pce(exp, designs, theta, 200, generator=torch.Generator().manual_seed(1))
    b = eig.pce(
        exp, designs, theta, 200, generator=torch.Generator().manual_seed(1), max_elements=1000
    )
    torch.testing.assert_close(a, b)


def test_bad_inputs_name_the_argument():
    exp = linear_experiment()
    theta = exp.prior.sample((50,))
    with pytest.raises(ValueError, match="designs.*outside the box"):
        eig.pce(exp, torch.full((2, 1, 2), 3.0), theta, 10)
    with pytest.raises(ValueError, match="designs.*design dimension 2"):
        eig.pce(exp, torch.zeros(2, 1, 3), theta, 10)
    with pytest.raises(ValueError, match="designs.*b x q x 2"):
        eig.pce(exp, torch.zeros(2, 2), theta, 10)
    with pytest.raises(ValueError, match="theta.*event shape \\(2,\\)"):
        eig.pce(exp, torch.zeros(2, 1, 2), torch.zeros(50, 3), 10)
    with pytest.raises(ValueError, match="num_inner.*N - 1 = 49"):
        eig.pce(exp, torch.zeros(2, 1, 2), theta, 50)


def test_total_bounds_on_fixed_designs():
    """Non-adaptive runs: total EIG of T fixed designs is the analytic joint EIG."""
    exp = linear_experiment()
    r, t = 400, 3
    gen = torch.Generator().manual_seed(10)
    xi = torch.rand(t, 2, generator=gen) * 2 - 1  # (T, d)
    truth = linear_truth(xi[None]).item()
    theta_true = exp.prior.sample_with_generator((r,), gen)  # (R, 2)
    designs = xi.expand(r, t, 2)
    y = (theta_true @ xi.T) + SIGMA * torch.randn(r, t, generator=gen)  # (R, T)
    small = eig.total(exp, designs, y, theta_true, 3, generator=gen)
    assert small.spce <= math.log(4) + 1e-6
    assert small.spce < truth + 3 * small.spce_se and small.snmc > truth - 3 * small.snmc_se
    big = eig.total(exp, designs, y, theta_true, 20000, generator=gen, max_elements=2**20)
    assert abs(big.spce - truth) < 3 * big.spce_se + 0.02
    assert abs(big.snmc - truth) < 3 * big.snmc_se + 0.02
    assert big.snmc - big.spce < (small.snmc - small.spce) / 10
    contrasts = exp.prior.sample_with_generator((500,), gen)
    a = eig.total(exp, designs, y, theta_true, 500, contrasts=contrasts)
    b = eig.total(exp, designs, y, theta_true, 500, contrasts=contrasts, max_elements=5000)
    torch.testing.assert_close(torch.stack(a), torch.stack(b))
    with pytest.raises(ValueError, match="observations"):
        eig.total(exp, designs, y[:, :2], theta_true, 10)
    with pytest.raises(ValueError, match="theta_true"):
        eig.total(exp, designs, y, theta_true[:, :1], 10)


def oed_linear_model(design):
    """pyro.contrib.oed's linear model: `... x n x p` designs, w ~ N(0, 2^2 I_p)."""
    batch = design.shape[:-2]
    w = pyro.sample("w", dist.Normal(design.new_zeros(batch + (2,)), 2.0).to_event(1))
    mean = torch.matmul(design, w.unsqueeze(-1)).squeeze(-1)
    return pyro.sample("y", dist.Normal(mean, 1.0).to_event(1))


def test_from_model_runs_pyro_oed_models():
    exp = Experiment.from_model(
        oed_linear_model,
        target="w",
        observation="y",
        design_space=Box([-1.0, -1.0], [1.0, 1.0]),
        design_shape=(1, 2),
    )
    assert exp.event_shape == (2,)
    assert exp.observation_shape() == (1,)
    theta = exp.prior.sample((1000,))
    designs = designs_for(2)
    est, se = eig.pce(exp, designs, theta, 999, generator=torch.Generator().manual_seed(11))
    truth = 0.5 * torch.logdet(torch.eye(2) + 4.0 * designs @ designs.mT)
    assert ((est - truth).abs() < 3 * se + 0.02).all(), (est, truth)
    with pytest.raises(ValueError, match="observation.*'z'"):
        Experiment.from_model(
            oed_linear_model, "w", "z", Box([-1.0, -1.0], [1.0, 1.0]), design_shape=(1, 2)
        ).observation_shape()


class SubclassedNormal(dist.Normal):
    """Not one of the exact Normal classes, so the estimators take the generic log_prob path."""


@pytest.mark.parametrize("estimator", ["pce", "snmc"])
def test_normal_fast_path_matches_generic_log_prob(estimator):
    exp = linear_experiment()
    generic = Experiment(
        exp.prior, lambda t, x: SubclassedNormal((t * x).sum(-1), SIGMA), exp.design_space
    )
    theta = exp.prior.sample_with_generator((200,), torch.Generator().manual_seed(12))
    designs = designs_for(3, b=5).requires_grad_()
    f = getattr(eig, estimator)
    fast = f(exp, designs, theta, 150, generator=torch.Generator().manual_seed(13))
    slow = f(generic, designs, theta, 150, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    (g_fast,) = torch.autograd.grad(fast[0].sum(), designs)
    (g_slow,) = torch.autograd.grad(slow[0].sum(), designs)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("q", [1, 3])
def test_gaussian_bound_is_exact_for_linear_gaussian(q):
    """The moment-matched bound equals the analytic EIG when the belief is Gaussian; the
    tolerance covers the sampling error of a 20000-sample covariance (relative ~ 2/sqrt(N))."""
    exp = linear_experiment()
    theta = exp.prior.sample_with_generator((20000,), torch.Generator().manual_seed(4))
    designs = designs_for(q)
    est, se = eig.gaussian(exp, designs, theta)
    truth = linear_truth(designs).to(est)
    assert (se == 0).all()
    torch.testing.assert_close(est, truth, rtol=0.03, atol=0.01)


def test_gaussian_bound_upper_bounds_a_nonlinear_eig():
    """On the bimodal-EIG 1-D model (quadrature truth) the Gaussian bound is never below the
    truth, by more than Monte Carlo error."""
    exp = nonlinear_experiment()
    theta = exp.prior.sample_with_generator((20000,), torch.Generator().manual_seed(5))
    xi = torch.linspace(-1.5, 2.5, 9).reshape(9, 1, 1)
    est, _ = eig.gaussian(exp, xi, theta)
    truth = nonlinear_truth(xi).to(est)
    assert (est >= truth - 0.02).all(), (est, truth)
    assert (est > truth + 0.05).any()  # a bound, not the value, on a non-Gaussian predictive


def test_gaussian_bound_needs_normal_likelihoods_and_works_in_qeig():
    from bed import qEIG

    exp = linear_experiment()
    theta = exp.prior.sample_with_generator((500,), torch.Generator().manual_seed(6))
    designs = designs_for(2)
    acq = qEIG(exp, theta, estimator="gaussian")
    torch.testing.assert_close(acq(designs), eig.gaussian(exp, designs, theta)[0])
    _, se = acq.estimate(designs)
    assert (se == 0).all()
    poisson = Experiment(
        exp.prior, lambda t, x: dist.Poisson((t * x).sum(-1).exp()), Box([-1.0, -1.0], [1.0, 1.0])
    )
    with pytest.raises(TypeError, match="independent Normal coordinates"):
        eig.gaussian(poisson, designs, theta)
