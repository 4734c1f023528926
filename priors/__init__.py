"""Pretrained generative priors (flows, diffusion and flow-matching models) as Pyro distributions."""

from priors import analytic
from priors.base import GenerativePrior
from priors.flow import FlowPrior
from priors.zoo import available, load

__all__ = ["FlowPrior", "GenerativePrior", "analytic", "available", "load"]
