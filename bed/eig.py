"""Expected information gain: nested Monte Carlo, the sPCE lower bound and the sNMC upper bound.

For a batch of designs ``xi`` (each a `q x d` block of ``q`` measurements taken jointly) and
samples ``theta_0, ..., theta_{N-1}`` of the current belief (the prior at step 0, posterior
samples later), every estimator draws outcomes ``y_n ~ p(y | theta_n, xi)`` for ``M`` outer
samples and contrasts them with ``L`` other belief samples ``theta_l``:

.. math::

    \\mathrm{sPCE} = \\frac{1}{M}\\sum_n \\log \\frac{p(y_n|\\theta_n,\\xi)}
        {\\frac{1}{L+1}\\sum_{l=0}^{L} p(y_n|\\theta_{n,l},\\xi)}, \\quad
    \\mathrm{sNMC} = \\frac{1}{M}\\sum_n \\log \\frac{p(y_n|\\theta_n,\\xi)}
        {\\frac{1}{L}\\sum_{l=1}^{L} p(y_n|\\theta_{n,l},\\xi)},

with ``theta_{n,0} = theta_n`` and ``theta_{n,l}`` (``l >= 1``) distinct belief samples other than
``theta_n``. sPCE is a lower bound on the EIG (it never exceeds ``log(L + 1)``), sNMC an upper
bound; both tighten at rate ``O(1/L)``. NMC (pyro.contrib.oed's ``nmc_eig``) is the sNMC formula,
so ``nmc`` and ``snmc`` compute the same quantity. ``log p`` of a joint design sums over its ``q``
measurements.

Contrasts are shared: one pool of ``L + 1`` belief samples serves every outer sample (each outer
sample leaves itself, or one spare pool member, out, so each sees exactly ``L`` contrasts
distinct from itself). This costs ``b (M + L + 1) q`` likelihood constructions and ``b M (L + 1) q``
log-density evaluations. The standard error is the standard deviation of the ``M`` outer terms
over ``sqrt(M)``; shared contrasts make it slightly optimistic.

Outcomes are reparameterized (``y = loc + scale * eps`` for Normal, MultivariateNormal,
Independent and transformed Normal likelihoods, ``rsample`` otherwise), so gradients reach the
design.

References:
    Foster et al., A Unified Stochastic Gradient Approach to Designing Bayesian-Optimal
    Experiments, AISTATS 2020, https://arxiv.org/abs/1911.00294.
    Foster et al., Deep Adaptive Design, ICML 2021, https://arxiv.org/abs/2103.02438.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pyro.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions import Normal as _TorchNormal

from bed.experiment import Experiment

__all__ = ["EIGBounds", "gaussian", "gaussian_terms", "nmc", "pce", "snmc", "total"]

#: Default cap on the number of log-density entries evaluated in one chunk (``2**24`` entries is
#: 64 MiB per float32 temporary; peak memory is a small multiple of that).
MAX_ELEMENTS = 2**24

#: Entries per block in the Normal fast path: small enough (2 MiB of float64) to stay in cache,
#: which matters more than vectorizing over more designs at once.
CACHE_ELEMENTS = 2**18

_NORMALS = (Normal, _TorchNormal)


class EIGBounds(NamedTuple):
    """Whole-trajectory EIG bounds over ``R`` rollouts, each a `()` tensor."""

    spce: Tensor
    spce_se: Tensor
    snmc: Tensor
    snmc_se: Tensor


# ----------------------------------------------------------------------------- helpers


def check_designs(exp: Experiment, designs: Tensor, site: str = "designs") -> Tensor:
    """Return ``designs`` if it is a `b x q x d` tensor inside ``exp.design_space``."""
    designs = torch.as_tensor(designs)
    d = exp.design_dim
    if designs.dim() != 3 or designs.shape[-1] != d:
        raise ValueError(
            f"{site}: expected a b x q x {d} tensor (design dimension {d}), "
            f"got shape {tuple(designs.shape)}"
        )
    exp.design_space.check(designs, site)
    return designs


def check_belief(exp: Experiment, theta: Tensor, site: str = "theta") -> Tensor:
    """Return ``theta`` if it is an `N x *event_shape` tensor of belief samples, ``N >= 2``."""
    theta = torch.as_tensor(theta)
    event = tuple(exp.event_shape)
    if theta.dim() != len(event) + 1 or tuple(theta.shape[1:]) != event:
        raise ValueError(
            f"{site}: expected N x {' x '.join(map(str, event)) or '()'} belief samples "
            f"(event shape {event}), got shape {tuple(theta.shape)}"
        )
    if theta.shape[0] < 2:
        raise ValueError(f"{site}: need at least 2 belief samples, got {theta.shape[0]}")
    return theta


def contrast_indices(
    num_samples: int,
    num_outer: int,
    num_inner: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Outer indices, a shared contrast pool and the mask of each outer sample's contrasts.

    Args:
        num_samples: ``N``, the number of belief samples.
        num_outer: ``M <= N`` outer samples.
        num_inner: ``L <= N - 1`` contrasts per outer sample.
        generator: randomness for the subsets.
        device: where the returned tensors live.

    Returns:
        ``outer`` (`M`), ``pool`` (`K`, ``K = L + 1``) indices into the samples, and ``valid``
        (`M x K` bool): ``valid[n, k]`` marks ``pool[k]`` as a contrast of ``outer[n]``; every row
        has exactly ``L`` entries, none of them ``outer[n]`` itself.
    """
    n, m, l = num_samples, num_outer, num_inner
    if not 1 <= m <= n:
        raise ValueError(f"num_outer: expected 1 <= num_outer <= N = {n}, got {m}")
    if not 1 <= l <= n - 1:
        raise ValueError(
            f"num_inner: expected 1 <= num_inner <= N - 1 = {n - 1} (contrasts are other "
            f"belief samples; pass more samples for more contrasts), got {l}"
        )
    outer = torch.arange(n) if m == n else torch.randperm(n, generator=generator)[:m]
    pool = torch.arange(n) if l + 1 == n else torch.randperm(n, generator=generator)[: l + 1]
    own = outer[:, None] == pool[None, :]  # (M, K)
    spare = torch.zeros_like(own)
    spare[:, -1] = ~own.any(-1)  # rows that do not meet themselves drop the last pool member
    valid = ~(own | spare)  # (M, K), L True per row
    return outer.to(device), pool.to(device), valid.to(device)


def standard_noise(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Standard-normal base noise of ``shape`` with ``like``'s device and dtype."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def reparam_sample(lik: Distribution, eps: Tensor, seed: int = 0) -> Tensor:
    """Draw ``y ~ lik`` as a differentiable function of standard-normal base noise ``eps``.

    ``eps`` has shape `(*batch_tail, *event)` and broadcasts against ``lik``'s batch shape, so one
    noise draw serves every design of a batch (common random numbers). Likelihoods that are not
    (transformed) Normals fall back to ``rsample`` (or ``sample`` if not reparameterizable) under
    ``torch.manual_seed(seed)``; then the noise is fixed only for a fixed batch layout.
    """
    if isinstance(lik, Independent):
        return reparam_sample(lik.base_dist, eps, seed)
    if isinstance(lik, Normal):
        return lik.loc + lik.scale * eps
    if isinstance(lik, MultivariateNormal):
        return lik.loc + (lik.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(lik, TransformedDistribution) and isinstance(
        lik.base_dist, (Normal, Independent, MultivariateNormal)
    ):
        y = reparam_sample(lik.base_dist, eps, seed)
        for t in lik.transforms:
            y = t(y)
        return y
    devices = [eps.device] if eps.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return lik.rsample() if lik.has_rsample else lik.sample()


def _contrast_lse(
    exp: Experiment,
    designs: Tensor,
    theta_out: Tensor,
    theta_pool: Tensor,
    eps: Tensor,
    valid: Tensor,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """``log p(y_n | theta_n)`` and ``logsumexp`` over each outer sample's contrasts, `(b, M)`.

    ``designs`` is `b x q x d`, ``theta_out`` `M x *event`, ``theta_pool`` `K x *event`, ``eps``
    `M x q x *obs` and ``valid`` the `M x K` contrast mask.
    """
    # theta_out (1, M, 1, *event) with designs (b, 1, q, d) -> likelihood batch (b, M, q)
    t_out = theta_out.reshape((1, -1, 1) + theta_out.shape[1:])
    lik_out = exp.likelihood(t_out, designs.unsqueeze(1))
    y = reparam_sample(lik_out, eps, seed)  # (b, M, q, *obs)
    lp_out = lik_out.log_prob(y).sum(-1)  # (b, M)
    # theta_pool (1, 1, K, 1, *event) with designs (b, 1, 1, q, d) -> batch (b, 1, K, q)
    t_pool = theta_pool.reshape((1, 1, -1, 1) + theta_pool.shape[1:])
    lik_pool = exp.likelihood(t_pool, designs[:, None, None])
    base = lik_pool.base_dist if isinstance(lik_pool, Independent) else lik_pool
    if type(base) in _NORMALS:  # exact Normal classes only: subclasses may change log_prob
        return lp_out, _normal_contrast_lse(base, y, lp_out, valid)
    lp_pool = lik_pool.log_prob(y.unsqueeze(2)).sum(-1)  # (b, M, K): y (b, M, 1, q, *obs)
    mask = torch.where(valid, 0.0, -math.inf).to(lp_pool)  # (M, K)
    return lp_out, torch.logsumexp(lp_pool + mask, dim=-1)


def _normal_contrast_lse(lik: Normal, y: Tensor, lp_out: Tensor, valid: Tensor) -> Tensor:
    """Fast path for Normal likelihoods: all ``log p(y_n | theta_k)`` as one batched matmul.

    ``log N(y; mu, s^2) = -y^2 / (2 s^2) + y mu / s^2 - mu^2 / (2 s^2) - log s - log(2 pi) / 2``
    is bilinear in features of ``y`` and of ``(mu, s)``, so the `b x M x K` table is
    ``phi(y) @ psi(mu, s)^T`` summed over the ``F = q * obs`` measurements. It is formed in
    float64 after centering ``y`` and ``mu`` per design (to avoid cancellation), then reduced
    with logsumexp over the valid contrasts. ``lik`` has batch shape `(b, 1, K, q, *obs)`.
    """
    b, m = lp_out.shape
    k = valid.shape[1]
    shape = torch.broadcast_shapes(lik.loc.shape, lik.scale.shape)  # (b, 1, K, q, *obs)
    shape = (b, 1, k) + shape[3:]
    loc = lik.loc.expand(shape).reshape(b, k, -1).double()  # (b, K, F)
    scale = lik.scale.expand(shape).reshape(b, k, -1).double()  # (b, K, F)
    yf = y.reshape(b, m, -1).double()  # (b, M, F)
    center = loc.mean(1, keepdim=True)  # (b, 1, F)
    yc, mc = yf - center, loc - center
    prec = scale.pow(-2)
    phi = torch.cat([yc.pow(2), yc, torch.ones_like(yc[..., :1])], dim=-1)  # (b, M, 2F + 1)
    const = (-0.5 * mc.pow(2) * prec - scale.log()).sum(-1, keepdim=True)  # (b, K, 1)
    const = const - 0.5 * yf.shape[-1] * math.log(2 * math.pi)
    psi = torch.cat([-0.5 * prec, mc * prec, const], dim=-1)  # (b, K, 2F + 1)
    invalid = ~valid
    chunk = max(1, CACHE_ELEMENTS // (m * k))  # designs per cache-sized block
    out = []
    for start in range(0, b, chunk):
        lp = torch.bmm(phi[start : start + chunk], psi[start : start + chunk].mT)  # (c, M, K)
        lp.masked_fill_(invalid, -math.inf)  # bmm's backward does not need its output
        out.append(torch.logsumexp(lp, dim=-1))  # (c, M)
    return torch.cat(out).to(lp_out)  # (b, M)


def eig_terms(
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    outer: Tensor,
    pool: Tensor,
    valid: Tensor,
    estimator: str,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    max_elements: int = MAX_ELEMENTS,
) -> Tensor:
    """Per-outer-sample terms `(b, M)` of an estimator, chunked over designs.

    The chunk holds at most ``max(1, max_elements // (M K q obs))`` designs, so the largest
    log-density tensor has about ``max_elements`` entries (plus one design's worth).
    """
    b, q = designs.shape[:2]
    m, k = valid.shape
    num_inner = int(valid[0].sum())
    theta_out, theta_pool = theta[outer], theta[pool]  # (M, *event), (K, *event)
    if eps is None:  # draw the base noise once, shared by every chunk
        probe = exp.likelihood(theta_out[:1], designs[0, :1])
        obs = tuple(probe.event_shape)
        eps = standard_noise((m, q) + obs, designs, generator)
    per_design = m * k * q * max(1, math.prod(eps.shape[2:]))
    chunk = max(1, max_elements // per_design)
    out = []
    for start in range(0, b, chunk):
        lp_out, lse = _contrast_lse(
            exp, designs[start : start + chunk], theta_out, theta_pool, eps, valid, seed
        )  # (c, M) each; lse over the L contrasts
        if estimator == "pce":
            lse = torch.logaddexp(lse, lp_out)  # theta_n joins its own contrastive set
            out.append(lp_out - lse + math.log(num_inner + 1))
        else:
            out.append(lp_out - lse + math.log(num_inner))
    return torch.cat(out, dim=0)  # (b, M)


def _estimate(
    estimator: str,
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    num_inner: int | None,
    num_outer: int | None,
    generator: torch.Generator | None,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    theta = check_belief(exp, theta, "theta")
    designs = check_designs(exp, designs, "designs").to(theta)
    n = theta.shape[0]
    num_outer = n if num_outer is None else int(num_outer)
    num_inner = n - 1 if num_inner is None else int(num_inner)
    outer, pool, valid = contrast_indices(n, num_outer, num_inner, generator, theta.device)
    terms = eig_terms(
        exp, designs, theta, outer, pool, valid, estimator, None, generator, 0, max_elements
    )  # (b, M)
    se = terms.std(-1) / math.sqrt(num_outer) if num_outer > 1 else torch.zeros_like(terms[:, 0])
    return terms.mean(-1), se


_ARGS_DOC = """
    Args:
        exp: the experiment (its ``likelihood`` and ``design_space`` are used).
        designs: a `b x q x d` tensor: ``b`` candidate designs of ``q`` joint measurements.
        theta: an `N x *event_shape` tensor of samples of the current belief.
        num_inner: ``L <= N - 1`` contrastive samples per outer sample (default ``N - 1``).
        num_outer: ``M <= N`` outer samples (default ``N``, all of them).
        generator: randomness for the sample subsets and the outcome noise.
        max_elements: chunk the designs so that one log-density tensor holds about this many
            entries (memory bound).

    Returns:
        ``(estimate, stderr)``, each a `b` tensor.
"""


def pce(
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    num_inner: int | None = None,
    num_outer: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    return _estimate("pce", exp, designs, theta, num_inner, num_outer, generator, max_elements)


def snmc(
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    num_inner: int | None = None,
    num_outer: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    return _estimate("snmc", exp, designs, theta, num_inner, num_outer, generator, max_elements)


def nmc(
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    num_inner: int | None = None,
    num_outer: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    return _estimate("nmc", exp, designs, theta, num_inner, num_outer, generator, max_elements)


pce.__doc__ = (
    "The sPCE lower bound on the EIG of each joint design (theta_n joins its contrasts).\n"
    + _ARGS_DOC
    + """
    Example:
        >>> import priors, pyro.distributions as dist
        >>> from bed import Box, Experiment
        >>> exp = Experiment(priors.analytic.Gaussian(torch.zeros(1), torch.eye(1)),
        ...                  lambda t, x: dist.Normal(t[..., 0] * x[..., 0], 1.0), Box([0.], [2.]))
        >>> est, se = pce(exp, torch.ones(3, 1, 1), exp.prior.sample((100,)), num_inner=50)
        >>> est.shape, bool((est <= math.log(51)).all())
        (torch.Size([3]), True)
"""
)
snmc.__doc__ = (
    "The sNMC upper bound on the EIG of each joint design (contrasts exclude theta_n).\n"
    + _ARGS_DOC
)
nmc.__doc__ = (
    "Nested Monte Carlo EIG (pyro.contrib.oed's ``nmc_eig``; the same formula as ``snmc``),\n"
    "biased upward by ``O(1/L)``.\n" + _ARGS_DOC
)


# ----------------------------------------------------------------------------- Gaussian bound
def normal_parts(lik: Distribution) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of a likelihood with independent Normal coordinates (``Normal``, or an
    ``Independent`` of one), else a ValueError naming the type."""
    base = lik.base_dist if isinstance(lik, Independent) else lik
    if not isinstance(base, _NORMALS):
        raise TypeError(
            "eig.gaussian: needs a likelihood with independent Normal coordinates (Normal or "
            f"Normal(...).to_event(k)), got {type(lik).__name__}; use pce or nmc instead"
        )
    return base.loc, base.scale


def gaussian_terms(exp: Experiment, designs: Tensor, theta: Tensor) -> Tensor:
    """The moment-matched Gaussian EIG of each joint design, a `b` tensor (see ``gaussian``)."""
    n, b = theta.shape[0], designs.shape[0]
    event = tuple(exp.event_shape)
    th = theta.reshape((n, 1, 1) + event)  # (N, 1, 1, *event)
    loc, scale = normal_parts(exp.likelihood(th, designs[None]))  # (N, b, q, *obs)
    shape = torch.broadcast_shapes(loc.shape, scale.shape)
    loc = loc.expand(shape).reshape(n, b, -1)
    var = scale.pow(2).expand(shape).reshape(n, b, -1)
    m = loc.shape[-1]  # q * prod(obs_shape)
    centred = loc - loc.mean(0)  # (N, b, m)
    cov = torch.einsum("nbi,nbj->bij", centred, centred) / (n - 1)  # (b, m, m)
    cov = cov + torch.diag_embed(var.mean(0))  # + E[Cov(y | theta)]
    h_marginal = 0.5 * torch.linalg.slogdet(cov).logabsdet + 0.5 * m * math.log(
        2 * math.pi * math.e
    )
    h_conditional = (0.5 * (2 * math.pi * math.e * var).log().sum(-1)).mean(0)  # (b,)
    return h_marginal - h_conditional


def gaussian(
    exp: Experiment,
    designs: Tensor,
    theta: Tensor,
    num_inner: int | None = None,
    num_outer: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Moment-matched Gaussian EIG: ``H[N(Cov y)] - E_theta H[y | theta]``.

    For likelihoods with independent Normal coordinates, ``H[y | theta]`` is exact and a
    Gaussian has the largest entropy for a given covariance, so this is an *upper bound* on the
    EIG (up to the Monte Carlo error of the covariance ``Cov_theta(E[y | theta]) +
    E_theta[Cov(y | theta)]`` from the belief samples), and exact for linear-Gaussian models
    with a Gaussian belief. Unlike ``pce`` (capped at ``log(L + 1)``) it does not saturate on
    very informative measurements, e.g. a 16-pixel image patch with small noise, where every
    candidate's sPCE sits at its cap and cannot rank them.
    """
    theta = check_belief(exp, theta, "theta")
    designs = check_designs(exp, designs, "designs").to(theta)
    est = gaussian_terms(exp, designs, theta)
    return est, torch.zeros_like(est)


gaussian.__doc__ += (
    _ARGS_DOC
    + "    ``num_inner``, ``num_outer``, ``generator`` and ``max_elements`` are accepted for a\n"
    "    common signature and unused; the standard error is reported as 0.\n"
)


# ----------------------------------------------------------------------------- trajectories


@torch.no_grad()
def total(
    exp: Experiment,
    designs: Tensor,
    observations: Tensor,
    theta_true: Tensor,
    num_inner: int,
    contrasts: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> EIGBounds:
    """Score finished runs: sPCE and sNMC bounds on the total EIG of whole trajectories.

    Rollout ``r`` was generated by ``theta_true[r]`` (a prior draw) and holds ``T`` designs and
    outcomes ``h_r``; with ``log p(h_r | theta) = sum_t log p(y_rt | theta, xi_rt)`` and ``L``
    fresh prior samples ``theta_l`` (shared by all rollouts),

    .. math::

        \\mathrm{sPCE} = \\frac{1}{R}\\sum_r \\log\\frac{p(h_r|\\theta_r)}
            {\\frac{1}{L+1}[p(h_r|\\theta_r) + \\sum_l p(h_r|\\theta_l)]},\\quad
        \\mathrm{sNMC} = \\frac{1}{R}\\sum_r \\log\\frac{p(h_r|\\theta_r)}
            {\\frac{1}{L}\\sum_l p(h_r|\\theta_l)}.

    The contrasts are processed in chunks of about ``max_elements / (R T)`` samples with a running
    logsumexp, so ``L = 5e5`` fits in memory on a CPU.

    Args:
        exp: the experiment; contrasts come from ``exp.prior``.
        designs: `R x T x d` designs of ``R`` rollouts.
        observations: `R x T x *obs_shape` outcomes.
        theta_true: `R x *event_shape`, the parameter that generated each rollout.
        num_inner: ``L``, the number of contrastive prior samples.
        contrasts: optional `L x *event_shape` prior samples to use instead of fresh draws.
        generator: randomness for the contrastive draws (for ``GenerativePrior`` priors).
        max_elements: entries of the largest log-density tensor per chunk.

    Returns:
        ``EIGBounds(spce, spce_se, snmc, snmc_se)``; standard errors are over the ``R`` rollouts.
    """
    theta_true = torch.as_tensor(theta_true)
    event = tuple(exp.event_shape)
    if theta_true.dim() != len(event) + 1 or tuple(theta_true.shape[1:]) != event:
        raise ValueError(
            f"theta_true: expected R x {' x '.join(map(str, event)) or '()'} (event shape "
            f"{event}), got shape {tuple(theta_true.shape)}"
        )
    r = theta_true.shape[0]
    designs = torch.as_tensor(designs).to(theta_true)
    observations = torch.as_tensor(observations).to(theta_true)
    if designs.dim() != 3 or designs.shape[0] != r or designs.shape[-1] != exp.design_dim:
        raise ValueError(
            f"designs: expected R x T x d = {r} x T x {exp.design_dim}, "
            f"got shape {tuple(designs.shape)}"
        )
    t = designs.shape[1]
    if tuple(observations.shape[:2]) != (r, t):
        raise ValueError(
            f"observations: expected shape ({r}, {t}, *obs_shape) to match designs, "
            f"got {tuple(observations.shape)}"
        )
    if contrasts is not None:
        contrasts = check_belief(exp, torch.as_tensor(contrasts).to(theta_true), "contrasts")
        num_inner = contrasts.shape[0]
    num_inner = int(num_inner)
    if num_inner < 1:
        raise ValueError(f"num_inner: expected a positive number of contrasts, got {num_inner}")

    def log_p(theta: Tensor) -> Tensor:  # theta (R or 1, C, *event) -> (R, C)
        lik = exp.likelihood(theta.unsqueeze(2), designs.unsqueeze(1))  # batch (R, C, T)
        return lik.log_prob(observations.unsqueeze(1)).reshape(r, theta.shape[1], -1).sum(-1)

    lp0 = log_p(theta_true.unsqueeze(1))[:, 0]  # (R,)
    obs_numel = max(1, math.prod(observations.shape[2:]))
    chunk = max(1, max_elements // max(1, r * t * obs_numel))
    acc = torch.full_like(lp0, -math.inf)  # running logsumexp over contrasts, (R,)
    for start in range(0, num_inner, chunk):
        c = min(chunk, num_inner - start)
        if contrasts is not None:
            th = contrasts[start : start + c]
        elif generator is not None and hasattr(exp.prior, "sample_with_generator"):
            th = exp.prior.sample_with_generator((c,), generator)
        else:
            th = exp.prior.sample((c,))
        acc = torch.logaddexp(acc, log_p(th.to(theta_true).unsqueeze(0)).logsumexp(-1))
    snmc_terms = lp0 - acc + math.log(num_inner)  # (R,)
    spce_terms = lp0 - torch.logaddexp(acc, lp0) + math.log(num_inner + 1)  # (R,)

    def se(x: Tensor) -> Tensor:
        return x.std() / math.sqrt(r) if r > 1 else x.new_zeros(())

    return EIGBounds(spce_terms.mean(), se(spce_terms), snmc_terms.mean(), se(snmc_terms))
