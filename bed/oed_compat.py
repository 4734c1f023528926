"""Run models written for ``pyro.contrib.oed`` unchanged: ``Experiment.from_model``.

A ``pyro.contrib.oed`` model is a function ``model(design)`` that samples a target site (the
unknowns) and an observation site, treating the leading dimensions of ``design`` as batch
dimensions. ``from_model`` reads the prior off the target site and builds the likelihood by
tracing the model with the target site conditioned on ``theta``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from torch import Tensor

from bed.design_space import DesignSpace

__all__ = ["ModelLikelihood", "from_model"]


class ModelLikelihood:
    """``likelihood(theta, design)`` read off a Pyro model's observation site.

    Args:
        model: ``model(design)``, a Pyro model in ``pyro.contrib.oed``'s convention.
        target: name of the sample site holding the unknowns.
        observation: name of the observed sample site.
        event_shape: the target's event shape.
        design_shape: the shape the model expects of one design (``(1, p)`` for the linear
            models of ``pyro.contrib.oed``, which take `... x n x p` designs); our designs are
            flat `d` vectors with ``d = prod(design_shape)``.
    """

    def __init__(
        self,
        model: Callable,
        target: str,
        observation: str,
        event_shape: torch.Size,
        design_shape: torch.Size,
    ) -> None:
        self.model, self.target, self.observation = model, target, observation
        self.event_shape, self.design_shape = torch.Size(event_shape), torch.Size(design_shape)

    def __call__(self, theta: Tensor, design: Tensor) -> TorchDistribution:
        n_event = len(self.event_shape)
        batch = torch.broadcast_shapes(theta.shape[: theta.dim() - n_event], design.shape[:-1])
        theta = theta.expand(batch + self.event_shape)  # (*batch, *event)
        design = design.expand(batch + design.shape[-1:]).reshape(batch + self.design_shape)
        conditioned = poutine.condition(self.model, data={self.target: theta})
        trace = poutine.trace(conditioned).get_trace(design)
        if self.observation not in trace.nodes:
            raise ValueError(
                f"observation: the model has no sample site {self.observation!r}; its sites are "
                f"{[k for k, v in trace.nodes.items() if v['type'] == 'sample']}"
            )
        return trace.nodes[self.observation]["fn"]


def from_model(
    cls: type,
    model: Callable,
    target: str = "theta",
    observation: str = "y",
    design_space: DesignSpace | None = None,
    prior: TorchDistribution | None = None,
    design_shape: Sequence[int] | None = None,
    name: str = "pyro-model",
):
    """Build ``cls(prior, likelihood, design_space)`` from a ``pyro.contrib.oed`` model.

    Args:
        cls: the ``Experiment`` class.
        model: ``model(design)`` sampling ``target`` and ``observation``.
        target: the site of the unknowns theta.
        observation: the site of the measurement y.
        design_space: a ``Box`` or ``Candidates`` of flat `d` designs (required).
        prior: the prior over theta (default: the target site's distribution at one design).
        design_shape: shape of one design as the model takes it (default ``(d,)``).
        name: the experiment's label.

    Returns:
        An ``Experiment`` whose likelihood runs ``model``.
    """
    if not isinstance(design_space, DesignSpace):
        raise TypeError(
            f"design_space: from_model needs a bed.Box or bed.Candidates, got {design_space!r}"
        )
    design_shape = torch.Size((design_space.dim,) if design_shape is None else design_shape)
    if design_shape.numel() != design_space.dim:
        raise ValueError(
            f"design_shape: {tuple(design_shape)} has {design_shape.numel()} entries, the design "
            f"space has dimension {design_space.dim}"
        )
    if prior is None:
        design = design_space.sample(1)[0].reshape(design_shape)
        trace = poutine.trace(model).get_trace(design)
        if target not in trace.nodes:
            raise ValueError(f"target: the model has no sample site {target!r}")
        prior = trace.nodes[target]["fn"]
        if prior.batch_shape:
            prior = prior.to_event(len(prior.batch_shape))
    likelihood = ModelLikelihood(model, target, observation, prior.event_shape, design_shape)
    return cls(prior, likelihood, design_space, name)
