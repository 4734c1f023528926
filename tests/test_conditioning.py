"""Conditioning methods against exact answers (methods.md section 7), with Monte Carlo tolerances.

Oracle priors first (``priors.analytic.Gaussian`` with its affine map), so a failure is a
sampler bug. Chains are independent, so the final states of ``C >= S`` chains are ``S``
independent draws and the Monte Carlo standard error of a mean is ``sd / sqrt(S)``.
"""

import math

import pyro.distributions as dist
import pytest
import torch
from pyro.ops.stats import effective_sample_size

import bed
import priors
from bed.conditioning import available_methods

METHODS = ["ess", "exact", "nuts"]
# keyword arguments that keep each method fast in the contract battery
FAST = {
    "ess": {"num_chains": 64, "warmup": 30},
    "exact": {},
    "nuts": {"num_chains": 2, "warmup": 20},
}


def linear_gaussian(noise=0.4, d=3):
    """Prior N(m0, S0) in d=3, y_i = a_i . theta + N(0, noise^2), two designs a_i."""
    m0 = torch.tensor([0.2, -0.1, 0.3])[:d]
    s0 = torch.eye(d) + 0.3
    prior = priors.analytic.Gaussian(m0, s0)
    exp = bed.Experiment(
        prior,
        lambda theta, xi: dist.Normal((theta * xi).sum(-1), noise),
        bed.Box(-2 * torch.ones(d), 2 * torch.ones(d)),
    )
    designs = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 0.8]])[:, :d]
    y = torch.tensor([0.7, -1.2])
    return exp, designs, y


def brute_force(exp, designs, y, noise):
    """Information form: S = (S0^-1 + A^T A / s^2)^-1, m = S (S0^-1 m0 + A^T y / s^2)."""
    m0, s0 = exp.prior.loc.double(), exp.prior.covariance_matrix.double()
    a, y = designs.double(), y.double()
    prec = torch.linalg.inv(s0) + a.mT @ a / noise**2
    s = torch.linalg.inv(prec)
    m = s @ (torch.linalg.solve(s0, m0) + a.mT @ y / noise**2)
    return m, s


def assert_moments(samples, m, s, num_eff, z=4.5):
    """Sample mean and covariance of `N x D` samples within ``z`` standard errors."""
    x = samples.double().reshape(samples.shape[0], -1)
    sd = s.diagonal().sqrt()
    err = (x.mean(0) - m).abs()
    assert (err <= z * sd / math.sqrt(num_eff)).all(), (x.mean(0), m)
    cov = x.T.cov()
    se_cov = ((s.diagonal()[:, None] * s.diagonal()[None] + s.pow(2)) / num_eff).sqrt()
    assert ((cov - s).abs() <= z * se_cov).all(), (cov, s)


# ------------------------------------------------------------------------- contract battery
@pytest.mark.parametrize("method", METHODS)
def test_contract(method):
    exp, designs, y = linear_gaussian()
    post = bed.condition(
        exp, designs, y, method, 50, generator=torch.Generator().manual_seed(0), **FAST[method]
    )
    assert isinstance(post, bed.Posterior) and post.method == method
    assert post.samples.shape == (50, 3) and torch.isfinite(post.samples).all()
    assert post.source.shape == (50, 3)
    torch.testing.assert_close(exp.prior.push(post.source), post.samples)
    assert post.diagnostics["num_observations"] == 2 and post.diagnostics["wall_time"] > 0
    ds = post.to_xarray()
    assert ds["theta"].dims == ("sample", "theta_dim_0") and ds.attrs["method"] == method


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_samples(method):
    exp, designs, y = linear_gaussian()
    a, b = (
        bed.condition(
            exp, designs, y, method, 20, generator=torch.Generator().manual_seed(3), **FAST[method]
        ).samples
        for _ in range(2)
    )
    assert torch.equal(a, b)
    c = bed.condition(
        exp, designs, y, method, 20, generator=torch.Generator().manual_seed(4), **FAST[method]
    ).samples
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", METHODS)
def test_no_observations_gives_prior(method):
    exp, _, _ = linear_gaussian()
    post = bed.condition(
        exp,
        torch.zeros(0, 3),
        torch.zeros(0),
        method,
        4000,
        generator=torch.Generator().manual_seed(1),
    )
    assert post.samples.shape == (4000, 3)
    assert_moments(
        post.samples, exp.prior.loc.double(), exp.prior.covariance_matrix.double(), 4000
    )


@pytest.mark.parametrize("method", ["ess", "nuts"])
def test_event_shape_2x2(method):
    prior = priors.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=(2, 2))
    exp = bed.Experiment(
        prior,
        lambda t, xi: dist.Normal((t[..., 0, :] * xi).sum(-1), 1.0),
        bed.Box([-1.0, -1.0], [1.0, 1.0]),
    )
    post = bed.condition(
        exp,
        torch.ones(1, 2),
        torch.ones(1),
        method,
        8,
        generator=torch.Generator().manual_seed(0),
        **FAST[method],
    )
    assert post.samples.shape == (8, 2, 2) and post.source.shape == (8, 2, 2)
    assert post.to_xarray()["theta"].dims == ("sample", "theta_dim_0", "theta_dim_1")


# ------------------------------------------------------------------------- exact answers
def test_exact_matches_brute_force():
    exp, designs, y = linear_gaussian(noise=0.4)
    m, s = brute_force(exp, designs, y, 0.4)
    post = bed.condition(
        exp, designs, y, "exact", 20000, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(post.diagnostics["loc"].double(), m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        post.diagnostics["covariance_matrix"].double(), s, atol=1e-5, rtol=1e-5
    )
    assert_moments(post.samples, m, s, 20000)
    # evidence: y ~ N(A m0, A S0 A^T + s^2 I)
    a = designs.double()
    ev = torch.distributions.MultivariateNormal(
        a @ exp.prior.loc.double(),
        a @ exp.prior.covariance_matrix.double() @ a.mT + 0.16 * torch.eye(2, dtype=torch.float64),
    ).log_prob(y.double())
    assert abs(post.diagnostics["log_evidence"] - float(ev)) < 1e-4


def test_exact_multivariate_normal_likelihood():
    """A `2`-vector observation per design with correlated noise (block covariance)."""
    prior = priors.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    r = torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    exp = bed.Experiment(
        prior, lambda t, xi: dist.MultivariateNormal(t * xi, r), bed.Box([-2.0, -2.0], [2.0, 2.0])
    )
    designs, y = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([[0.3, 1.0], [0.1, -0.4]])
    post = bed.condition(exp, designs, y, "exact", 10, generator=torch.Generator().manual_seed(0))
    # brute force: stack y = blockdiag(diag(xi_i)) theta + e
    a = torch.cat([torch.diag(xi) for xi in designs]).double()
    rr = torch.block_diag(r, r).double()
    s = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + a.mT @ torch.linalg.solve(rr, a))
    m = s @ a.mT @ torch.linalg.solve(rr, y.reshape(-1).double())
    torch.testing.assert_close(post.diagnostics["loc"].double(), m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        post.diagnostics["covariance_matrix"].double(), s, atol=1e-5, rtol=1e-5
    )


def test_exact_rejects_nonlinear_and_non_gaussian():
    exp, designs, y = linear_gaussian()
    nonlin = bed.Experiment(
        exp.prior, lambda t, xi: dist.Normal((t * xi).sum(-1) ** 3, 0.4), exp.design_space
    )
    with pytest.raises(ValueError, match="not affine"):
        bed.condition(nonlin, designs, y, "exact", 10)
    hetero = bed.Experiment(
        exp.prior, lambda t, xi: dist.Normal((t * xi).sum(-1), t[..., 0].exp()), exp.design_space
    )
    with pytest.raises(ValueError, match="covariance depends on theta"):
        bed.condition(hetero, designs, y, "exact", 10)
    laplace = bed.Experiment(
        exp.prior, lambda t, xi: dist.Laplace((t * xi).sum(-1), 0.4), exp.design_space
    )
    with pytest.raises(TypeError, match="Laplace"):
        bed.condition(laplace, designs, y, "exact", 10)


def test_ess_matches_exact_linear_gaussian():
    """methods.md 7.3(3a): d=3, 2 observations; final states of 2000 chains vs exact."""
    exp, designs, y = linear_gaussian(noise=0.4)
    m, s = brute_force(exp, designs, y, 0.4)
    post = bed.condition(
        exp,
        designs,
        y,
        "ess",
        2000,
        num_chains=2000,
        warmup=150,
        generator=torch.Generator().manual_seed(0),
    )
    assert_moments(post.samples, m, s, 2000)
    d = post.diagnostics
    assert d["collapsed"] == 0 and 0.5 < d["mean_shrinks"] < 10
    # 2 start evaluations per chain (start check + kernel init), then 1 + shrinks per step
    assert d["num_evals"] == pytest.approx(2000 * (2 + 151 + d["mean_shrinks"] * 151), rel=1e-6)


def test_ess_sharp_likelihood_matches_exact():
    """A sharp likelihood (noise 0.05): the posterior sd is ~20x below the prior's."""
    exp, designs, y = linear_gaussian(noise=0.05)
    m, s = brute_force(exp, designs, y, 0.05)
    post = bed.condition(
        exp,
        designs,
        y,
        "ess",
        1000,
        num_chains=1000,
        warmup=300,
        generator=torch.Generator().manual_seed(1),
    )
    assert_moments(post.samples, m, s, 1000)


def test_ess_flat_likelihood_returns_prior_from_far_start():
    """A likelihood constant in theta: ESS must return the prior even from a far warm start."""
    exp, designs, _ = linear_gaussian()
    flat = bed.Experiment(
        exp.prior, lambda t, xi: dist.Normal(0.0 * (t * xi).sum(-1), 1.0), exp.design_space
    )
    far = torch.full((1, 3), 4.0)
    post = bed.condition(
        flat,
        designs,
        torch.zeros(2),
        "ess",
        3000,
        num_chains=3000,
        warmup=40,
        init=far,
        generator=torch.Generator().manual_seed(2),
    )
    assert post.diagnostics["warm_start"] and post.diagnostics["mean_shrinks"] == 0
    assert_moments(
        post.samples, exp.prior.loc.double(), exp.prior.covariance_matrix.double(), 3000
    )


def test_ess_jacobian_cancels_on_random_realnvp():
    """methods.md 7.3(3e): ESS through a RealNVP with random weights vs SNIS in z-space."""
    flow = priors.flow.realnvp(
        2, num_layers=3, hidden=16, init_identity=False, trainable_base=False
    )
    with torch.no_grad():  # random weights, scaled up so that log|det J| varies (sd ~ 1)
        for p in flow.parameters():
            p.mul_(1.5)
    prior = priors.FlowPrior(flow)
    exp = bed.Experiment(
        prior, lambda t, xi: dist.Normal((t * xi).sum(-1), 0.5), bed.Box([-2.0, -2.0], [2.0, 2.0])
    )
    designs, y = torch.tensor([[1.0, 0.0], [0.5, 1.0]]), torch.tensor([0.8, -0.3])
    gen = torch.Generator().manual_seed(0)
    post = bed.condition(exp, designs, y, "ess", 3000, num_chains=3000, warmup=150, generator=gen)
    with torch.no_grad():
        z = torch.randn(400_000, 2, generator=gen)
        x = prior.push(z)
        logw = exp.log_likelihood(x, designs, y)  # (N,)
        w = (logw - logw.logsumexp(0)).exp()
        m = (w[:, None] * x).sum(0).double()
        v = (w[:, None] * (x - m.float()).pow(2)).sum(0).double()
        n_is = float(1 / w.pow(2).sum())
        # the wrong answer a sampler that kept the Jacobian would target
        _, logdet = prior.push_and_log_det(z)
        w_bad = (logw - logdet - (logw - logdet).logsumexp(0)).exp()
        m_bad = (w_bad[:, None] * x).sum(0).double()
    sd = v.sqrt()
    tol = 4.5 * sd * math.sqrt(1 / 3000 + 1 / n_is)
    assert ((post.samples.double().mean(0) - m).abs() <= tol).all()
    assert (
        (post.samples.double().var(0) - v).abs() <= 4.5 * v * math.sqrt(2 / 3000 + 4 / n_is)
    ).all()
    # power check: the Jacobian-weighted target is resolvably different from the right one
    assert ((m_bad - m).abs() > 2 * tol).any()


def test_ess_indicator_likelihood_vs_rejection():
    """methods.md 7.3(3d): g = 1[|theta_0 - 0.8| < 0.5] (zero outside) vs rejection sampling."""
    exp, _, _ = linear_gaussian()
    box = bed.Experiment(
        exp.prior,
        lambda t, xi: dist.Uniform(t[..., 0] - 0.5, t[..., 0] + 0.5, validate_args=False),
        bed.Box([-1.0], [1.0]),
    )
    gen = torch.Generator().manual_seed(0)
    post = bed.condition(
        box,
        torch.zeros(1, 1),
        torch.tensor([0.8]),
        "ess",
        2000,
        num_chains=2000,
        warmup=100,
        generator=gen,
    )
    assert ((post.samples[:, 0] - 0.8).abs() < 0.5).all()
    x = exp.prior.sample_with_generator((200_000,), gen)
    ref = x[(x[:, 0] - 0.8).abs() < 0.5].double()
    m, s = ref.mean(0), ref.T.cov()
    assert_moments(post.samples, m, s, 1 / (1 / 2000 + 1 / ref.shape[0]))


def test_nuts_matches_exact_linear_gaussian():
    exp, designs, y = linear_gaussian(noise=0.4)
    m, s = brute_force(exp, designs, y, 0.4)
    post = bed.condition(
        exp,
        designs,
        y,
        "nuts",
        400,
        num_chains=2,
        warmup=100,
        generator=torch.Generator().manual_seed(0),
    )
    x = post.samples.double().reshape(200, 2, 3).transpose(0, 1)  # (chain, draw, D)
    ess = effective_sample_size(x, chain_dim=0, sample_dim=1).min()
    assert ess > 100 and post.diagnostics["divergences"] == 0
    assert_moments(post.samples, m, s, float(ess))


# ------------------------------------------------------------------------- warm start
def test_warm_start_from_posterior_is_used():
    """From exact posterior draws, one ESS step keeps the (sharp) posterior; from the prior it
    would not."""
    exp, designs, y = linear_gaussian(noise=0.05)
    m, s = brute_force(exp, designs, y, 0.05)
    gen = torch.Generator().manual_seed(0)
    exact = bed.condition(exp, designs, y, "exact", 2000, generator=gen)
    kw = {"num_chains": 2000, "warmup": 0, "generator": gen}
    post = bed.condition(exp, designs, y, "ess", 2000, init=exact, **kw)
    assert post.diagnostics["warm_start"] and post.diagnostics["num_iterations"] == 1
    assert_moments(post.samples, m, s, 2000)  # each chain starts at its own exact draw
    # a theta-tensor warm start (through prior.pull) gives the same guarantee
    post = bed.condition(exp, designs, y, "ess", 2000, init=exact.samples, **kw)
    assert_moments(post.samples, m, s, 2000)
    cold = bed.condition(exp, designs, y, "ess", 2000, **kw)
    with pytest.raises(AssertionError):
        assert_moments(cold.samples, m, s, 2000)


def test_warm_start_without_pull_warns():
    class NoPull(priors.analytic.Gaussian):
        has_pull = False

    exp, designs, y = linear_gaussian()
    exp = bed.Experiment(NoPull(torch.zeros(3), torch.eye(3)), exp.likelihood, exp.design_space)
    with pytest.warns(UserWarning, match="no pull"):
        post = bed.condition(exp, designs, y, "ess", 10, init=torch.zeros(5, 3), warmup=5)
    assert not post.diagnostics["warm_start"]


def test_multi_fidelity_reweights_to_fine_map():
    """ESS on a coarse prior, importance-reweighted to the fine prior's posterior."""
    exp, designs, y = linear_gaussian(noise=0.4)
    m, s = brute_force(exp, designs, y, 0.4)
    coarse = priors.analytic.Gaussian(exp.prior.loc + 0.1, exp.prior.covariance_matrix * 1.1)
    post = bed.condition(
        exp,
        designs,
        y,
        "ess",
        4000,
        num_chains=4000,
        warmup=100,
        coarse_prior=coarse,
        generator=torch.Generator().manual_seed(0),
    )
    ie = post.diagnostics["importance_ess"]
    assert 0.3 < ie <= 1.0
    assert_moments(post.samples, m, s, 4000 * ie / 2)


# ------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    exp, designs, y = linear_gaussian()
    with pytest.raises(ValueError, match=r"unknown method 'foo'.*'ess'.*'exact'.*'nuts'"):
        bed.condition(exp, designs, y, "foo")
    assert {"ess", "exact", "nuts"} <= set(available_methods())
    with pytest.raises(ValueError, match=r"observation shape is \(\)"):
        bed.condition(exp, designs, torch.zeros(2, 3), "ess")
    with pytest.raises(ValueError, match="NaN or inf"):
        bed.condition(exp, designs, torch.tensor([0.1, float("nan")]), "ess")
    with pytest.raises(ValueError, match="to match 2 designs"):
        bed.condition(exp, designs, torch.zeros(3), "ess")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['shrinks'\].*max_shrinks"):
        bed.condition(exp, designs, y, "ess", shrinks=3)
    plain = bed.Experiment(
        dist.Normal(torch.zeros(3), 1.0).to_event(1), exp.likelihood, exp.design_space
    )
    for method in ("ess", "nuts"):
        with pytest.raises(TypeError, match=r"needs a priors.GenerativePrior with push.*exact"):
            bed.condition(plain, designs, y, method)
    with pytest.raises(TypeError, match="needs a priors.analytic.Gaussian"):
        bed.condition(plain, designs, y, "exact")


def test_ess_shrink_cap_raises():
    exp, designs, y = linear_gaussian(noise=1e-3)
    with pytest.raises(RuntimeError, match="max_shrinks=2"):
        bed.condition(exp, designs, y, "ess", 100, max_shrinks=2, warmup=5)


def test_ess_zero_likelihood_everywhere_raises():
    exp, _, _ = linear_gaussian()
    box = bed.Experiment(
        exp.prior,
        lambda t, xi: dist.Uniform(t[..., 0] - 1e-9, t[..., 0] + 1e-9, validate_args=False),
        bed.Box([-1.0], [1.0]),
    )
    with pytest.raises(ValueError, match="non-zero likelihood"):
        bed.condition(box, torch.zeros(1, 1), torch.tensor([30.0]), "ess", 10, init_tries=3)


def test_exact_gaussian_mixture_matches_brute_force():
    """methods.md 7.1: a bimodal 2-D mixture posterior, per-component Kalman update and
    evidence-reweighted components, against the information form and exact SNIS."""
    w0 = torch.tensor([0.5, 0.3, 0.2])
    locs = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.0]])
    covs = torch.stack([0.5 * torch.eye(2), torch.tensor([[0.6, 0.2], [0.2, 0.4]]), torch.eye(2)])
    prior = priors.analytic.GaussianMixture(w0, locs, covs)
    exp = bed.Experiment(
        prior,
        lambda t, xi: dist.Normal((t * xi).sum(-1) + 0.3, 0.5),
        bed.Box([-2.0, -2.0], [2.0, 2.0]),
    )
    designs, y = torch.tensor([[0.0, 1.0]]), torch.tensor([0.6])  # y ~ theta_1: x_0 bimodal
    gen = torch.Generator().manual_seed(0)
    post = bed.condition(exp, designs, y, "exact", 20000, generator=gen)
    a, yy, r = designs.double(), y.double() - 0.3, torch.full((1, 1), 0.25, dtype=torch.float64)
    log_w, ms, ss = [], [], []
    for k in range(3):
        m0, s0 = locs[k].double(), covs[k].double()
        prec = torch.linalg.inv(s0) + a.mT @ torch.linalg.solve(r, a)
        s = torch.linalg.inv(prec)
        ms.append(s @ (torch.linalg.solve(s0, m0) + a.mT @ torch.linalg.solve(r, yy)))
        ss.append(s)
        ev = torch.distributions.MultivariateNormal(a @ m0, a @ s0 @ a.mT + r).log_prob(yy)
        log_w.append(w0[k].double().log() + ev)
    w = torch.stack(log_w).softmax(0)
    d = post.diagnostics
    torch.testing.assert_close(d["weights"].double(), w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d["locs"].double(), torch.stack(ms), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        d["covariance_matrices"].double(), torch.stack(ss), atol=1e-5, rtol=1e-5
    )
    assert post.source is None and post.samples.shape == (20000, 2)
    # the draws: mixture mean and covariance
    m = (w[:, None] * torch.stack(ms)).sum(0)
    second = (
        w[:, None, None]
        * (torch.stack(ss) + torch.stack(ms)[:, :, None] * torch.stack(ms)[:, None, :])
    ).sum(0)
    assert_moments(post.samples, m, second - m[:, None] * m[None], 20000)
