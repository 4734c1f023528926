"""An experiment: a prior over theta, a likelihood p(y | theta, design), and a design space."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from bed.design_space import DesignSpace
from priors.base import check_event_shape

__all__ = ["Experiment"]

Likelihood = Callable[[Tensor, Tensor], TorchDistribution]


class Experiment:
    """A Bayesian experimental design problem.

    Args:
        prior: a Pyro distribution over theta (usually a ``priors.GenerativePrior``) with
            event shape ``event_shape``.
        likelihood: ``likelihood(theta, design)`` with theta `(..., *event_shape)` and design
            `(..., d)` whose leading dims broadcast; returns a Pyro distribution over y whose
            batch shape is the broadcast leading dims and whose event shape is the observation
            shape (``()`` for a scalar measurement).
        design_space: a ``bed.Box`` or ``bed.Candidates``.
        name: a label used in records and plots.

    Example:
        >>> import priors, pyro.distributions as dist
        >>> exp = Experiment(
        ...     priors.analytic.Gaussian(torch.zeros(2), torch.eye(2)),
        ...     lambda theta, xi: dist.Normal((theta * xi).sum(-1), 1.0),
        ...     Box([-1.0, -1.0], [1.0, 1.0]),
        ... )
        >>> exp.log_likelihood(torch.zeros(5, 2), torch.ones(3, 2), torch.zeros(3)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        prior: TorchDistribution,
        likelihood: Likelihood,
        design_space: DesignSpace,
        name: str = "experiment",
    ) -> None:
        if not callable(likelihood):
            raise TypeError(f"Experiment: likelihood must be callable, got {type(likelihood)}")
        if not isinstance(design_space, DesignSpace):
            raise TypeError(
                "Experiment: design_space must be a bed.Box or bed.Candidates, "
                f"got {type(design_space).__name__}"
            )
        self.prior = prior
        self.likelihood = likelihood
        self.design_space = design_space
        self.name = name

    @classmethod
    def from_model(
        cls,
        model: Callable,
        target: str = "theta",
        observation: str = "y",
        design_space: DesignSpace | None = None,
        prior: TorchDistribution | None = None,
        design_shape: tuple[int, ...] | None = None,
        name: str = "pyro-model",
    ) -> Experiment:
        """An experiment from a ``pyro.contrib.oed`` model ``model(design)``.

        The prior is the ``target`` site's distribution (unless given); the likelihood traces
        the model with ``target`` conditioned on theta and returns the ``observation`` site's
        distribution. See ``bed.oed_compat.from_model`` for the arguments.
        """
        from bed.oed_compat import from_model

        return from_model(cls, model, target, observation, design_space, prior, design_shape, name)

    @property
    def event_shape(self) -> torch.Size:
        return self.prior.event_shape

    @property
    def design_dim(self) -> int:
        return self.design_space.dim

    def observation_shape(self, theta: Tensor | None = None) -> torch.Size:
        """Event shape of one observation, found by calling the likelihood once."""
        if theta is None:
            theta = self.prior.sample()
        design = self.design_space.sample(1)[0].to(theta)
        return self.likelihood(theta, design).event_shape

    def check_theta(self, theta: Tensor, site: str = "theta") -> Tensor:
        check_event_shape(theta, self.event_shape, site)
        return theta

    def check_data(self, designs: Tensor, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Validate `(n, d)` designs and `(n, *obs_shape)` observations; return them."""
        designs = torch.as_tensor(designs)
        observations = torch.as_tensor(observations)
        if designs.dim() != 2:
            raise ValueError(
                f"designs: expected shape (n, {self.design_dim}), got {tuple(designs.shape)}"
            )
        self.design_space.check(designs, "designs")
        n = designs.shape[0]
        if observations.dim() == 0 or observations.shape[0] != n:
            raise ValueError(
                f"observations: expected shape ({n}, *obs_shape) to match {n} designs, "
                f"got {tuple(observations.shape)}"
            )
        if not torch.isfinite(observations).all():
            bad = (~torch.isfinite(observations)).reshape(n, -1).any(-1).nonzero()[0].item()
            raise ValueError(
                f"observations: entry {bad} (design {designs[bad].tolist()}) is NaN or inf"
            )
        if n:
            obs_shape = self.observation_shape()
            if tuple(observations.shape[1:]) != tuple(obs_shape):
                raise ValueError(
                    f"observations: the likelihood's observation shape is {tuple(obs_shape)}, so "
                    f"expected shape ({n}, {', '.join(map(str, obs_shape))}), "
                    f"got {tuple(observations.shape)}"
                )
        return designs, observations

    def log_likelihood(self, theta: Tensor, designs: Tensor, observations: Tensor) -> Tensor:
        """Sum over measurements of ``log p(y_i | theta, design_i)``.

        Args:
            theta: `(*batch, *event_shape)`.
            designs: `(n, d)`.
            observations: `(n, *obs_shape)`.

        Returns:
            `(*batch)` log-likelihoods (zeros when ``n == 0``).
        """
        n_event = len(self.event_shape)
        batch = theta.shape[: theta.dim() - n_event]
        if designs.shape[0] == 0:
            return theta.new_zeros(batch)
        theta_n = theta.unsqueeze(len(batch))  # (*batch, 1, *event)
        lik = self.likelihood(theta_n, designs.to(theta))  # batch shape (*batch, n)
        return lik.log_prob(observations.to(theta)).sum(-1)  # (*batch)

    def to(self, device=None, dtype=None) -> Experiment:
        prior = (
            self.prior.to(device=device, dtype=dtype) if hasattr(self.prior, "to") else self.prior
        )
        space = self.design_space.to(device=device, dtype=dtype)
        new = copy.copy(self)
        new.prior, new.design_space = prior, space
        return new

    def __repr__(self) -> str:
        return f"Experiment({self.name!r}, prior={self.prior}, design_space={self.design_space})"
