"""Exact-posterior battery (issue 4 acceptance, methods.md 7.3): every conditioning method on
every oracle case, judged by SW_ratio against closed-form posterior draws.

Cases (observations are coordinate subsets ``y = theta[idx] + N(0, noise^2)``, linear-Gaussian,
so ``method="exact"`` gives the reference and FBS applies):

- ``gauss``: 3-D correlated Gaussian prior, coordinates 0 and 2 observed, noise 0.5;
- ``gauss-sharp``: the same with noise 0.05;
- ``mixture``: 2-D three-component Gaussian mixture, coordinate 1 observed (noise 0.3); the
  posterior is bimodal in coordinate 0 (weights 0.494 / 0.506, the third mode vanishes).

Priors: ESS and NUTS use the source-space view (``Gaussian``: the affine map; the mixture: its
probability-flow ODE with 10 Heun steps); SMC, FBS and DPS use the diffusion view
(``Gaussian.as_diffusion()``, the mixture itself) with exact scores.

Metric: :func:`bed.diagnostics.sw_ratio` with blocks of ``n = 500`` draws out of 4000 (rows
shuffled with a fixed permutation, so a block is a random subset of the method's output), the
floor averaged over 16 exact blocks, 200 fixed projections. Why averaged: a single SW between
two 500-draw samples has a coefficient of variation of 0.2-0.4, and the plain two-draw ratio
of *exact* draws exceeded 1.5 for 2-10 % of seeds (bimodal case: up to 3.8). With 8 blocks
the exact-vs-exact ratio stayed in 0.8-1.44 over 40 seeds. Pass: SW_ratio <= 1.5; bimodal mode
weight (mass of ``theta_0 < 0``) within 0.05 of the exact one.

ESS on the mixture is exact only for the discretised ODE map, so its reference is
self-normalised importance sampling on the *same* map (200k source draws, methods.md 7.1); that
reference is itself within SW_ratio 1.15 of the exact posterior at 10 Heun steps (0.96 at 20).
The mode weights are checked against the exact posterior.

Every method passes on every case it applies to (SMC's sharp case since ``"variance"``
tempering). DPS has no threshold: its ratio is printed and recorded (``record_property``).
Run: ``OMP_NUM_THREADS=1 pytest tests/test_exact_posteriors.py -q -rx -s``.
"""

from __future__ import annotations

import functools

import pyro.distributions as dist
import pytest
import torch

import bed
import priors
from bed.diagnostics import sliced_wasserstein, sw_ratio

BLOCK, NUM_BLOCKS = 500, 8
NUM_SAMPLES = BLOCK * NUM_BLOCKS
THRESHOLD = 1.5


class Coordinates:
    """``y = theta[..., xi] + N(0, noise^2)``: the design lists observed coordinates."""

    def __init__(self, noise: float) -> None:
        self.noise = noise

    def __call__(self, theta, xi):
        idx = xi.long()  # (..., m)
        vals = torch.gather(theta, -1, idx.expand(theta.shape[:-1] + idx.shape[-1:]))
        return dist.Normal(vals, self.noise).to_event(1)

    def observed_index(self, xi):
        return xi.long()


M0 = torch.tensor([0.5, -0.3, 0.2])
_A = torch.tensor([[1.0, 0.4, 0.0], [0.0, 1.0, 0.5], [0.3, 0.0, 1.0]])
S0 = 0.5 * _A @ _A.T + 0.2 * torch.eye(3)
GM_WEIGHTS = torch.tensor([0.35, 0.45, 0.2])
GM_LOCS = torch.tensor([[-2.0, 0.5], [2.0, -0.3], [0.0, 3.0]])
GM_COVS = torch.stack(
    [
        torch.tensor([[0.5, 0.15], [0.15, 0.3]]),
        torch.tensor([[0.4, -0.1], [-0.1, 0.35]]),
        0.3 * torch.eye(2),
    ]
)


@functools.cache
def case(name: str) -> dict:
    """Experiments (source and diffusion view), data and reference samplers of a case."""
    if name.startswith("gauss"):
        noise = 0.05 if name == "gauss-sharp" else 0.5
        gauss = priors.analytic.Gaussian(M0, S0)
        source, diffusion = gauss, gauss.as_diffusion()
        designs, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -0.4]])
        box = bed.Box([0.0, 0.0], [2.0, 2.0])
    else:
        noise = 0.3
        source = diffusion = priors.analytic.GaussianMixture(
            GM_WEIGHTS, GM_LOCS, GM_COVS, ode_steps=10
        )
        designs, y = torch.tensor([[1.0]]), torch.tensor([[0.2]])
        box = bed.Box([0.0], [1.0])
    exps = {
        "source": bed.Experiment(source, Coordinates(noise), box),
        "diffusion": bed.Experiment(diffusion, Coordinates(noise), box),
    }

    def exact(n: int, generator: torch.Generator) -> torch.Tensor:
        return bed.condition(
            exps["diffusion"], designs, y, "exact", n, generator=generator
        ).samples

    out = {"exps": exps, "designs": designs, "y": y, "exact": exact, "snis": exact}
    info = bed.condition(exps["diffusion"], designs, y, "exact", 1, generator=torch.Generator())
    if name == "mixture":
        out["mode_weight"] = float(info.diagnostics["weights"][0])  # the theta_0 < 0 mode
        out["snis"] = _snis_sampler(exps["source"], designs, y)
    return out


def _snis_sampler(exp, designs, y, pool: int = 200_000):
    """Draws from SNIS on the prior's discretised map: z ~ N(0, I), weights p(y | push(z))."""
    z = torch.randn(pool, 2, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        theta = exp.prior.push(z)  # (pool, 2)
    log_w = exp.log_likelihood(theta, designs, y)  # (pool,)
    w = (log_w - log_w.logsumexp(0)).exp()
    assert 1.0 / float(w.pow(2).sum()) > 0.2 * pool  # plenty of effective draws

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        return theta[torch.multinomial(w, n, replacement=True, generator=generator)]

    return sample


# method -> (prior view, options); per-case overrides below
METHODS = {
    # one draw per chain: on the sharp case ESS moves ~0.05 per step along the wide direction,
    # so 8 draws of 500 chains were strongly correlated (bulk ESS 334 of 4000, SW_ratio 1.61
    # at seed 2); 4000 chains give independent draws (0.89-1.06 over seeds 2-4)
    "ess": ("source", {"num_chains": NUM_SAMPLES, "warmup": 300}),
    # the defaults: gradient-twisted ("tds") proposals, "variance" tempering (Normal likelihood)
    "smc": ("diffusion", {"num_particles": 16_000, "steps": 100}),
    # one draw per chain per block: 500 chains x 8 kept sweeps
    "fbs": ("diffusion", {"num_chains": BLOCK, "num_particles": 16, "steps": 40, "warmup": 15}),
    "nuts": ("source", {"num_chains": 4, "warmup": 150, "full_mass": True}),
}
# mixture: chains must move mass between the modes; warmup 60 gave SW_ratio 1.65 (mode weight
# +0.016) at seed 2, warmup 150 gives 1.06 (-0.001); each step costs 10 Heun steps
# FBS on the mixture: chains hop between modes rarely, so 8 kept sweeps of 500 chains hold
# about 500 independent draws and the mode weight carries their Monte Carlo error (SW_ratio
# 1.42 / 1.59 at seeds 3 / 4; a longer warm-up did not help: 1.59 / 0.97 at warm-up 40);
# one draw from each of 4000 chains gives 1.34 / 1.19 (about 50 s)
# SMC on the mixture: bootstrap proposals. The tds proposal overshoots where the twist is
# steep (between the modes): with "snr" tempering the mode weight was off by up to 0.09
# (seeds 0-3); with "variance" tempering by 0.037 / 0.001 at seeds 1 / 2 (SW_ratio 1.07 /
# 1.09), bootstrap 0.007 / 0.008 (1.16 / 1.30)
OVERRIDES = {
    ("ess", "mixture"): {"warmup": 150},
    ("smc", "mixture"): {"twist": "bootstrap"},
    ("fbs", "mixture"): {"num_chains": NUM_SAMPLES},
}

BATTERY = [
    pytest.param("gauss", "ess"),
    pytest.param("gauss-sharp", "ess"),
    pytest.param("mixture", "ess", marks=pytest.mark.slow),
    pytest.param("gauss", "smc"),
    # The sharp case failed with "snr" tempering (SW_ratio 2.5-10.5 over seeds 0-2, either
    # twist: the twist was too sharp at mid times, the sampler resampled at half of the steps
    # and the genealogy collapsed). "variance" tempering adds the spread of x0 | x_t to the
    # noise: 0.94 / 1.10 at seeds 1 / 2 with one resampling event.
    pytest.param("gauss-sharp", "smc"),
    pytest.param("mixture", "smc"),
    pytest.param("gauss", "fbs", marks=pytest.mark.slow),
    pytest.param("gauss-sharp", "fbs", marks=pytest.mark.slow),
    pytest.param("mixture", "fbs", marks=pytest.mark.slow),
    # NUTS: a cross-check on the moderate Gaussian only, 1000 draws (4 chains). On the sharp
    # case its trees are deep (66 s for 4000 draws), and on the mixture every gradient
    # backpropagates through the ODE map while 4 chains cannot be trusted to weigh two modes.
    pytest.param("gauss", "nuts", marks=pytest.mark.slow),
]


def _shuffled(samples: torch.Tensor) -> torch.Tensor:
    """Rows in a fixed random order, so each block is a random subset of the output
    (systematic resampling and the chain-major layout of MCMC output are ordered)."""
    perm = torch.randperm(samples.shape[0], generator=torch.Generator().manual_seed(0))
    return samples[perm.to(samples.device)]


@pytest.mark.parametrize("case_name, method", BATTERY)
def test_exact_posterior(case_name, method, record_property):
    c = case(case_name)
    view, options = METHODS[method]
    options = {**options, **OVERRIDES.get((method, case_name), {})}
    num = 2 * BLOCK if method == "nuts" else NUM_SAMPLES
    post = bed.condition(
        c["exps"][view],
        c["designs"],
        c["y"],
        method,
        num,
        generator=torch.Generator().manual_seed(1),
        **options,
    )
    x = _shuffled(post.samples)
    assert x.shape == (num,) + tuple(c["exps"][view].event_shape) and torch.isfinite(x).all()
    # ESS-Flow on the mixture is exact for the discretised map: SNIS on the same map
    reference = c["snis"] if (method, case_name) == ("ess", "mixture") else c["exact"]
    ratio = sw_ratio(x, reference, block_size=BLOCK)
    record_property("sw_ratio", ratio)
    print(f"\nSW_ratio[{case_name}, {method}] = {ratio:.3f}")
    assert ratio <= THRESHOLD, ratio
    if "mode_weight" in c:
        weight = float((x[:, 0] < 0).double().mean())
        assert abs(weight - c["mode_weight"]) < 0.05, (weight, c["mode_weight"])


@pytest.mark.parametrize(
    "case_name, tempering",
    [("gauss", "none"), ("mixture", "none"), ("gauss-sharp", "variance"), ("mixture", "variance")],
)
def test_dps_error_is_measured(case_name, tempering, record_property):
    """DPS is biased: its SW_ratio is recorded, not thresholded. (Plain DPS diverges on
    ``gauss-sharp``: var_k * curvature of log p(y | x0_hat) exceeds 2 at mid times and the
    particles reach ~1e18; with ``tempering="variance"`` it measured 0.83 there, 3.50 on the
    mixture.)"""
    c = case(case_name)
    post = bed.condition(
        c["exps"]["diffusion"],
        c["designs"],
        c["y"],
        "dps",
        NUM_SAMPLES,
        generator=torch.Generator().manual_seed(1),
        steps=100,
        tempering=tempering,
    )
    x = _shuffled(post.samples)
    assert torch.isfinite(x).all()
    ratio = sw_ratio(x, c["exact"], block_size=BLOCK)
    record_property("sw_ratio", ratio)
    print(f"\nSW_ratio[{case_name}, dps, {tempering}] = {ratio:.3f}")
    assert ratio > 0


def test_metric():
    """SW is 0 between identical samples, symmetric, and exact draws have SW_ratio near 1."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 3, generator=g), torch.randn(300, 3, generator=g) + 1.0
    proj = lambda: torch.Generator().manual_seed(5)
    assert float(sliced_wasserstein(x, x, 50, proj())) == 0.0
    d = sliced_wasserstein(x, y, 50, proj())
    assert float(d) == pytest.approx(float(sliced_wasserstein(y, x, 50, proj())))
    assert 0.3 < float(d) < 1.2  # E|<u, 1>| for u uniform on S^2 is sqrt(3) / 2
    with pytest.raises(ValueError, match="same number"):
        sliced_wasserstein(x, y[:10])
    c = case("mixture")
    exact = c["exact"](NUM_SAMPLES, torch.Generator().manual_seed(7))
    assert 0.6 < sw_ratio(exact, c["exact"], block_size=BLOCK) < 1.45
    with pytest.raises(ValueError, match="block_size"):
        sw_ratio(exact, c["exact"], block_size=333)
