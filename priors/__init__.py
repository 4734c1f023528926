"""Pretrained generative priors (flows, diffusion and flow-matching models) as Pyro distributions."""

from priors import analytic
from priors.base import GenerativePrior

__all__ = ["GenerativePrior", "analytic"]
