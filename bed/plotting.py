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


def _kind(ds: xr.Dataset) -> str:
    """How to draw a record: ``"points"`` (events of 2-D points with 2-D designs, e.g. source
    locations), ``"field"`` (an `H x W` event with designs in the unit square, e.g. a field
    with sensors), ``"patches"`` (an `H x W` image with designs the pixel corners ``(row,
    col)`` of square patches, e.g. image-mask) or ``"marginals"`` (anything else)."""
    event = ds["posterior"].shape[2:]
    design_dim = ds["design"].shape[-1]
    if len(event) >= 1 and event[-1] == 2 and design_dim == 2:
        return "points"
    if len(event) == 2 and min(event) >= 8:
        bounds = _bounds(ds)
        if design_dim == 2 and bounds is not None and bounds.max() > 1:
            return "patches"  # designs are pixel corners (row, col) of patches
        return "field"
    return "marginals"


def _eig_panel(ax, ds: xr.Dataset) -> None:
    n = ds.sizes["step"]
    eig, se = ds["eig"].values, ds["eig_stderr"].values
    ax.errorbar(np.arange(n), eig, yerr=se, marker="o", ms=3, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("EIG of chosen design (nats)")
    ax.set_title(f"{ds.attrs.get('problem', '')} ({ds.attrs.get('method', '')})")


def _points_panel(ax, ds, t, bounds, designs, theta) -> None:
    post = _points(ds["posterior"].values[t])
    ax.scatter(post[:, 0], post[:, 1], s=3, alpha=0.3, color="tab:blue", label="posterior")
    before, now = designs[:t].reshape(-1, 2), designs[t]  # (t q, 2), (q, 2)
    ax.scatter(before[:, 0], before[:, 1], s=12, color="0.5", label="earlier designs")
    ax.scatter(now[:, 0], now[:, 1], s=60, marker="x", color="tab:red", label="design")
    if theta is not None:
        th = _points(theta[None])
        ax.scatter(th[:, 0], th[:, 1], s=90, marker="*", color="k", label="theta_true")
    if bounds is not None and bounds.shape == (2, 2):
        ax.set_xlim(bounds[0, 0], bounds[1, 0])
        ax.set_ylim(bounds[0, 1], bounds[1, 1])
    ax.set_aspect("equal")


def _field_panel(ax, image, bounds, designs, t, vrange=None) -> None:
    """An `H x W` image over the design box with the designs measured up to step t."""
    lo, hi = (
        bounds if bounds is not None and bounds.shape == (2, 2) else np.array([[0, 0], [1, 1]])
    )
    ax.imshow(
        image.T,
        origin="lower",
        extent=(lo[0], hi[0], lo[1], hi[1]),
        cmap="viridis",
        vmin=None if vrange is None else vrange[0],
        vmax=None if vrange is None else vrange[1],
    )
    before, now = designs[:t].reshape(-1, 2), designs[t]  # (t q, 2), (q, 2)
    ax.scatter(before[:, 0], before[:, 1], s=12, color="w", edgecolors="k", lw=0.5)
    ax.scatter(now[:, 0], now[:, 1], s=60, marker="x", color="tab:red")
    ax.set_xticks([])
    ax.set_yticks([])


def _patches_panel(ax, image, bounds, designs, t, vrange=None) -> None:
    """An `H x W` image (row 0 at the top) with the patches measured before step t (white
    outlines) and the step's patch (red); the patch side is ``H - max corner row``."""
    from matplotlib.patches import Rectangle

    ax.imshow(
        image,
        cmap="gray",
        vmin=None if vrange is None else vrange[0],
        vmax=None if vrange is None else vrange[1],
    )
    side = image.shape[0] - bounds[1, 0]
    for k, (r, c) in enumerate(designs[: t + 1].reshape(-1, 2)):
        now = k >= t * designs.shape[1]
        ax.add_patch(
            Rectangle(
                (c - 0.5, r - 0.5),
                side,
                side,
                fill=False,
                lw=2 if now else 1,
                edgecolor="tab:red" if now else "w",
            )
        )
    ax.set_xticks([])
    ax.set_yticks([])


def plot_run(ds: xr.Dataset, path: str | Path | None = None, max_panels: int = 6) -> Figure:
    """Posterior per step over the domain, with the designs and theta_true; EIG per step.

    Each step panel shows the belief the step's design was chosen with (posterior given the
    earlier steps), the designs measured before and the step's design (red cross):

    - events of 2-D points with 2-D designs (location finding): posterior samples as points
      and the true sources as black stars;
    - `H x W` fields (sensor placement): the posterior mean, with the true field in an extra
      panel; images measured patch by patch (image-mask): the same, patches outlined;
    - anything else (pharmacokinetics, CES): posterior mean +- sd of every coordinate against
      the step, and the designs against the step.

    The last panel plots the EIG of each chosen design with its standard error.

    Args:
        ds: a run record (``bed.records.load``).
        path: where to save the figure (PNG), or ``None``.
        max_panels: how many steps to show (evenly spaced, always the first and last).

    Returns:
        the matplotlib ``Figure``.
    """
    n = ds.sizes["step"]
    kind = _kind(ds)
    bounds = _bounds(ds)
    designs = ds["design"].values  # (T, d), or (T, q, d) for batch records
    designs = designs.reshape(n, -1, designs.shape[-1])  # (T, q, d)
    theta = ds["theta_true"].values if "theta_true" in ds else None
    if kind == "marginals":
        post = ds["posterior"].values.reshape(n, ds.sizes["sample"], -1)  # (T, S, D)
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
        mean, sd = post.mean(1), post.std(1)
        for j in range(mean.shape[1]):
            line = axes[0].plot(np.arange(n), mean[:, j], lw=1, label=f"theta[{j}]")[0]
            axes[0].fill_between(
                np.arange(n),
                mean[:, j] - sd[:, j],
                mean[:, j] + sd[:, j],
                color=line.get_color(),
                alpha=0.2,
            )
            if theta is not None:
                axes[0].axhline(theta.reshape(-1)[j], color=line.get_color(), ls="--", lw=0.8)
        axes[0].set_xlabel("step")
        axes[0].set_title("posterior mean +- sd (dashed: true)")
        axes[0].legend(fontsize=6)
        axes[1].plot(np.arange(n), designs.reshape(n, -1), marker="o", ms=3, lw=0.8)
        axes[1].set_xlabel("step")
        axes[1].set_title("design")
        _eig_panel(axes[2], ds)
    else:
        steps = np.unique(np.linspace(0, max(n - 1, 0), min(n, max_panels)).round().astype(int))
        extra = int(kind in ("field", "patches") and theta is not None)
        cols = len(steps) + 1 + extra
        fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.3), squeeze=False)
        axes = axes[0]
        field = theta if theta is not None else ds["posterior"].values
        vrange = (float(np.min(field)), float(np.max(field)))  # one colour scale for all panels
        for ax, t in zip(axes, steps):
            if kind == "points":
                _points_panel(ax, ds, t, bounds, designs, theta)
            elif kind == "patches":
                _patches_panel(ax, ds["posterior"].values[t].mean(0), bounds, designs, t, vrange)
            else:
                _field_panel(ax, ds["posterior"].values[t].mean(0), bounds, designs, t, vrange)
            ax.set_title(f"step {t}" + (" (posterior mean)" if kind != "points" else ""))
        if kind == "points" and len(steps):
            axes[0].legend(fontsize=6, loc="lower left")
        if extra:
            panel = _patches_panel if kind == "patches" else _field_panel
            panel(axes[-2], theta, bounds, designs, n - 1, vrange)
            axes[-2].set_title(f"true {'image' if kind == 'patches' else 'field'}, all designs")
        _eig_panel(axes[-1], ds)
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
