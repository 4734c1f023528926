"""Analytic priors with closed forms: the oracles that samplers and estimators are tested against.

``Gaussian(loc, covariance_matrix)`` is a ``GenerativePrior`` with an affine map
``push(z) = loc + L z`` (``L`` the Cholesky factor), so every source-space sampler runs on it,
and its posterior under linear-Gaussian observations is known exactly.

``GaussianMixture(weights, locs, covariance_matrices)`` has an exact density and exact draws,
and is a ``DiffusionPrior`` whose network is the exact score of its forward-SDE marginals
(``push`` = its probability-flow ODE); ``as_flow_matching()`` gives the same mixture with its
exact flow-matching velocity. ``Gaussian.as_diffusion()`` / ``as_flow_matching()`` do the same
for one Gaussian (``Gaussian.push`` stays affine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from priors.base import GenerativePrior
from priors.diffusion import DiffusionPrior
from priors.flow_matching import FlowMatchingPrior
from priors.sde import OUSDE, VPSDE

__all__ = ["Gaussian", "GaussianMixture"]


class _GaussianModule(nn.Module):
    def __init__(self, loc: Tensor, covariance_matrix: Tensor) -> None:
        super().__init__()
        self.register_buffer("loc", loc)
        self.register_buffer("covariance_matrix", covariance_matrix)
        self.register_buffer("scale_tril", torch.linalg.cholesky(covariance_matrix))


class Gaussian(GenerativePrior):
    """A multivariate normal prior N(loc, covariance_matrix) seen as a generative prior.

    ``loc`` has ``D = prod(event_shape)`` entries and ``covariance_matrix`` is ``D x D``; draws
    are reshaped to ``event_shape`` (default ``(D,)``), e.g. ``(2, 2)`` for two sources in 2-D.

    Args:
        loc: a `D` tensor (or any tensor with D entries).
        covariance_matrix: a `D x D` symmetric positive-definite tensor.
        event_shape: the shape of one draw; ``prod(event_shape)`` must equal ``D``.

    Example:
        >>> p = Gaussian(torch.zeros(2), torch.eye(2))
        >>> p.sample((5,)).shape
        torch.Size([5, 2])
    """

    has_pull = True

    def __init__(
        self,
        loc: Tensor,
        covariance_matrix: Tensor,
        event_shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        loc = torch.as_tensor(loc).reshape(-1)
        cov = torch.as_tensor(covariance_matrix, device=loc.device, dtype=loc.dtype)
        d = loc.numel()
        if cov.shape != (d, d):
            raise ValueError(
                f"Gaussian: covariance_matrix must be {d} x {d} to match loc, "
                f"got shape {tuple(cov.shape)}"
            )
        event_shape = torch.Size((d,) if event_shape is None else event_shape)
        if event_shape.numel() != d:
            raise ValueError(
                f"Gaussian: event_shape {tuple(event_shape)} has {event_shape.numel()} entries, "
                f"loc has {d}"
            )
        super().__init__(_GaussianModule(loc, cov), event_shape, validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        """The mean as a flat `D` tensor."""
        return self.module.loc

    @property
    def covariance_matrix(self) -> Tensor:
        """The `D x D` covariance."""
        return self.module.covariance_matrix

    @property
    def scale_tril(self) -> Tensor:
        return self.module.scale_tril

    @property
    def mean(self) -> Tensor:
        return self.loc.reshape(self.event_shape).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        var = self.covariance_matrix.diagonal().reshape(self.event_shape)
        return var.expand(self.batch_shape + self.event_shape)

    def push(self, z: Tensor) -> Tensor:
        """``x = loc + L z``; ``z`` is `(..., *event_shape)`, returns `(..., *event_shape)`."""
        flat, batch = self._flatten_source(z)  # (N, D)
        x = self.loc + flat @ self.scale_tril.mT  # (N, D)
        return x.reshape(batch + self.event_shape)

    def pull(self, x: Tensor) -> Tensor:
        """``z = L^{-1}(x - loc)``; shapes as in ``push``."""
        flat, batch = self._flatten_event(x, "pull")  # (N, D)
        z = torch.linalg.solve_triangular(
            self.scale_tril, (flat - self.loc).mT, upper=False
        ).mT  # (N, D)
        return z.reshape(batch + self.source_event_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density; ``x`` is `(..., *event_shape)`, returns `(...)`."""
        if self._validate_args:
            self._validate_value(x)
        z = self.pull(x)
        flat = z.reshape(z.shape[: z.dim() - len(self.event_shape)] + (-1,))  # (..., D)
        d = flat.shape[-1]
        half_logdet = self.scale_tril.diagonal().log().sum()
        lp = -0.5 * flat.pow(2).sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))  # (*batch)

    def entropy(self) -> Tensor:
        d = self.loc.numel()
        half_logdet = self.scale_tril.diagonal().log().sum()
        return (0.5 * d * (1 + math.log(2 * math.pi)) + half_logdet).expand(self.batch_shape)

    # ------------------------------------------------------------------ diffusion view
    def score(self, x: Tensor, t: Tensor | float, sde: OUSDE | None = None) -> Tensor:
        r"""Exact score of the forward-SDE marginal :math:`p_t` (default SDE: ``VPSDE()``).

        :math:`p_t = N(\mu + \alpha_t(m - \mu), \alpha_t^2 S + \sigma_t^2 I)` (methods.md §1);
        ``x`` is `(..., *event_shape)`, ``t`` a scalar or `(...)`; returns ``x``'s shape.
        """
        return self.as_diffusion(sde).score(x, t)

    def as_diffusion(self, sde: OUSDE | None = None, **kwargs) -> GaussianMixture:
        """This Gaussian as a one-component ``GaussianMixture``: a ``DiffusionPrior`` whose network
        is the exact score (``push`` = its probability-flow ODE, not the affine map).

        Args:
            sde: the forward SDE (default ``VPSDE()``).
            **kwargs: ``ode_steps``, ``sde_steps``, ``t_min`` of ``DiffusionPrior``.
        """
        return GaussianMixture(
            self.loc.new_ones(1),
            self.loc[None],
            self.covariance_matrix[None],
            sde=sde,
            event_shape=self.event_shape,
            **kwargs,
        )

    def as_flow_matching(self, steps: int = 100) -> FlowMatchingPrior:
        """This Gaussian as a ``FlowMatchingPrior`` with the exact linear-path velocity; its
        time-1 map is ``loc + S^{1/2} z`` (symmetric square root, methods.md §1)."""
        return self.as_diffusion().as_flow_matching(steps)


class _MixtureVelocity(nn.Module):
    r"""The exact flow-matching velocity of a Gaussian mixture under the linear path
    (t=0 noise, t=1 data; methods.md §1):
    :math:`v = \sum_k r_k [m_k + (tS_k - (1-t)I) C_k^{-1}(x - t m_k)]`,
    :math:`C_k = t^2 S_k + (1-t)^2 I`, :math:`r_k \propto w_k N(x; t m_k, C_k)`.
    """

    def __init__(self, logits: Tensor, locs: Tensor, covs: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)  # (K,)
        self.register_buffer("locs", locs)  # (K, D)
        self.register_buffer("covs", covs)  # (K, D, D)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # (N, D)
        t = t.expand(flat.shape[0]) if t.dim() == 0 else t
        if bool((t == t[0]).all()):  # one time for all points: one Cholesky per component
            t = t[:1]
        t = t.to(self.locs)
        eye = torch.eye(flat.shape[-1], device=flat.device, dtype=flat.dtype)
        tt = t[:, None, None, None]  # (M, 1, 1, 1)
        covs = tt**2 * self.covs + (1 - tt) ** 2 * eye  # (M, K, D, D)
        chol = torch.linalg.cholesky(covs)
        r = flat[:, None, :] - t[:, None, None] * self.locs  # (N, K, D)
        w = torch.linalg.solve_triangular(chol, r[..., None], upper=False)  # (N, K, D, 1)
        prec_r = torch.linalg.solve_triangular(chol.mT, w, upper=True)  # (N, K, D, 1)
        half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (M, K)
        joint = self.logits - 0.5 * w[..., 0].pow(2).sum(-1) - half_logdet  # (N, K)
        resp = joint.softmax(-1)  # (N, K)
        a = tt * self.covs - (1 - tt) * eye  # (M, K, D, D)
        v_k = self.locs + (a @ prec_r)[..., 0]  # (N, K, D)
        return (resp[..., None] * v_k).sum(-2).reshape(x.shape)


class _MixtureScore(nn.Module):
    """The exact score of a Gaussian mixture's forward-SDE marginals (a mixture stays a mixture).

    ``forward(x (N, *event), t (N,)) -> (N, *event)``; buffers hold the mixture's parameters.
    """

    def __init__(self, logits: Tensor, locs: Tensor, covs: Tensor, sde: OUSDE) -> None:
        super().__init__()
        self.register_buffer("logits", logits)  # (K,) normalised log-weights
        self.register_buffer("locs", locs)  # (K, D)
        self.register_buffer("covs", covs)  # (K, D, D)
        self.sde = sde

    def marginal_components(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Component means `(M, K, D)` and Cholesky factors `(M, K, D, D)` of ``p_t``,
        ``t`` of shape `(M,)`."""
        alpha, std = self.sde.marginal(t)  # (M,), (M,)
        alpha, std = alpha.to(self.locs), std.to(self.locs)
        mu = torch.as_tensor(self.sde.mu, device=self.locs.device, dtype=self.locs.dtype)
        means = mu + alpha[:, None, None] * (self.locs - mu)  # (M, K, D)
        eye = torch.eye(self.locs.shape[-1], device=self.locs.device, dtype=self.locs.dtype)
        covs = alpha[:, None, None, None] ** 2 * self.covs + std[:, None, None, None] ** 2 * eye
        return means, torch.linalg.cholesky(covs)  # (M, K, D), (M, K, D, D)

    def log_prob_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log p_t(x) (N,), score (N, D), responsibilities (N, K))`` for ``x`` `(N, D)`."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if bool((t == t[0]).all()):  # one time for all points: one Cholesky per component
            t = t[:1]
        means, chol = self.marginal_components(t)  # (M, K, D), (M, K, D, D), M in {1, N}
        r = x[:, None, :] - means  # (N, K, D)
        w = torch.linalg.solve_triangular(chol, r[..., None], upper=False)  # (N, K, D, 1)
        prec_r = torch.linalg.solve_triangular(chol.mT, w, upper=True)[..., 0]  # (N, K, D)
        half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (M, K)
        d = x.shape[-1]
        comp = -0.5 * w[..., 0].pow(2).sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
        joint = self.logits + comp  # (N, K)
        lp = joint.logsumexp(-1)  # (N,)
        resp = (joint - lp[:, None]).exp()  # (N, K)
        score = -(resp[..., None] * prec_r).sum(-2)  # (N, D)
        return lp, score, resp

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # (N, D)
        return self.log_prob_and_score(flat, t)[1].reshape(x.shape)


class GaussianMixture(DiffusionPrior):
    r"""A Gaussian mixture :math:`\sum_k w_k N(m_k, S_k)`: exact density and draws, and a
    ``DiffusionPrior`` whose "network" is the exact score of its forward-SDE marginals
    :math:`p_t = \sum_k w_k N(\mu + \alpha_t(m_k - \mu), \alpha_t^2 S_k + \sigma_t^2 I)`.

    So ``push`` is its probability-flow ODE (Heun, ``ode_steps``), and every diffusion-prior
    sampler (SMC, FBS, DPS) runs on it unchanged — the oracle for those samplers. ``log_prob``
    and ``sample`` are exact; the ODE density and reverse-SDE draws remain available as
    ``ode_log_prob`` and ``sample_sde``.

    Args:
        weights: `K` positive mixture weights (normalised here).
        locs: `K x D` component means.
        covariance_matrices: `K x D x D` component covariances.
        sde: the forward SDE (default ``VPSDE()``).
        event_shape: the shape of one draw (default ``(D,)``).
        ode_steps: Heun steps of ``push`` / ``ode_log_prob``.
        sde_steps: Euler-Maruyama steps of ``sample_sde``.
        t_min: end time of the reverse processes (0: the exact score is finite there).
        validate_args: Pyro/torch argument validation flag.

    Example:
        >>> p = GaussianMixture(torch.ones(2), torch.tensor([[-2.0], [2.0]]),
        ...                     0.25 * torch.ones(2, 1, 1))
        >>> p.sample((4,)).shape
        torch.Size([4, 1])
    """

    has_rsample = True

    def __init__(
        self,
        weights: Tensor,
        locs: Tensor,
        covariance_matrices: Tensor,
        sde: OUSDE | None = None,
        event_shape: Sequence[int] | None = None,
        ode_steps: int = 100,
        sde_steps: int = 500,
        t_min: float = 0.0,
        validate_args: bool | None = None,
    ) -> None:
        locs = torch.as_tensor(locs)
        if locs.dim() != 2:
            raise ValueError(f"GaussianMixture: locs must be K x D, got shape {tuple(locs.shape)}")
        k, d = locs.shape
        weights = torch.as_tensor(weights, device=locs.device, dtype=locs.dtype)
        covs = torch.as_tensor(covariance_matrices, device=locs.device, dtype=locs.dtype)
        if weights.shape != (k,) or (weights <= 0).any():
            raise ValueError(
                f"GaussianMixture: weights must be {k} positive numbers to match locs "
                f"({k} x {d}), got shape {tuple(weights.shape)}"
            )
        if covs.shape != (k, d, d):
            raise ValueError(
                f"GaussianMixture: covariance_matrices must be {k} x {d} x {d} to match locs, "
                f"got shape {tuple(covs.shape)}"
            )
        event_shape = torch.Size((d,) if event_shape is None else event_shape)
        if event_shape.numel() != d:
            raise ValueError(
                f"GaussianMixture: event_shape {tuple(event_shape)} has {event_shape.numel()} "
                f"entries, locs have {d}"
            )
        sde = VPSDE().to(device=locs.device) if sde is None else sde
        logits = weights.log() - weights.sum().log()
        net = _MixtureScore(logits, locs, covs, sde)
        super().__init__(
            net,
            sde,
            event_shape=event_shape,
            parameterization="score",
            ode_steps=ode_steps,
            sde_steps=sde_steps,
            t_min=t_min,
            validate_args=validate_args,
        )

    @property
    def weights(self) -> Tensor:
        """The normalised `K` weights."""
        return self.net.logits.exp()

    @property
    def locs(self) -> Tensor:
        """`K x D` component means."""
        return self.net.locs

    @property
    def covariance_matrices(self) -> Tensor:
        """`K x D x D` component covariances."""
        return self.net.covs

    @property
    def mean(self) -> Tensor:
        m = (self.weights[:, None] * self.locs).sum(0).reshape(self.event_shape)
        return m.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        w, m = self.weights, self.locs
        second = (w[:, None] * (self.covariance_matrices.diagonal(dim1=-2, dim2=-1) + m**2)).sum(0)
        var = (second - (w[:, None] * m).sum(0) ** 2).reshape(self.event_shape)
        return var.expand(self.batch_shape + self.event_shape)

    def marginal_log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Exact :math:`\log p_t(x)` of the forward-SDE marginal; ``x`` `(..., *event)` -> `(...)`."""
        flat, tf, batch = self._split(x, t, "marginal_log_prob")
        lp, _, _ = self.net.log_prob_and_score(flat.reshape(flat.shape[0], -1), tf)
        return lp.reshape(batch)

    def responsibilities(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        r"""Posterior component probabilities under :math:`p_t`, `(..., K)`."""
        flat, tf, batch = self._split(x, t, "responsibilities")
        _, _, resp = self.net.log_prob_and_score(flat.reshape(flat.shape[0], -1), tf)
        return resp.reshape(batch + resp.shape[-1:])

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density; ``x`` is `(..., *event_shape)`, returns `(...)`."""
        if self._validate_args:
            self._validate_value(x)
        lp = self.marginal_log_prob(x, 0.0)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Exact draws (component, then ``loc + L z``), `(*sample_shape, *batch, *event)`."""
        shape = torch.Size(sample_shape) + self.batch_shape
        n = shape.numel()
        ref = self.locs
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, ref.shape[-1], generator=generator, device=ref.device, dtype=ref.dtype)
        chol = torch.linalg.cholesky(self.covariance_matrices)  # (K, D, D)
        x = self.locs[comp] + (chol[comp] @ z[..., None])[..., 0]  # (n, D)
        return x.reshape(shape + self.event_shape)

    def as_flow_matching(self, steps: int = 100) -> FlowMatchingPrior:
        """The same mixture as a ``FlowMatchingPrior`` with its exact linear-path velocity
        (an oracle for flow-matching samplers; ``push`` = Heun on that ODE)."""
        net = _MixtureVelocity(self.net.logits, self.locs, self.covariance_matrices)
        return FlowMatchingPrior(net, event_shape=self.event_shape, steps=steps)

    def sample_sde(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        generator: torch.Generator | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Reverse-SDE draws with the exact score (``DiffusionPrior.sample``)."""
        return DiffusionPrior.sample(self, sample_shape, generator=generator, steps=steps)
