"""``figures/dipoles.png``: each dipole's core spacing over time, across the glide plane
(along h) and along it (along b), so a dipole that expands by glide shows a flat line on the
left, one that expands by climb a flat line on the right (Wang et al.'s Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dislotrack.infer.figures import (
    MAX_NAMED_TRACKS,
    frame_time,
    input_name,
    nothing_to_show,
    save_figure,
    track_colour,
)
from dislotrack.infer.result import AnalysisResult, require_result

#: Panels: the dipoles.csv column, and the title saying what a flat line means.
PANELS = (("climb_separation_nm", "spacing along h, across the glide plane\n(flat: the pair glides)"),
          ("glide_separation_nm", "spacing along b, along the glide plane\n(flat: the pair climbs)"))


def spacing_span(spacing: pd.Series) -> tuple[float, float]:
    """``|spacing|`` in a dipole's first frame and at its widest [nm].

    Examples
    --------
    >>> spacing_span(pd.Series([-1.0, -2.5, 0.5]))
    (1.0, 2.5)
    """
    magnitude = np.abs(spacing.to_numpy(float))
    return float(magnitude[0]), float(magnitude.max())


def dipoles(res: AnalysisResult, path: Path) -> None:
    """Write `dipoles_figure` to ``path``."""
    save_figure(dipoles_figure(res), path)


def dipoles_figure(res: AnalysisResult) -> Figure:
    """The magnitude of each dipole's spacing along h (left) and along b (right) against the
    movie's time (`AnalysisResult.dipoles`), on one scale, a line per dipole in the track
    colour of its lower-numbered core (``particle_a``), labelled with its first and widest
    spacing (`spacing_span`). Up to `MAX_NAMED_TRACKS` dipoles are named in the legends.

    Parameters
    ----------
    res : AnalysisResult

    Returns
    -------
    Figure
    """
    require_result(res, "dipoles_figure")
    table = res.dipoles
    dt = res.calibration.frame_interval_s
    fig = Figure(figsize=(10.5, 4.3), layout="constrained")
    # One scale: a pair that glides shows a flat line beside a rising one, not its noise
    # blown up to fill its own axes.
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    n = table["pair"].nunique()
    fig.suptitle(f"{input_name(res)}: {n} dipole{'s' if n != 1 else ''}", fontsize=10)
    named = n <= MAX_NAMED_TRACKS
    for ax, (col, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (s)" if dt else "frame")
        ax.set_ylabel("|spacing| (nm)")
        if not dt:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for pair, g in table.groupby("pair", sort=False):
            first, widest = spacing_span(g[col])
            label = f"#{pair.replace(' ', '–#')}: {first:.2f} → {widest:.2f}" if named else "_nolegend_"
            x = frame_time(res, g["frame"])
            ax.plot(x, np.abs(g[col].to_numpy(float)), "-", marker=".", ms=4, lw=1.5,
                    color=track_colour(int(g["particle_a"].iloc[0])), label=label)
        if n == 0:
            nothing_to_show(ax, "no dipoles")
            # the movie's time, not 0-1
            ax.set_xlim(0, frame_time(res, [res.shape[0] - 1])[0] if res.shape[0] > 1 else dt or 1.0)
        elif named:
            ax.legend(fontsize=7, frameon=False, title="dipole: first → widest (nm)", title_fontsize=7)
    widest = table[[col for col, _ in PANELS]].abs().to_numpy(float).max(initial=0.0)
    axes[0].set_ylim(0, max(1.0, 1.15 * widest))  # both panels (shared); room for the legend
    return fig
