"""bed: Bayesian experimental design with pretrained generative priors."""

from bed.conditioning import Posterior, condition
from bed.design_space import Box, Candidates, DesignSpace
from bed.experiment import Experiment
from bed import eig  # noqa: E402  (after Experiment: eig imports it)
from bed.acquisition import qEIG
from bed.optimize import optimize_design
from bed.loop import Instrument, SequentialDesign, Simulator  # noqa: E402

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
