"""Figures of a run record and of prior samples (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["plot_prior_samples", "plot_run"]


def _points(x: np.ndarray) -> np.ndarray:
    """Flatten draws to 2-D points: `(..., K, 2)` -> `(N K, 2)`; else the first two coordinates
    of the flattened draw."""
    if x.shape[-1] == 2:
        return x.reshape(-1, 2)
    flat = x.reshape(x.shape[0], -1)
    return flat[:, :2] if flat.shape[1] >= 2 else np.concatenate([flat, 0 * flat], axis=1)


def _bounds(ds: xr.Dataset) -> np.ndarray | None:
    cfg = json.loads(ds.attrs.get("config", "{}"))
    b = cfg.get("design_bounds")
    return None if b is None else np.asarray(b, dtype=float)


def plot_run(ds: xr.Dataset, path: str | Path | None = None, max_panels: int = 6) -> Figure:
    """Posterior samples per step over the domain, with the designs and theta_true; EIG per step.

    Each panel shows the belief the step's design was chosen with (posterior given the earlier
    steps): its samples (each source a point, for `K x 2` events), the designs measured before
    (grey), the step's design (red cross) and the true theta (black stars). The last panel plots
    the EIG of each chosen design with its standard error.

    Args:
        ds: a run record (``bed.records.load``).
        path: where to save the figure (PNG), or ``None``.
        max_panels: how many steps to show (evenly spaced, always the first and last).

    Returns:
        the matplotlib ``Figure``.
    """
    n = ds.sizes["step"]
    steps = np.unique(np.linspace(0, max(n - 1, 0), min(n, max_panels)).round().astype(int))
    cols = len(steps) + 1
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.3), squeeze=False)
    axes = axes[0]
    bounds = _bounds(ds)
    designs = ds["design"].values
    theta = ds["theta_true"].values if "theta_true" in ds else None
    for ax, t in zip(axes, steps):
        post = _points(ds["posterior"].values[t])
        ax.scatter(post[:, 0], post[:, 1], s=3, alpha=0.3, color="tab:blue", label="posterior")
        if designs.shape[1] == 2:
            ax.scatter(designs[:t, 0], designs[:t, 1], s=12, color="0.5", label="earlier designs")
            ax.scatter(
                designs[t, 0], designs[t, 1], s=60, marker="x", color="tab:red", label="design"
            )
        if theta is not None:
            th = _points(theta[None])
            ax.scatter(th[:, 0], th[:, 1], s=90, marker="*", color="k", label="theta_true")
        if bounds is not None and bounds.shape == (2, 2):
            ax.set_xlim(bounds[0, 0], bounds[1, 0])
            ax.set_ylim(bounds[0, 1], bounds[1, 1])
        ax.set_aspect("equal")
        ax.set_title(f"step {t}")
    if len(steps):
        axes[0].legend(fontsize=6, loc="lower left")
    ax = axes[-1]
    eig, se = ds["eig"].values, ds["eig_stderr"].values
    ax.errorbar(np.arange(n), eig, yerr=se, marker="o", ms=3, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("EIG of chosen design (nats)")
    ax.set_title(f"{ds.attrs.get('problem', '')} ({ds.attrs.get('method', '')})")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_prior_samples(
    samples: np.ndarray, path: str | Path | None = None, title: str = ""
) -> Figure:
    """Scatter `n x *event` prior samples in 2-D (each `x 2` row a point).

    Args:
        samples: `n x *event_shape` draws.
        path: where to save the figure, or ``None``.
        title: the axes title.

    Returns:
        the matplotlib ``Figure``.
    """
    pts = _points(np.asarray(samples))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
