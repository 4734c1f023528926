r"""Feynman-Kac SMC for diffusion priors with an explicit likelihood (methods.md section 6).

Particles run the prior's reverse diffusion (Euler-Maruyama on the grid
``prior.time_grid(steps)``, ``t_0 = T > t_1 > ... > t_K = t_min``) from the reference law
``x_{t_0} ~ N(mu, lam^2 I)``. The model path is exactly the one ``DiffusionPrior.sample`` draws:
Gaussian Euler kernels :math:`p(x_{k+1} \mid x_k) = N(m_k(x_k), \sigma_k^2 I)` with
:math:`m_k(x) = x - h_k [f(x, t_k) - g(t_k)^2 s(x, t_k)]`, :math:`\sigma_k^2 = g(t_k)^2 h_k`,
:math:`h_k = t_k - t_{k+1}`, and a noiseless last step :math:`x_K = m_{K-1}(x_{K-1})`.

Twisting functions (Algorithm 4.1 of the review; TDS of Wu et al. 2023):

.. math::
    l_k(x) = p(y \mid \hat x_0(x, t_k))^{\lambda_k} \ (k < K), \qquad l_K(x) = p(y \mid x),

with Tweedie's :math:`\hat x_0 = \mu + (x - \mu + \sigma_t^2 s(x, t))/\alpha_t`,
:math:`p(y \mid \theta) = \prod_i p(y_i \mid \theta, \xi_i)` (``exp.log_likelihood``) and a
tempering exponent :math:`\lambda_k`: 1 for plain TDS (``tempering="none"``);
:math:`\lambda_k = \alpha_{t_k}^2` (``"snr"``, the signal fraction
:math:`\mathrm{SNR}/(1 + \mathrm{SNR})` of the VP SDE); or, for Normal likelihoods, one
exponent per observed element, :math:`\lambda_{k,e} = \min(\alpha_{t_k}^2, s_e^2 / (s_e^2 +
v_{t_k}))` with :math:`s_e^2` the noise variance and :math:`v_t` the variance of :math:`x_0`
given :math:`x_t` (``"variance"``, the default through ``"auto"``; see :class:`TweedieTwist`). Why:
:math:`p(y \mid \hat x_0)` ignores the spread of :math:`x_0` given :math:`x_t`, so at mid times
it is far sharper than :math:`p(y \mid x_t)`; resampling on it then discards particles whose
later weights would be large, and the estimator's finite-N error is large (measured on the
linear-Gaussian test: a posterior-mean error of several posterior standard errors with 4000
particles, and a log-evidence off by 0.5-1 nat). Tempering flattens the twist where it is least
reliable; ``"variance"`` flattens it by the right amount for Gaussian observations, which
matters most for sharp likelihoods (``"snr"`` ignores the noise level). The
proposal ``M_k`` is the Euler kernel shifted by :math:`\sigma_k^2 \nabla \log l_k(x_k)` (twist
``"tds"``, gradient through the network by autograd) or the Euler kernel itself (``"bootstrap"``:
model proposals, Tweedie twist, no gradients), and the incremental weights are

.. math::
    G_0 = l_0(x_0), \qquad
    G_{k+1} = \frac{l_{k+1}(x_{k+1})\, p(x_{k+1} \mid x_k)}{l_k(x_k)\, M_k(x_{k+1} \mid x_k)}.

The product telescopes to :math:`p(y \mid x_K)` times the model's path density over the
proposal's, so the weighted particles target ``p_model(x_K) p(y | x_K)`` for any twist: the
twist changes only the variance (asymptotically exact as the particle number grows; the bias
left is the prior's own Euler discretisation). Resampling (systematic or multinomial) happens
before a step when the effective sample size falls below ``resample_threshold * N``; a final
resampling returns unweighted draws. The product of the mean incremental weights estimates the
evidence ``log Z = log p_model(y)``.

References:
    Practical and Asymptotically Exact Conditional Sampling in Diffusion Models (Wu, Trippe,
    Naesseth, Blei, Cunningham 2023), https://arxiv.org/abs/2306.17775
    Conditional sampling within generative diffusion models (Zhao, Luo, Sjolund, Schon 2025),
    https://arxiv.org/abs/2409.09650
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from bed.conditioning.base import Posterior, Problem, available_methods, register

__all__ = [
    "SMCInfo",
    "SMCState",
    "TweedieTwist",
    "effective_sample_size",
    "euler_step",
    "init",
    "require_diffusion",
    "resample",
    "run",
    "step",
]

TWISTS = ("tds", "bootstrap")
RESAMPLINGS = ("systematic", "multinomial")
TEMPERINGS = ("snr", "variance", "none")
#: what ``tempering="auto"`` resolves to: "variance" for Normal likelihoods, else "snr"
AUTO = "auto"


def require_diffusion(prior, method: str) -> None:
    """Raise a TypeError unless ``prior`` is a ``priors.diffusion.DiffusionPrior``."""
    from priors.diffusion import DiffusionPrior

    if not isinstance(prior, DiffusionPrior):
        raise TypeError(
            f"condition(method={method!r}) runs the reverse diffusion and needs a "
            f"priors.diffusion.DiffusionPrior (e.g. priors.analytic.GaussianMixture, "
            f"Gaussian.as_diffusion()); got {type(prior).__name__}. Available methods: "
            f"{available_methods()}"
        )


def _flat_sum(v: Tensor, event_dim: int) -> Tensor:
    """Sum `(N, *event)` over the event dims -> `(N,)`."""
    return v.sum(tuple(range(-event_dim, 0))) if event_dim else v


class TweedieTwist:
    r"""The twist :math:`\log l(x, t) = \log p(y \mid \hat x_0(x, t))` and what the step needs.

    Calling it with particles `N x *event` and a 0-d time returns ``(score, log_l, grad)``: the
    prior's score (`N x *event`, detached), :math:`\log l` (`N`) and, when ``guided``,
    :math:`\nabla_x \log l` (`N x *event`, autograd through the network; zeros otherwise).
    One network call per particle; ``num_evals``/``num_vjp`` count network evaluations and
    backward passes (per particle).

    Args:
        prior: the ``DiffusionPrior``.
        loglik_fn: ``theta (N, *event) -> (N,)`` log-likelihood of the data.
        guided: compute the gradient.
        tempering: ``"none"`` (exponent 1), ``"snr"`` (exponent :math:`\alpha_t^2`) or
            ``"variance"``: each Gaussian observation element ``e`` with noise variance
            :math:`s_e^2` gets the exponent
            :math:`\lambda_e = \min(\alpha_t^2, s_e^2 / (s_e^2 + v_t))`, with
            :math:`v_t = \sigma_t^2 c / (\alpha_t^2 c + \sigma_t^2)` the variance of
            :math:`x_0` given :math:`x_t` for data of variance ``c`` (``data_variance``). Up to a
            constant, :math:`N(y; m, s^2)^{\lambda}` is :math:`N(y; m, s^2 / \lambda)`, so the
            second term is the Tweedie twist with the spread of :math:`x_0 \mid x_t` added to
            the noise, exact for an isotropic Gaussian prior and coordinate observations: sharp
            likelihoods (:math:`s^2 \ll v_t`) are flattened at mid times, mild ones barely.
            The cap at the SNR exponent keeps the guided steps stable at the noisiest times,
            where Tweedie's estimate is amplified by :math:`1/\alpha_t` (without it, DPS and
            TDS proposals diverged on digits-16 inpainting, 14 of 16 images).
        elementwise_fn: for ``"variance"``: ``theta (N, *event) -> (log_p (N, E), var (N, E))``,
            the log-density and noise variance of every observed element.
        data_variance: ``c`` for ``"variance"`` (1: the VP SDE's standardised data).
    """

    def __init__(
        self,
        prior,
        loglik_fn: Callable[[Tensor], Tensor],
        guided: bool,
        tempering: str = "none",
        elementwise_fn: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
        data_variance: float = 1.0,
    ) -> None:
        if tempering not in TEMPERINGS:
            raise ValueError(f"smc: tempering must be one of {TEMPERINGS}, got {tempering!r}")
        if tempering == "variance" and elementwise_fn is None:
            raise ValueError("smc: tempering='variance' needs elementwise_fn")
        self.prior, self.loglik_fn, self.guided = prior, loglik_fn, guided
        self.tempering = tempering
        self.elementwise_fn, self.data_variance = elementwise_fn, float(data_variance)
        self.event_dim = len(prior.event_shape)
        self.num_evals = 0
        self.num_vjp = 0

    def denoise(self, x: Tensor, score: Tensor, t: Tensor) -> Tensor:
        r"""Tweedie :math:`\hat x_0 = \mu + (x - \mu + \sigma_t^2 s)/\alpha_t` from a score."""
        alpha, std = self.prior.sde.marginal(t)
        mu = torch.as_tensor(self.prior.sde.mu, device=x.device, dtype=x.dtype)
        return mu + (x - mu + std**2 * score) / alpha

    def exponent(self, t: Tensor) -> Tensor:
        """The tempering exponent at ``t`` (0-d; ``"none"`` and ``"snr"``)."""
        if self.tempering == "none":
            return torch.ones_like(t)
        return self.prior.sde.marginal(t)[0] ** 2

    def log_twist(self, x0_hat: Tensor, t: Tensor) -> Tensor:
        r""":math:`\log l(x, t)` `(N,)` from Tweedie's estimate ``x0_hat`` `(N, *event)`."""
        if self.tempering != "variance":
            return self.exponent(t) * self.loglik_fn(x0_hat)
        log_p, var = self.elementwise_fn(x0_hat)  # (N, E) each
        alpha, std = self.prior.sde.marginal(t)
        c = self.data_variance
        v_t = std**2 * c / (alpha**2 * c + std**2)
        lam = (var / (var + v_t)).clamp_max(alpha**2)  # never above the SNR exponent
        return (lam * log_p).sum(-1)

    def __call__(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.num_evals += x.shape[0]
        if not self.guided:
            score = self.prior.score(x, t)
            log_l = self.log_twist(self.denoise(x, score, t), t)  # (N,)
            return score, log_l, torch.zeros_like(x)
        self.num_vjp += x.shape[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = self.prior.score(x, t)
            log_l = self.log_twist(self.denoise(x, score, t), t)  # (N,)
            if log_l.requires_grad:
                (grad,) = torch.autograd.grad(log_l.sum(), x)
            else:  # the likelihood does not depend on theta (e.g. no data)
                grad = torch.zeros_like(x)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # zero-likelihood points
        return score.detach(), log_l.detach(), grad


def euler_step(prior, x: Tensor, score: Tensor, t: Tensor, t_next: Tensor):
    r"""Mean :math:`m_k(x) = x - h[f(x, t) - g(t)^2 s]` and variance :math:`g(t)^2 h` of the
    reverse Euler kernel from ``t`` to ``t_next < t``; ``x``, ``score`` `N x *event`."""
    h = t - t_next
    g2 = prior.sde.diffusion(t) ** 2
    mean = x - h * (prior.sde.drift(x, t) - g2 * score)
    return mean, g2 * h


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """ESS ``1 / sum(w^2)`` of normalised weights, from `N` unnormalised log-weights."""
    w = (log_weights - log_weights.logsumexp(0)).exp()
    return 1.0 / w.pow(2).sum()


def resample(
    log_weights: Tensor, num: int, scheme: str, generator: torch.Generator | None
) -> Tensor:
    """`num` ancestor indices drawn from the normalised weights (systematic or multinomial)."""
    w = (log_weights - log_weights.logsumexp(0)).exp()
    if scheme == "multinomial":
        return torch.multinomial(w, num, replacement=True, generator=generator)
    u = torch.rand((), generator=generator, device=w.device, dtype=w.dtype)
    points = (u + torch.arange(num, device=w.device, dtype=w.dtype)) / num  # (num,)
    cdf = w.cumsum(0)
    return torch.searchsorted(cdf, points).clamp_max(w.shape[0] - 1)


class SMCState(NamedTuple):
    """Particles at grid index ``k`` (all leading dims `N`, the particle).

    Attributes:
        x: `N x *event` particles at time ``t_k``.
        log_weights: `N` unnormalised log-weights (reset to 0 at resampling).
        log_twist: `N` values of :math:`\\log l_k(x)`.
        score: `N x *event` prior score at ``(x, t_k)``.
        grad_log_twist: `N x *event` :math:`\\nabla \\log l_k` (zeros for ``"bootstrap"``).
        log_normalizer: 0-d, the log-evidence accumulated at past resampling events.
        k: the grid index.
    """

    x: Tensor
    log_weights: Tensor
    log_twist: Tensor
    score: Tensor
    grad_log_twist: Tensor
    log_normalizer: Tensor
    k: int


class SMCInfo(NamedTuple):
    """One SMC step: ``ess`` (0-d, before the resampling decision) and ``resampled`` (0-d)."""

    ess: Tensor
    resampled: Tensor


def init(x: Tensor, twist: TweedieTwist, ts: Tensor) -> SMCState:
    """Particles `N x *event` drawn from the reference law at ``ts[0] = T``; ``G_0 = l_0``."""
    score, log_l, grad = twist(x, ts[0])
    return SMCState(x, log_l.clone(), log_l, score, grad, log_l.new_zeros(()), 0)


def step(
    state: SMCState,
    twist: TweedieTwist,
    ts: Tensor,
    generator: torch.Generator | None = None,
    resample_threshold: float = 0.5,
    resampling: str = "systematic",
) -> tuple[SMCState, SMCInfo]:
    """Resample if needed, move every particle from ``ts[k]`` to ``ts[k + 1]``, reweight.

    Args:
        state: the particles at grid index ``k``.
        twist: the twist (its ``guided`` flag selects the TDS proposal).
        ts: the decreasing `K + 1` time grid.
        generator: source of randomness.
        resample_threshold: resample when ESS < ``resample_threshold * N`` (1: every step;
            0: never).
        resampling: ``"systematic"`` or ``"multinomial"``.

    Returns:
        The particles at ``k + 1`` and an :class:`SMCInfo`.
    """
    x, logw, log_l, score, grad, log_z, k = state
    n = x.shape[0]
    ess = effective_sample_size(logw)
    resampled = bool(ess < resample_threshold * n)
    if resampled:
        idx = resample(logw, n, resampling, generator)
        x, log_l, score, grad = x[idx], log_l[idx], score[idx], grad[idx]
        log_z = log_z + logw.logsumexp(0) - math.log(n)
        logw = torch.zeros_like(logw)
    t, t_next = ts[k], ts[k + 1]
    last = k + 2 == ts.shape[0]
    mean, var = euler_step(twist.prior, x, score, t, t_next)
    ev = twist.event_dim
    if last:  # noiseless last step, as DiffusionPrior.sample: p = M, no proposal correction
        x_new = mean
        log_ratio = torch.zeros_like(logw)
        new_log_l = twist.loglik_fn(x_new)  # l_K: the exact likelihood
        new_score = new_grad = torch.zeros_like(x_new)
    else:
        sigma = var.sqrt()
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_new = mean + var * grad + sigma * eps  # TDS proposal (grad = 0: the model kernel)
        # log p(x'|x) - log M(x'|x) with x' - guided = sigma eps, written without cancellation
        log_ratio = -(sigma * _flat_sum(eps * grad, ev) + 0.5 * var * _flat_sum(grad**2, ev))
        new_score, new_log_l, new_grad = twist(x_new, t_next)
    logw = logw + new_log_l - log_l + log_ratio
    logw = torch.nan_to_num(logw, nan=-math.inf)
    if not torch.isfinite(logw).any():
        raise RuntimeError(
            f"smc.step: all {n} particles have zero weight at step {k + 1} (t={float(t_next):.4g});"
            " the likelihood is zero or NaN along every path. Use more particles, more steps, "
            "or check the likelihood"
        )
    info = SMCInfo(ess, torch.as_tensor(resampled))
    return SMCState(x_new, logw, new_log_l, new_score, new_grad, log_z, k + 1), info


def gaussian_elements(
    exp, designs: Tensor, observations: Tensor
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``theta (N, *event) -> (log_p (N, E), var (N, E))`` for a likelihood with independent
    Normal coordinates: the log-density and noise variance of each of the ``E`` observed
    elements (all designs, all observation coordinates); for ``tempering="variance"``."""
    from bed.eig import normal_parts

    def fn(theta: Tensor) -> tuple[Tensor, Tensor]:
        th = theta.reshape(theta.shape[:1] + (1,) + theta.shape[1:])  # (N, 1, *event)
        loc, scale = normal_parts(exp.likelihood(th, designs))  # (N, n, *obs)
        shape = torch.broadcast_shapes(loc.shape, scale.shape, observations.shape)
        log_p = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(observations)
        n = theta.shape[0]
        return log_p.expand(shape).reshape(n, -1), scale.pow(2).expand(shape).reshape(n, -1)

    return fn


def resolve_tempering(problem: Problem, tempering: str):
    """``(tempering, elementwise_fn)``: ``"auto"`` becomes ``"variance"`` when the likelihood
    has independent Normal coordinates (else ``"snr"``); ``elementwise_fn`` is set for
    ``"variance"`` (a TypeError naming the likelihood if it is not Normal)."""
    if tempering not in TEMPERINGS + (AUTO,):
        raise ValueError(f"tempering must be one of {TEMPERINGS + (AUTO,)}, got {tempering!r}")
    if tempering not in ("variance", AUTO):
        return tempering, None
    fn = gaussian_elements(problem.exp, problem.designs, problem.observations)
    probe = problem.observations.new_zeros((1,) + tuple(problem.exp.event_shape))
    try:
        fn(probe)
    except TypeError:
        if tempering == AUTO:
            return "snr", None
        raise
    return "variance", fn


@register("smc")
def run(
    problem: Problem,
    *,
    num_particles: int | None = None,
    steps: int | None = None,
    resample_threshold: float = 0.5,
    twist: str = "tds",
    resampling: str = "systematic",
    tempering: str = AUTO,
    data_variance: float = 1.0,
) -> Posterior:
    r"""Twisted Feynman-Kac SMC posterior for a diffusion prior (see the module docstring).

    ``num_chains`` and ``warmup``/``thin``/``init`` of :func:`bed.condition` are ignored (the
    particles always start from the reference law); ``num_chains``, if given, is the default
    particle number.

    Args:
        problem: the validated problem.
        num_particles: ``N`` (default ``num_chains`` if given, else ``max(num_samples, 1000)``).
        steps: reverse-diffusion steps ``K`` (default ``prior.sde_steps``, the prior's own path).
        resample_threshold: resample when ESS < ``resample_threshold * N``.
        twist: ``"tds"`` (gradient-twisted proposals) or ``"bootstrap"`` (model proposals; the
            same Tweedie twist in the weights, no gradients).
        resampling: ``"systematic"`` or ``"multinomial"``.
        tempering: ``"auto"`` (default: ``"variance"`` for Normal likelihoods, else
            ``"snr"``), ``"variance"`` (per observed element, the spread of
            :math:`x_0 \mid x_t` added to the noise variance; see :class:`TweedieTwist`),
            ``"snr"`` (twist exponent :math:`\alpha_t^2`) or ``"none"`` (plain TDS). Measured
            on the exact-posterior battery's sharp case (noise 0.05, 16000 particles):
            SW_ratio 0.8-1.2 with ``"variance"``, 2.6-10.5 with ``"snr"``.
        data_variance: the data variance behind ``"variance"`` tempering (1: standardised).

    Returns:
        A ``Posterior`` (``source`` is ``None``) with ``num_samples`` draws resampled from the
        final weighted particles. Diagnostics: ``ess_trace`` (`K + 1` tensor: ESS before each
        step and of the final weights), ``final_ess``, ``num_resamples``, ``log_normalizer``
        (estimate of ``log p_model(y)``), ``num_evals`` (network evaluations, ``N K``),
        ``num_vjp`` (backward passes), ``num_particles``, ``steps``, ``wall_time``.
    """
    prior = problem.prior
    require_diffusion(prior, "smc")
    if twist not in TWISTS:
        raise ValueError(f"smc: twist must be one of {TWISTS}, got {twist!r}")
    if resampling not in RESAMPLINGS:
        raise ValueError(f"smc: resampling must be one of {RESAMPLINGS}, got {resampling!r}")
    if not 0.0 <= float(resample_threshold) <= 1.0:
        raise ValueError(f"smc: resample_threshold must be in [0, 1], got {resample_threshold}")
    n = int(num_particles or problem.num_chains or max(problem.num_samples, 1000))
    k_steps = int(steps or prior.sde_steps)
    if n < 1 or k_steps < 1:
        raise ValueError(f"smc: need num_particles >= 1 and steps >= 1, got {n}, {k_steps}")
    gen = problem.generator
    ref = problem.observations.new_zeros(())

    def loglik_fn(theta: Tensor) -> Tensor:
        return problem.exp.log_likelihood(theta, problem.designs, problem.observations)

    tempering, elements = resolve_tempering(problem, tempering)
    tw = TweedieTwist(
        prior, loglik_fn, twist == "tds", tempering, elements, data_variance=data_variance
    )
    ts = prior.time_grid(k_steps, like=ref)  # (K + 1,) from T down to t_min
    shape = (n,) + tuple(prior.event_shape)
    with torch.no_grad():
        x = prior.sde.prior_sample(
            torch.randn(shape, generator=gen, device=ref.device, dtype=ref.dtype)
        )
        state = init(x, tw, ts)
        ess_trace, num_resamples = [], 0
        for _ in tqdm(range(k_steps), desc="smc", disable=not problem.progress, leave=False):
            state, info = step(state, tw, ts, gen, float(resample_threshold), resampling)
            ess_trace.append(info.ess)
            num_resamples += int(info.resampled)
        logw = state.log_weights
        final_ess = effective_sample_size(logw)
        ess_trace.append(final_ess)
        log_z = state.log_normalizer + logw.logsumexp(0) - math.log(n)
        idx = resample(logw, problem.num_samples, resampling, gen)
    diagnostics = {
        "ess_trace": torch.stack(ess_trace),
        "final_ess": float(final_ess),
        "num_resamples": num_resamples,
        "log_normalizer": float(log_z),
        "num_evals": tw.num_evals,
        "num_vjp": tw.num_vjp,
        "num_particles": n,
        "steps": k_steps,
        "twist": twist,
        "tempering": tempering,
    }
    return Posterior(state.x[idx], None, diagnostics, "smc")
