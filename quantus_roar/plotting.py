"""Figures of removal curves (matplotlib, no display needed)."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["plot_curve"]


def plot_curve(results: pd.DataFrame, ax: Any = None, *, label: str | None = None,
               title: str | None = None, legend: bool = True, xlabel: str | None = None,
               **line_kwargs: Any) -> Any:
    """Accuracy against percentage, mean over retrains with a band of one std.

    Parameters
    ----------
    results : pandas.DataFrame
        With columns ``percentage`` and ``accuracy`` (one or more rows per
        percentage), as in ``metric.results``.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes (to overlay several curves); default a new figure.
    label, title : str, optional
    legend : bool, default True
        Draw the legend when ``label`` is given.
    xlabel : str, optional
        Label of the x axis, e.g. ``"features removed (%)"`` for ROAR and
        deletion, ``"features kept (%)"`` for KAR; default
        ``"features removed / kept (%)"``.
    **line_kwargs
        Passed to ``ax.plot`` (``color``, ``linestyle``, ...).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
    else:
        fig = ax.figure
    stats = results.groupby("percentage", sort=True)["accuracy"].agg(["mean", "std"])
    p = stats.index.to_numpy(dtype=float)
    mean = stats["mean"].to_numpy()
    std = stats["std"].fillna(0.0).to_numpy()
    (line,) = ax.plot(p, mean, marker=line_kwargs.pop("marker", "o"), label=label, **line_kwargs)
    ax.fill_between(p, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.set_xlabel("features removed / kept (%)" if xlabel is None else xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.02)
    if title:
        ax.set_title(title)
    if label and legend:
        ax.legend()
    return fig
