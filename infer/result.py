"""`AnalysisResult`: what `dislotrack.infer.pipeline.analyze` returns, and its `relink`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.lattice import Lattice
from dislotrack.infer.options import analysis_options, as_typed, check_calibration_options
from dislotrack.infer.warning_log import AnalysisWarning, collected_warnings, named

#: In the warning that no (003) fringes stood out (`analyze`): cores cannot show there,
#: so "no cores" on a figure would read as searched and clean.
NO_FRINGES = "(003) lattice fringes stand out"

#: The `analyze` options that act after the detector: `AnalysisResult.relink` takes them.
RELINK_OPTIONS = ("max_speed_nm_s", "memory", "min_length", "max_gap", "min_track_score", "border_nm")


#: `AnalysisResult.relink`'s note where ``lattice_h=True`` finds no lattice to snap to.
NO_LATTICE_TO_SNAP = ("lattice_h=True changed nothing: no in-layer lattice reflection was "
                      "measured to snap track h to")


@dataclass(repr=False)
class AnalysisResult:
    """Everything `analyze` found. The tables follow the output contract (README › Outputs; as
    written to CSV, e.g. ``*_velocity_nm_per_frame`` without a frame interval), except
    that ``tracks`` also holds the drift-corrected ``x_corr, y_corr`` [px] and
    ``detections`` the ``in_rocksalt`` flags.

    Attributes
    ----------
    detections, tracks, track_summary, events, counts, drift : DataFrame
        The tables of detections.csv ... drift.csv (README › Outputs; ``dipoles``, a
        property, is made from ``tracks`` and ``track_summary``); positions
        ``x, y`` in image pixels (also in ``events``), ``*_nm`` in nm. In memory only
        (not written): ``detections.in_rocksalt`` and ``at_specimen_edge``, which
        `track_detections` reads, and
        ``tracks.x_corr, y_corr``, drift-corrected. Conventions
        (`dislotrack.data_gen.conventions`): **h** ``(hx, hy)`` points into the extra
        half-plane, image axes (y down); glide is along ``b_hat = (hy, -hx)`` (h turned
        90 degrees counter-clockwise on screen), climb along **h** (positive: towards the
        extra half-plane, shortening it); ``glide_nm, climb_nm`` are cumulative from a
        track's first frame, drift removed. ``track_summary``: ``birth`` nucleated |
        present | entered | from_rocksalt, ``death`` annihilated | survived | left |
        into_rocksalt, ``partner`` the dipole partner's particle (``<NA>``: none; -1 in
        the generator's truth files).
    calibration : Calibration
        Pixel size [nm/px] and frame interval [s], each with its source.
    rocksalt_fraction : ndarray
        Rock-salt share of each frame (also ``counts.rocksalt_fraction``).
    shape : (T, H, W)
        Frames and frame size [px] of the input.
    input_path, input_sha256 : str
        The input (absolute path; ``"<array>"`` for an in-memory array) and its hash.
    model_card : dict
        The model's card (id, sha256, canonical pixel size, training recipe, ...).
    warnings : list of str
        What the user should know (also in summary.json).
    first_frame : ndarray or None
        Frame 0 as read (float32), for figures.
    first_mask : ndarray of bool or None
        Frame 0's rock-salt mask (as rocksalt_mask.tif's first page), for figures.
    lattice : Lattice or None
        The measured lattice: ``g003`` and ``g_layer`` in cycles/nm (None: no (003)
        fringes stood out).
    lattice_h : bool
        Whether track **h** was snapped to ``lattice``'s Burgers vectors.
    options : dict
        The options that shaped the result (`analysis_options`), as in summary.json.
    weak : DataFrame or None
        Peaks under the threshold (from ``weak_fraction`` of it) that may extend track
        ends; `relink` reuses them (`track_detections(weak=)`), and tracking
        ``detections`` alone without them can end tracks a frame sooner.
    tracking_warnings : list of str
        The part of ``warnings`` that tracking gave (`relink` replaces it).
    """

    detections: pd.DataFrame
    tracks: pd.DataFrame
    track_summary: pd.DataFrame
    events: pd.DataFrame
    counts: pd.DataFrame
    drift: pd.DataFrame
    calibration: Calibration
    rocksalt_fraction: np.ndarray
    shape: tuple[int, int, int]
    input_path: str
    input_sha256: str
    model_card: dict
    warnings: list[str] = field(default_factory=list)
    first_frame: np.ndarray | None = None
    first_mask: np.ndarray | None = None
    lattice: Lattice | None = None
    lattice_h: bool = False  # whether track h was snapped to ``lattice``
    options: dict[str, Any] = field(default_factory=dict)
    weak: pd.DataFrame | None = None  # sub-threshold peaks that extend track ends (`relink`)
    tracking_warnings: list[str] = field(default_factory=list)  # those of `track_detections`

    @property
    def dipoles(self) -> pd.DataFrame:
        """dipoles.csv: each dipole's core separation per frame, along b and along h
        (`dislotrack.infer.dipoles.dipole_separations`), made from ``tracks`` and
        ``track_summary`` when asked for."""
        from dislotrack.infer.dipoles import dipole_separations

        return dipole_separations(self.tracks, self.track_summary,
                                  pixel_size_nm=self.calibration.pixel_size_nm,
                                  frame_interval_s=self.calibration.frame_interval_s,
                                  frame_times_s=self.calibration.frame_times_s)

    def relink(self, *, frame_interval_s: float | None = None, lattice_h: bool | None = None,
               **options: Any) -> AnalysisResult:
        """The same detections tracked again with other `RELINK_OPTIONS` (e.g.
        ``max_speed_nm_s=1.0``) or a frame interval the file lacked: everything after the
        detector reruns (`track_detections`) with this result's drift, weak peaks, lattice
        and rock salt, so options left as they were give the same tables; ``options`` and
        ``warnings`` say what changed. Stage jumps (a shift of most cores beyond half the
        search range and beyond the detections' 0.6 nm scatter) are found anew where a new
        frame interval or ``max_speed_nm_s`` changes the search range, as `analyze` with
        them would find them. ``lattice_h`` snaps track **h** to the measured lattice's
        Burgers vectors, or not (where the lattice shows an in-layer reflection).

        Parameters
        ----------
        frame_interval_s : float, optional
            A frame interval [s] to time the movie by (replacing the file's, or giving
            one it lacked); None keeps the calibration as it was.
        lattice_h : bool, optional
            Snap track **h** to the lattice's Burgers vectors (True) or not (False); None
            keeps this result's choice.
        **options
            Any of `RELINK_OPTIONS` (as `analyze` takes them); others are refused.

        Returns
        -------
        AnalysisResult
            A new result; this one is left as it was.

        Examples
        --------
        >>> slow = res.relink(max_speed_nm_s=1.0, min_length=10)  # doctest: +SKIP
        >>> in_time = res.relink(frame_interval_s=0.5)  # velocities in nm/s  # doctest: +SKIP
        >>> write_tables(slow, "results/slow")  # dislotrack.infer.outputs  # doctest: +SKIP
        """
        # Here: outputs and evaluate import this module, without trackpy.
        from dislotrack.infer import tracking
        from dislotrack.infer.linking import DEFAULT_MAX_SPEED_NM_S

        unknown = sorted(set(options) - set(RELINK_OPTIONS))
        if unknown:
            raise TypeError(f"relink takes frame_interval_s, lattice_h, {', '.join(RELINK_OPTIONS)}, not "
                            f"{', '.join(unknown)} (other options change the detections: run "
                            "analyze again)")
        chosen = {k: self.options[k] for k in RELINK_OPTIONS if k in self.options} | options
        cal, kept = self.calibration, [w for w in self.warnings if w not in self.tracking_warnings]
        fresh: list[str] = []  # calibration notes this relink makes: issued as analyze issues them
        if frame_interval_s is not None:  # the user's, as analyze(frame_interval_s=) takes it
            frame_interval_s = as_typed(frame_interval_s)
            check_calibration_options(pixel_size_nm=None, frame_interval_s=frame_interval_s,
                                      d_spacing_nm=self.options.get("d_spacing_nm", D003_LINIO2_NM))
            cal = cal.with_frame_interval(frame_interval_s)
            stale = set(self.calibration.warnings) - set(cal.warnings)  # e.g. "no frame interval"
            kept = [w for w in kept if w not in stale]
            fresh = [w for w in cal.warnings if w not in self.calibration.warnings]
            kept += [w for w in cal.warnings if w not in kept]
            options = {**options, "frame_interval_s": frame_interval_s}
        snap, said = self.lattice_h, []
        kept = [w for w in kept if w != NO_LATTICE_TO_SNAP]  # an earlier relink's
        if lattice_h is not None:
            snap = bool(lattice_h) and self.lattice is not None and self.lattice.has_layer
            options = {**options, "lattice_h": bool(lattice_h)}
            if lattice_h and not snap:
                said.append(NO_LATTICE_TO_SNAP)
        drift, jumped = self._drift_for(cal, chosen.get("max_speed_nm_s", DEFAULT_MAX_SPEED_NM_S))
        if jumped is not None:
            kept = jumped + [w for w in kept if not w.startswith(tracking.JUMP_WARNING)]
        with collected_warnings():  # issued below, at the caller's line, as analyze does
            t = tracking.track_detections(self.detections, pixel_size_nm=cal.pixel_size_nm,
                                 frame_interval_s=cal.frame_interval_s, frame_times_s=cal.frame_times_s,
                                 n_frames=self.shape[0],
                                 image_shape=self.shape[1:], drift=drift, weak=self.weak,
                                 rocksalt_fraction=self.rocksalt_fraction,
                                 lattice=self.lattice if snap else None, **chosen)
        kept += said
        for message in fresh + (jumped or []) + said + t.warnings:
            warnings.warn(named(self.input_path, message), AnalysisWarning, stacklevel=2)
        return replace(
            self, calibration=cal, drift=drift, lattice_h=snap, tracks=t.tracks,
            track_summary=t.track_summary, events=t.events, counts=t.counts,
            warnings=kept + [w for w in t.warnings if w not in kept],
            tracking_warnings=t.warnings, options={**self.options, **analysis_options(**options)})

    def _drift_for(self, cal: Calibration, max_speed_nm_s: float) -> tuple[pd.DataFrame, list[str] | None]:
        """The drift to relink with, and the stage-jump warnings where the jumps were found
        anew (None: kept as they were). A jump must exceed half the search range, which
        the frame interval and speed limit set: where those change, so may the jumps."""
        from dislotrack.infer import tracking

        same = (cal.frame_interval_s == self.calibration.frame_interval_s
                and max_speed_nm_s == self.options.get("max_speed_nm_s", max_speed_nm_s))
        if same or self.shape[0] < 2:
            return self.drift, None
        with collected_warnings() as jumped:
            drift = tracking.add_stage_jumps(self.detections, tracking.remove_stage_jumps(self.drift), cal,
                                      max_speed_nm_s, self.shape[1:])
        return drift, jumped

    def __repr__(self) -> str:  # short: the default showed the model card and frame 0
        c = self.calibration

        def value(v: float | None, source: str | None) -> str:  # 4 significant digits, and whence
            whence = f" ({source})" if source and source != "file" else ""
            return "None" if v is None else f"{v:.4g}{whence}"

        return (f"AnalysisResult({Path(self.input_path).name!r}, shape={tuple(self.shape)}, "
                f"pixel_size_nm={value(c.pixel_size_nm, c.pixel_size_source)}, "
                f"frame_interval_s={value(c.frame_interval_s, c.frame_interval_source)}, "
                f"{len(self.detections)} detections, {len(self.track_summary)} tracks, "
                f"{len(self.events)} events, {len(self.warnings)} warnings)")


def require_result(res: object, what: str) -> None:
    """Raises TypeError, saying what to pass, unless ``res`` is an `AnalysisResult`: a
    `track_detections` result (`TrackedTables`) lacks the detections, calibration and
    frame that ``what`` needs."""
    if not isinstance(res, AnalysisResult):
        raise TypeError(f"{what} takes an AnalysisResult (from analyze, or res.relink for other "
                        f"linking options), got {type(res).__name__}")
