"""``qEIG``: the expected information gain of a joint design as a BoTorch acquisition function.

``qEIG(exp, theta)(X)`` maps a `b x q x d` tensor of joint designs to a `b` tensor of EIG
estimates (sPCE by default) under the belief samples ``theta``. The belief samples, the outer and
contrastive sample indices and the standard-normal outcome noise are drawn once and kept in
buffers (common random numbers), so the same ``X`` always gives the same value, the value is a
smooth function of ``X``, and L-BFGS-B in ``optimize_acqf`` sees a deterministic objective.
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.utils.transforms import concatenate_pending_points, t_batch_mode_transform
from torch import Tensor

from bed import eig
from bed.experiment import Experiment

__all__ = ["qEIG"]

_ESTIMATORS = ("pce", "nmc", "snmc", "gaussian")


class qEIG(AcquisitionFunction):
    """Expected information gain of ``q`` measurements taken jointly.

    Args:
        exp: the experiment (likelihood and design space).
        theta: `N x *event_shape` samples of the current belief.
        num_inner: ``L <= N - 1`` contrastive samples per outer sample (default ``N - 1``).
        estimator: ``"pce"`` (sPCE lower bound), ``"snmc"`` (upper bound), ``"nmc"``, or
            ``"gaussian"`` (the moment-matched upper bound ``bed.eig.gaussian``, for very
            informative measurements where sPCE saturates; needs Normal likelihoods).
        num_outer: ``M <= N`` outer samples (default ``N``).
        seed: seeds the fixed sample subsets and outcome noise.
        X_pending: optional `p x d` designs already chosen; they join every joint design.
        max_elements: chunking bound of ``bed.eig.eig_terms`` (memory).

    Example:
        >>> import priors, pyro.distributions as dist
        >>> from bed import Box, Experiment
        >>> exp = Experiment(priors.analytic.Gaussian(torch.zeros(1), torch.eye(1)),
        ...                  lambda t, x: dist.Normal(t[..., 0] * x[..., 0], 1.0), Box([0.], [2.]))
        >>> acq = qEIG(exp, exp.prior.sample((64,)), num_inner=32)
        >>> acq(torch.rand(5, 2, 1)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        exp: Experiment,
        theta: Tensor,
        num_inner: int | None = None,
        estimator: str = "pce",
        num_outer: int | None = None,
        seed: int = 0,
        X_pending: Tensor | None = None,
        max_elements: int = eig.MAX_ELEMENTS,
    ) -> None:
        super().__init__(model=None)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator: expected one of {_ESTIMATORS}, got {estimator!r}")
        theta = eig.check_belief(exp, theta, "theta").detach()
        n = theta.shape[0]
        num_outer = n if num_outer is None else int(num_outer)
        num_inner = n - 1 if num_inner is None else int(num_inner)
        gen = torch.Generator().manual_seed(seed)
        outer, pool, valid = eig.contrast_indices(n, num_outer, num_inner, gen, theta.device)
        self.exp, self.estimator, self.seed, self.max_elements = exp, estimator, seed, max_elements
        self.num_inner, self.num_outer = num_inner, num_outer
        self.register_buffer("theta", theta)
        self.register_buffer("outer", outer)
        self.register_buffer("pool", pool)
        self.register_buffer("valid", valid)
        probe = exp.design_space.sample(1).to(theta)  # (1, d)
        self._obs_shape = tuple(exp.likelihood(theta[:1], probe).event_shape)
        self.register_buffer("base_noise", theta.new_zeros((num_outer, 0) + self._obs_shape))
        self.set_X_pending(X_pending)

    def _noise(self, q: int) -> Tensor:
        """`M x q x *obs` standard-normal noise; column ``j`` depends only on ``(seed, j)``."""
        have = self.base_noise.shape[1]
        if have < q:
            cols = []
            for j in range(have, q):
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + j + 1)
                cols.append(torch.randn((self.num_outer,) + self._obs_shape, generator=g))
            new = torch.stack(cols, dim=1).to(self.base_noise)  # (M, q - have, *obs)
            self.base_noise = torch.cat([self.base_noise, new], dim=1)
        return self.base_noise[:, :q]

    def _terms(self, X: Tensor) -> Tensor:
        """Per-outer-sample terms `(batch, M)` for `batch x q x d` designs."""
        d = self.exp.design_dim
        if X.shape[-1] != d:
            raise ValueError(
                f"X: expected designs of shape b x q x {d} (design dimension {d}), "
                f"got {tuple(X.shape)}"
            )
        self.exp.design_space.check(X.detach(), "X")
        batch, q = X.shape[:-2], X.shape[-2]
        X = X.to(self.theta).reshape(-1, q, d)  # (b, q, d)
        if self.estimator == "gaussian":
            terms = eig.gaussian_terms(self.exp, X, self.theta)[:, None]  # (b, 1)
            return terms.reshape(batch + (1,))
        terms = eig.eig_terms(
            self.exp,
            X,
            self.theta,
            self.outer,
            self.pool,
            self.valid,
            self.estimator,
            eps=self._noise(q),
            seed=self.seed,
            max_elements=self.max_elements,
        )  # (b, M)
        return terms.reshape(batch + terms.shape[-1:])

    @concatenate_pending_points
    @t_batch_mode_transform()
    def forward(self, X: Tensor) -> Tensor:
        """EIG estimates of joint designs.

        Args:
            X: a `b x q x d` tensor of joint designs (pending points are appended to ``q``).

        Returns:
            A `b` tensor.
        """
        return self._terms(X).mean(-1)

    @concatenate_pending_points
    @t_batch_mode_transform(assert_output_shape=False)
    def estimate(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Estimates and their Monte Carlo standard errors, each a `b` tensor."""
        terms = self._terms(X)
        if terms.shape[-1] == 1:  # the Gaussian bound: no per-sample terms
            return terms[..., 0], torch.zeros_like(terms[..., 0])
        return terms.mean(-1), terms.std(-1) / math.sqrt(max(1, terms.shape[-1]))

    def stderr(self, X: Tensor) -> Tensor:
        """Monte Carlo standard error of ``forward(X)``, a `b` tensor."""
        return self.estimate(X)[1]
