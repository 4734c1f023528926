"""Pretrained generative priors (flows, diffusion and flow-matching models) as Pyro distributions."""

from priors import analytic
from priors.base import GenerativePrior
from priors.diffusion import DiffusionPrior
from priors.flow import FlowPrior
from priors.flow_matching import FlowMatchingPrior
from priors.zoo import available, load

__all__ = [
    "DiffusionPrior",
    "FlowMatchingPrior",
    "FlowPrior",
    "GenerativePrior",
    "analytic",
    "available",
    "load",
]
