"""The contract battery every generative prior must pass, plus FlowPrior-specific checks.

``PRIORS`` maps a test id to a factory; every shipped zoo prior is added automatically, so a new
prior (a new zoo entry, or a new factory here) gets the whole battery for free: shapes, errors,
Pyro integration, invertibility, change of variables against an autograd Jacobian, the density's
normalisation, a goodness-of-fit test between ``sample`` and ``log_prob``, gradients,
``expand``, float64 and ``.to(device)``.
"""

from __future__ import annotations

import math
import re

import normflows as nf
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.testing.gof import auto_goodness_of_fit

import priors
from priors import FlowPrior
from priors.analytic import Gaussian
from priors.flow import neural_spline, realnvp


def _random_base(flow: nf.NormalizingFlow, generator: torch.Generator) -> nf.NormalizingFlow:
    """Give the base a non-trivial loc/log_scale so the whitening is exercised."""
    with torch.no_grad():
        q0 = flow.q0
        q0.loc.copy_(0.3 * torch.randn(q0.loc.shape, generator=generator))
        q0.log_scale.copy_(0.2 * torch.randn(q0.log_scale.shape, generator=generator))
    return flow


def _random_realnvp(dim: int, event_shape: tuple[int, ...]) -> FlowPrior:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    flow = _random_base(realnvp(dim, num_layers=3, hidden=16, init_identity=False), g)
    return FlowPrior(flow, event_shape=event_shape)


def _random_spline() -> FlowPrior:
    torch.manual_seed(2)
    flow = neural_spline(2, num_layers=2, hidden=16, num_blocks=1, trainable_base=True)
    return FlowPrior(_random_base(flow, torch.Generator().manual_seed(2)))


def _gaussian(event_shape: tuple[int, ...]) -> Gaussian:
    d = math.prod(event_shape)
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(3))
    cov = a @ a.T / d + 0.5 * torch.eye(d)
    return Gaussian(torch.linspace(-0.5, 0.5, d), cov, event_shape=event_shape)


#: test id -> factory of a float32 CPU prior. Add new priors here (zoo priors are added below).
PRIORS = {
    "realnvp-random-2d": lambda: _random_realnvp(2, (2,)),
    "realnvp-random-2x2": lambda: _random_realnvp(4, (2, 2)),
    "spline-random-2d": _random_spline,
    "gaussian-2d": lambda: _gaussian((2,)),
    "gaussian-2x2": lambda: _gaussian((2, 2)),
}
for _name in priors.available():
    # exact, invertible, low-dimensional priors only: ODE-based zoo priors have their own checks
    # (test_zoo_ode.py), and the 1024-D field flow its own (test_grf.py), since importance
    # sampling and goodness-of-fit checks of the battery need low dimensions
    _card = priors.zoo.card(_name)
    if _card["kind"] == "flow" and math.prod(_card["event_shape"]) <= 16:
        PRIORS[f"zoo-{_name}"] = lambda _name=_name: priors.load(_name)


@pytest.fixture(params=list(PRIORS), scope="module")
def prior_id(request) -> str:
    return request.param


@pytest.fixture
def prior(prior_id, device):
    with torch.random.fork_rng(devices=[]):
        p = PRIORS[prior_id]()
    return p.to(device=device, dtype=torch.get_default_dtype())


def _flat(x: torch.Tensor, event_shape: torch.Size) -> torch.Tensor:
    return x.reshape(x.shape[: x.dim() - len(event_shape)] + (-1,))


# ---------------------------------------------------------------------- shapes and errors
def test_sample_and_log_prob_shapes(prior):
    ev = prior.event_shape
    assert prior.sample().shape == ev
    assert prior.sample((7,)).shape == (7,) + ev
    x = prior.sample((4, 3))
    assert x.shape == (4, 3) + ev
    assert x.device == prior.device and x.dtype == prior.dtype
    lp = prior.log_prob(x)
    assert lp.shape == (4, 3) and torch.isfinite(lp).all()
    z = prior.source.sample((5,))
    assert z.shape == (5,) + prior.source_event_shape
    assert prior.push(z).shape == (5,) + ev


def test_log_prob_batch_broadcasting(prior):
    batched = prior.expand((3,))
    assert batched.batch_shape == (3,)
    assert batched.sample((2,)).shape == (2, 3) + prior.event_shape
    x = prior.sample((5, 1))  # (5, 1, *event)
    lp = batched.log_prob(x)
    assert lp.shape == (5, 3)
    torch.testing.assert_close(lp, prior.log_prob(x).expand(5, 3))


def test_wrong_event_shape_names_expected_and_received(prior):
    bad = torch.zeros(6, prior.event_shape.numel() + 1)
    received = re.escape(str(tuple(bad.shape)))
    sites = [(prior.log_prob, prior.event_shape), (prior.push, prior.source_event_shape)]
    if prior.has_pull:
        sites.append((prior.pull, prior.event_shape))
    for fn, shape in sites:
        with pytest.raises(ValueError, match=rf"(?s){re.escape(str(tuple(shape)))}.*{received}"):
            fn(bad)


# ---------------------------------------------------------------------- Pyro integration
def test_pyro_trace_condition_and_plate(prior):
    def model():
        with pyro.plate("items", 5):
            return pyro.sample("theta", prior)

    tr = poutine.trace(model).get_trace()
    assert tr.nodes["theta"]["value"].shape == (5,) + prior.event_shape

    x = prior.sample((5,))
    tr = poutine.trace(poutine.condition(model, data={"theta": x})).get_trace()
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["theta"]["log_prob"], prior.log_prob(x))
    torch.testing.assert_close(tr.log_prob_sum(), prior.log_prob(x).sum())

    # a single, un-plated site
    tr = poutine.trace(lambda: pyro.sample("theta", prior)).get_trace()
    assert tr.nodes["theta"]["value"].shape == prior.event_shape


# ---------------------------------------------------------------------- maps and density
def test_push_pull_roundtrip(prior):
    if not prior.has_pull:
        pytest.fail(f"{type(prior).__name__} must define pull for this battery")
    x = prior.sample((64,))
    torch.testing.assert_close(prior.push(prior.pull(x)), x, atol=1e-4, rtol=0)
    z = prior.source.sample((64,))
    torch.testing.assert_close(prior.pull(prior.push(z)), z, atol=1e-4, rtol=0)


def test_change_of_variables_against_autograd_jacobian(prior):
    p = prior.to(dtype=torch.float64)  # float64 so the Jacobian's log-determinant is exact
    src = p.source_event_shape
    for z in p.source.sample((4,)):

        def push_flat(v):
            return p.push(v.reshape(src)).reshape(-1)

        jac = torch.autograd.functional.jacobian(push_flat, z.reshape(-1))  # (D, D)
        _, logabsdet = torch.linalg.slogdet(jac)
        expected = p.source.log_prob(z) - logabsdet
        torch.testing.assert_close(p.log_prob(p.push(z)), expected, atol=1e-6, rtol=1e-6)


def test_density_integrates_to_one_importance_sampling(prior):
    """Monte Carlo: E_q[p(x) / q(x)] = 1 for a wide Gaussian q covering the prior."""
    g = torch.Generator(device=prior.device).manual_seed(11)
    x = _flat(prior.sample_with_generator((20_000,), g), prior.event_shape)
    q = dist.MultivariateNormal(x.mean(0), 4.0 * torch.cov(x.T))  # twice the prior's std
    n = 40_000
    y = q.sample((n,))
    w = (prior.log_prob(y.reshape((n,) + prior.event_shape)) - q.log_prob(y)).exp()
    est, se = w.mean().item(), w.std().item() / math.sqrt(n)
    assert abs(est - 1.0) < 4 * se + 0.01, (est, se)


with torch.random.fork_rng(devices=[]):
    TWO_D = [k for k, make in PRIORS.items() if make().event_shape.numel() == 2]


@pytest.mark.parametrize("two_d_id", TWO_D)
def test_two_d_density_integrates_to_one_on_a_grid(two_d_id, device):
    with torch.random.fork_rng(devices=[]):
        prior = PRIORS[two_d_id]().to(device=device, dtype=torch.get_default_dtype())
    x = _flat(prior.sample((20_000,)), prior.event_shape)
    lo, hi = x.min(0).values, x.max(0).values
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    n = 400
    u = torch.linspace(0, 1, n, device=x.device, dtype=x.dtype)
    gx, gy = lo[0] + (hi[0] - lo[0]) * u, lo[1] + (hi[1] - lo[1]) * u
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        dens = prior.log_prob(pts.reshape((-1,) + prior.event_shape)).exp()
    cell = (gx[1] - gx[0]) * (gy[1] - gy[0])
    assert abs((dens.sum() * cell).item() - 1.0) < 0.03


@pytest.mark.slow
def test_goodness_of_fit_sample_vs_log_prob(prior):
    x = prior.sample((2000 * prior.event_shape.numel(),))  # pyro's gof needs > 1000 per dim
    probs = prior.log_prob(x).exp().detach()
    gof = auto_goodness_of_fit(_flat(x, prior.event_shape).detach(), probs)
    assert gof > 1e-3


# ---------------------------------------------------------------------- gradients, dtype, device
def test_rsample_is_differentiable(prior):
    z = prior.source.sample((8,)).requires_grad_(True)
    prior.push(z).pow(2).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert prior.has_rsample
    assert prior.rsample((3,)).shape == (3,) + prior.event_shape


def test_float64(prior):
    p64 = prior.to(dtype=torch.float64)
    assert p64.dtype == torch.float64
    x = p64.sample((16,))
    assert x.dtype == torch.float64 and p64.log_prob(x).dtype == torch.float64
    assert p64.pull(x).dtype == torch.float64
    torch.testing.assert_close(
        prior.log_prob(x.to(prior.dtype)).double(), p64.log_prob(x), atol=1e-3, rtol=1e-4
    )
    assert prior.dtype == torch.get_default_dtype()  # .to returns a new view


def test_to_cuda(prior):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    pc = prior.to("cuda")
    x = pc.sample((16,))
    assert x.is_cuda and pc.log_prob(x).is_cuda
    torch.testing.assert_close(
        pc.log_prob(x).cpu(), prior.to("cpu").log_prob(x.cpu()), atol=1e-4, rtol=1e-4
    )


def test_sample_with_generator_is_reproducible(prior):
    g1 = torch.Generator(device=prior.device).manual_seed(5)
    g2 = torch.Generator(device=prior.device).manual_seed(5)
    torch.testing.assert_close(
        prior.sample_with_generator((10,), g1), prior.sample_with_generator((10,), g2)
    )


# ---------------------------------------------------------------------- FlowPrior specifics
def test_flowprior_whitens_a_trainable_base():
    """push(xi) = flow(loc + scale * xi), and the density equals normflows' own log_prob."""
    p = _random_realnvp(4, (4,))
    q0 = p.flow.q0
    xi = torch.randn(32, 4)
    z = q0.loc + q0.log_scale.exp() * xi
    torch.testing.assert_close(p.push(xi), p.flow.forward(z))
    x = p.push(xi)
    torch.testing.assert_close(p.log_prob(x), p.flow.log_prob(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.pull(x), xi, atol=1e-4, rtol=0)


def test_flowprior_push_and_pull_log_dets_agree():
    p = _random_realnvp(4, (2, 2))
    xi = torch.randn(3, 5, 2, 2)
    x, ld_push = p.push_and_log_det(xi)
    xi_back, ld_pull = p.pull_and_log_det(x)
    assert ld_push.shape == (3, 5) and ld_pull.shape == (3, 5)
    torch.testing.assert_close(ld_push, -ld_pull, atol=1e-4, rtol=0)
    torch.testing.assert_close(xi_back, xi, atol=1e-4, rtol=0)


def test_flowprior_rejects_bad_inputs():
    with pytest.raises(TypeError, match="NormalizingFlow"):
        FlowPrior(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"event_shape \(3,\) has 3 entries.*\(4,\)"):
        FlowPrior(realnvp(4, num_layers=1, hidden=4), event_shape=(3,))
    mixture = nf.NormalizingFlow(nf.distributions.GaussianMixture(2, 2), [])
    with pytest.raises(TypeError, match="DiagGaussian"):
        FlowPrior(mixture)
    with pytest.raises(ValueError, match="at least 2"):
        realnvp(1)


def test_flowprior_temperature_scales_the_source():
    p = _random_realnvp(2, (2,))
    p.flow.q0.temperature = 0.5
    xi = torch.randn(10, 2)
    q0 = p.flow.q0
    z = q0.loc + 0.5 * q0.log_scale.exp() * xi
    torch.testing.assert_close(p.push(xi), p.flow.forward(z))
    x = p.push(xi)
    torch.testing.assert_close(p.log_prob(x), p.flow.log_prob(x), atol=1e-5, rtol=1e-5)
