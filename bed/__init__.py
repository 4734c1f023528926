"""bed: Bayesian experimental design with pretrained generative priors."""

from bed import eig
from bed.acquisition import qEIG
from bed.conditioning import Posterior, condition
from bed.design_space import Box, Candidates, DesignSpace
from bed.experiment import Experiment
from bed.loop import Instrument, SequentialDesign, Simulator
from bed.optimize import optimize_design

__all__ = [
    "Box",
    "Candidates",
    "DesignSpace",
    "Experiment",
    "Posterior",
    "condition",
    "eig",
    "optimize_design",
    "qEIG",
]
__all__ += ["Instrument", "SequentialDesign", "Simulator"]
