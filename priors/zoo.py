"""The zoo of shipped priors: ``priors.load(name)`` and ``priors.available()``.

Each prior ``NAME`` is two files in ``priors/checkpoints/``:

- ``NAME.pt``: the module's ``state_dict`` (tensors only), read with
  ``torch.load(..., weights_only=True)`` so a checkpoint can never run code;
- ``NAME.json``: the model card: description, data, ``kind`` and ``architecture`` (constructor
  name and keyword arguments that rebuild the module), event shape, training steps, seed,
  held-out NLL, wall time, package versions, and the SHA-256 of ``NAME.pt``.

``python -m priors.train NAME`` writes both. Loading checks the hash, the ``state_dict`` keys and
shapes against the rebuilt architecture, and raises an error naming the file on any mismatch.
To ship a new kind of prior, add its constructor to ``ARCHITECTURES`` and its wrapper class to
``KINDS``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priors.base import GenerativePrior
from priors.diffusion import DiffusionPrior
from priors.flow import FlowPrior, glow, neural_spline, realnvp
from priors.flow_matching import FlowMatchingPrior
from priors.nets import TimeMLP, irsde_unet, vp_mlp, vp_unet

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_DIR",
    "CONDITIONAL_DIR",
    "KINDS",
    "UnknownPriorError",
    "available",
    "card",
    "load",
]

#: where the shipped checkpoints and model cards live.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: constructor name (as written in a model card) -> function(**config) -> nn.Module.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "realnvp": realnvp,
    "glow": glow,
    "neural_spline": neural_spline,
}

#: prior kind (as written in a model card) -> class(module, event_shape=...) -> GenerativePrior.
KINDS: dict[str, Callable[..., GenerativePrior]] = {"flow": FlowPrior}

# diffusion and flow-matching priors (priors.nets builds their modules)
ARCHITECTURES.update(vp_mlp=vp_mlp, vp_unet=vp_unet, time_mlp=TimeMLP)
KINDS.update(diffusion=DiffusionPrior.from_module, flow_matching=FlowMatchingPrior)

#: conditional models (not priors: no log_prob, not listed by ``available()``) live here and
#: load with ``load(name, root=CONDITIONAL_DIR)``; kind ``"irsde"`` loads the ``IRSDEModel``.
CONDITIONAL_DIR = CHECKPOINT_DIR / "conditional"
ARCHITECTURES.update(irsde_unet=irsde_unet)
KINDS.update(irsde=lambda module, event_shape=None: module)


class UnknownPriorError(KeyError):
    """Raised for a prior name that is not shipped; the message lists the available names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_CARD_KEYS = ("name", "description", "kind", "architecture", "event_shape", "checkpoint")


def _root(root: str | Path | None) -> Path:
    return CHECKPOINT_DIR if root is None else Path(root)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def available(root: str | Path | None = None) -> dict[str, str]:
    """The shipped priors.

    Args:
        root: checkpoint directory (default: the package's ``priors/checkpoints``).

    Returns:
        A dict ``name -> one-line description``, sorted by name.
    """
    out = {}
    for path in sorted(_root(root).glob("*.json")):
        try:
            description = json.loads(path.read_text())["description"]
        except (json.JSONDecodeError, KeyError, TypeError):
            description = f"(unreadable model card {path.name})"
        out[path.stem] = description
    return out


def card(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """The model card of prior ``name`` as a dict.

    Raises:
        UnknownPriorError: (a ``KeyError``) if ``name`` is not shipped (the message lists the available names).
        ValueError: if the card is not valid JSON or lacks a required field.
    """
    path = _root(root) / f"{name}.json"
    if not path.is_file():
        names = ", ".join(available(root)) or "(none)"
        raise UnknownPriorError(f"unknown prior {name!r}; available priors: {names}")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"model card {path} is not valid JSON: {err}") from err
    missing = [k for k in _CARD_KEYS if k not in info]
    if missing:
        raise ValueError(f"model card {path} lacks the field(s) {', '.join(missing)}")
    return info


def build(info: dict[str, Any]) -> nn.Module:
    """Rebuild the (randomly initialised) module that a model card describes."""
    arch = info["architecture"]
    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise ValueError(
            f"model card for {info['name']!r} names architecture {name!r}; "
            f"known architectures: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name](**arch.get("config", {}))


def load(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    root: str | Path | None = None,
) -> GenerativePrior:
    """Load a shipped prior.

    Args:
        name: one of ``available()``, e.g. ``"two-moons"`` or ``"sources-2x2"``.
        device: where to put the module (default: CPU).
        dtype: floating dtype of the module (default: the checkpoint's, float32).
        root: checkpoint directory (default: the package's ``priors/checkpoints``).

    Returns:
        The prior (a ``GenerativePrior``) with its weights frozen (``requires_grad=False``);
        ``rsample`` still differentiates with respect to the source draws.

    Raises:
        UnknownPriorError: (a ``KeyError``) unknown ``name`` (the message lists the available ones).
        FileNotFoundError: the checkpoint file is missing.
        ValueError: the checkpoint does not match its card (hash, keys or shapes) or is not a
            tensors-only file.

    Example:
        >>> p = load("sources-2x2")
        >>> p.sample((4,)).shape
        torch.Size([4, 2, 2])
    """
    info = card(name, root)
    path = _root(root) / info["checkpoint"]["file"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} for prior {name!r} is missing")
    expected = info["checkpoint"].get("sha256")
    if expected is not None and sha256(path) != expected:
        raise ValueError(
            f"checkpoint {path} does not match its model card {name}.json (SHA-256 differs): "
            "the file was modified or the card belongs to another checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"checkpoint {path} is not a tensors-only state_dict: {err}") from err
    if info["kind"] not in KINDS:
        raise ValueError(
            f"model card {name}.json names kind {info['kind']!r}; known kinds: {', '.join(KINDS)}"
        )
    module = build(info)
    _check_state(module, state, path)
    module.load_state_dict(state)
    module.requires_grad_(False)
    module.eval()
    prior = KINDS[info["kind"]](module, event_shape=tuple(info["event_shape"]))
    if device is not None or dtype is not None:
        prior = prior.to(device=device, dtype=dtype)
    return prior


def _check_state(module: nn.Module, state: Any, path: Path) -> None:
    """Raise a ValueError naming ``path`` unless ``state`` fits ``module`` key for key."""
    if not isinstance(state, dict):
        # a ValueError like every other bad-checkpoint error, so callers catch one type
        raise ValueError(  # noqa: TRY004
            f"checkpoint {path} holds a {type(state).__name__}, not a state_dict"
        )
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    problems = []
    if missing := sorted(want.keys() - got.keys()):
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra := sorted(state.keys() - want.keys()):
        problems.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k in sorted(want.keys() & got.keys()):
        if want[k] != got[k]:
            problems.append(f"{k}: expected shape {want[k]}, got {got[k]}")
    if problems:
        raise ValueError(
            f"checkpoint {path} does not match the architecture in its model card: "
            + "; ".join(problems[:6])
        )
