"""bed: Bayesian experimental design with pretrained generative priors."""

from bed.design_space import Box, Candidates, DesignSpace
from bed.experiment import Experiment

__all__ = ["Box", "Candidates", "DesignSpace", "Experiment"]
