"""``dislotrack evaluate``: score predictions against annotations with DESIGN.md's metrics.

Pure functions score tables; `evaluate_folders` reads an infer output folder per
annotated input and writes a report.
"""

from __future__ import annotations

import glob
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import TqdmWarning

from dislotrack.data_gen.annotations import (
    UNKNOWN_PARTICLE,
    Annotation,
    annotation_image,
    find_annotations,
    read_annotation,
)
from dislotrack.data_gen.text import first_few
from dislotrack.infer.columns import velocities_in_nm_s
from dislotrack.infer.evaluate_parts import (
    DEFAULT_BORDER_NM,
    PART_SUFFIX,
    Part,
    find_part,
    part_annotation,
    part_events,
    part_tracks,
)
from dislotrack.infer.linking import require_columns
from dislotrack.infer.options import check_folder
from dislotrack.infer.outputs import frame_fingerprint
from dislotrack.models.io import file_sha256
from dislotrack.models.metrics import MATCH_RADIUS_NM, DetectionTally, mask_iou, match_cores

with warnings.catch_warnings():  # a Jupyter kernel without ipywidgets: text bars, silently
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

MIN_TRACK_FRAMES = 10
#: A predicted track must match a true one in at least this many frames to be its track
#: (its velocity is then that true track's measurement).
MIN_MATCHED_FRAMES = 3
#: Velocity components slower than this [nm/s] get no relative error (it is undefined
#: for a component that does not move); their absolute error is reported instead.
MIN_SPEED_NM_S = 0.05


def detection_scores(pred: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_nm: float) -> dict:
    """Precision, recall, F1, RMSE [nm], h accuracy over all frames (per-frame matching)."""
    return detection_tally(pred, truth, pixel_size_nm=pixel_size_nm).summary()


def detection_tally(pred: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_nm: float) -> DetectionTally:
    """The counts behind `detection_scores` (to pool items: `DetectionTally.merge`)."""
    require_columns(pred, ["frame", "x", "y"], name="pred (detections, px)")
    require_columns(truth, ["frame", "x", "y"], name="truth (annotated cores, px)")
    # h may be left out (unknown: a predicted one counts as wrong, a true one is not scored)
    pred, truth = (t if {"hx", "hy"} <= set(t.columns) else t.assign(hx=np.nan, hy=np.nan)
                   for t in (pred, truth))
    tally = DetectionTally()
    frames = sorted(set(pred.frame) | set(truth.frame))
    pg, tg = dict(list(pred.groupby("frame"))), dict(list(truth.groupby("frame")))
    empty = pd.DataFrame(columns=["x", "y", "hx", "hy"], dtype=float)
    for f in frames:
        p, t = pg.get(f, empty), tg.get(f, empty)
        tally.add(p[["x", "y"]].to_numpy(float), p[["hx", "hy"]].to_numpy(float),
                  t[["x", "y"]].to_numpy(float), t[["hx", "hy"]].to_numpy(float),
                  pixel_size=pixel_size_nm)
    return tally


#: Outcome of each core in `core_outcomes`: a true core found or missed, a predicted one false.
OUTCOMES = ("found", "missed", "false")


def core_outcomes(pred: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_nm: float) -> pd.DataFrame:
    """Each true core found or missed and each unmatched prediction false, frame by frame.

    The matching is `detection_scores`' (Hungarian, within `MATCH_RADIUS_NM`), so the
    counts of ``found``, ``missed`` and ``false`` are its tp, fn and fp.

    Returns
    -------
    DataFrame
        frame, x, y [px] (the true position for found and missed cores, the predicted
        one for false cores), outcome (one of `OUTCOMES`).
    """
    rows = []
    pg, tg = dict(list(pred.groupby("frame"))), dict(list(truth.groupby("frame")))
    for f in sorted(set(pg) | set(tg)):
        p = pg[f][["x", "y"]].to_numpy(float) if f in pg else np.zeros((0, 2))
        t = tg[f][["x", "y"]].to_numpy(float) if f in tg else np.zeros((0, 2))
        pi, ti = match_cores(p, t, MATCH_RADIUS_NM / pixel_size_nm)
        found, matched = np.isin(np.arange(len(t)), ti), np.isin(np.arange(len(p)), pi)
        rows += [(f, x, y, "found" if ok else "missed") for (x, y), ok in zip(t, found, strict=True)]
        rows += [(f, x, y, "false") for (x, y) in p[~matched]]
    return pd.DataFrame(rows, columns=["frame", "x", "y", "outcome"]).astype(
        {"frame": int, "x": float, "y": float})


def match_identities(pred_tracks: pd.DataFrame, truth: pd.DataFrame, *,
                     pixel_size_nm: float) -> pd.DataFrame:
    """Per-frame matched pairs (frame, true particle, predicted particle)."""
    rows = []
    pg = dict(list(pred_tracks.groupby("frame")))
    for f, t in truth.groupby("frame"):
        p = pg.get(f)
        if p is None:
            continue
        pi, ti = match_cores(p[["x", "y"]].to_numpy(float), t[["x", "y"]].to_numpy(float),
                             MATCH_RADIUS_NM / pixel_size_nm)
        rows += [(f, int(t.particle.iloc[j]), int(p.particle.iloc[i])) for i, j in zip(pi, ti, strict=True)]
    return pd.DataFrame(rows, columns=["frame", "true", "pred"])


def _switches(pairs: pd.DataFrame) -> int:
    """Changes of predicted track along one true track's matched pairs (in frame order)."""
    return int((pairs.pred.diff().fillna(0) != 0).sum())


def tracking_scores(pred_tracks: pd.DataFrame, pred_summary: pd.DataFrame, truth: pd.DataFrame,
                    true_tracks: pd.DataFrame, *, pixel_size_nm: float) -> tuple[dict, pd.DataFrame]:
    """Velocity errors per true track visible in >= 10 frames, and identity switches.

    Each long true track is given the predicted track matched in most of its frames, one
    to one (Hungarian on the matched-frame counts), if that is at least
    `MIN_MATCHED_FRAMES`; a long true track without one was not found, and its errors are
    infinite: a failure, not a track left out (``median_*_rel_error``; the medians over
    the tracks found alone are ``median_*_rel_error_found``). Likewise a found track
    without a predicted velocity. Relative errors are over the components that move
    (|true| >= `MIN_SPEED_NM_S`); absolute errors [nm/s] over all; the climb sign over the
    moving climb components (a track not found has none: not correct).

    ``true_tracks`` has particle, n_frames, glide_velocity_nm_s, climb_velocity_nm_s;
    so has ``pred_summary`` (per-frame ``*_nm_per_frame`` columns are refused: convert
    them with `velocities_in_nm_s`). Switches per track are over the true tracks labelled
    in ``truth``.
    """
    from scipy.optimize import linear_sum_assignment

    if velocities_in_nm_s(pred_summary, None) is None:
        raise ValueError("pred_summary holds velocities per frame (*_nm_per_frame): convert them "
                         "with velocities_in_nm_s(pred_summary, frame_interval_s) first")
    pairs = match_identities(pred_tracks, truth, pixel_size_nm=pixel_size_nm)
    switches = sum(_switches(g.sort_values("frame")) for _, g in pairs.groupby("true"))
    vel = pred_summary.set_index("particle") if len(pred_summary) else pd.DataFrame()
    visible = truth.groupby("particle").frame.nunique()
    long = true_tracks[true_tracks.particle.map(visible).fillna(0) >= MIN_TRACK_FRAMES]
    counts = pairs[pairs.true.isin(long.particle)].groupby(["true", "pred"]).size().unstack(fill_value=0)
    best: dict[int, tuple[int, int]] = {}
    if counts.size:
        # Pairs matched in too few frames are no candidates (else they could win the sum).
        enough = counts.where(counts >= MIN_MATCHED_FRAMES, 0).to_numpy()
        true_rows, pred_cols = linear_sum_assignment(-enough)
        best = {int(counts.index[r]): (int(counts.columns[c]), int(enough[r, c]))
                for r, c in zip(true_rows, pred_cols, strict=True) if enough[r, c] > 0}
    rows = []
    for _, tt in long.iterrows():
        pred, n = best.get(int(tt.particle), (pd.NA, 0))
        row = {"particle": int(tt.particle), "pred": pred, "matched_frames": n}
        for comp in ("glide", "climb"):
            pv = float(vel.loc[pred, f"{comp}_velocity_nm_s"]) if pred in vel.index else np.nan
            row[f"true_{comp}_nm_s"], row[f"pred_{comp}_nm_s"] = float(tt[f"{comp}_velocity_nm_s"]), pv
        rows.append(row)
    columns = ["particle", "pred", "matched_frames", *(f"{k}_{c}_nm_s" for c in ("glide", "climb")
                                                        for k in ("true", "pred"))]
    table = pd.DataFrame(rows, columns=columns).astype({"pred": "Int64"})
    found = table.pred.notna()
    scores = {"identity_switches": switches,
              "switches_per_track": switches / max(truth.particle.nunique(), 1),
              "long_tracks_matched": int(found.sum()), "long_tracks_unmatched": int((~found).sum())}
    if len(table):
        for comp in ("glide", "climb"):
            true_v, pred_v = table[f"true_{comp}_nm_s"], table[f"pred_{comp}_nm_s"]
            err = (pred_v - true_v).abs().fillna(np.inf)  # not found, or no velocity: a failure
            # A relative error needs a moving component: below MIN_SPEED_NM_S it is undefined.
            moving = true_v.abs() >= MIN_SPEED_NM_S
            table[f"{comp}_abs_error_nm_s"] = err
            table[f"{comp}_rel_error"] = (err / true_v.abs()).where(moving)
            scores[f"median_{comp}_rel_error"] = float(table[f"{comp}_rel_error"].median())
            scores[f"median_{comp}_rel_error_found"] = float(table[f"{comp}_rel_error"][found].median())
            scores[f"median_{comp}_abs_error_nm_s"] = float(err.median())
            scores[f"n_moving_{comp}"] = int(moving.sum())
        moving = table.true_climb_nm_s.abs() >= MIN_SPEED_NM_S
        scores["climb_sign_correct"] = float(
            (np.sign(table.pred_climb_nm_s[moving]) == np.sign(table.true_climb_nm_s[moving])).mean()
        ) if moving.any() else np.nan
    return scores, table


def match_events(pred: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_nm: float,
                 frame_tol: int = 1, radius_nm: float = MATCH_RADIUS_NM) -> list[tuple]:
    """Pairs (pred index, truth index) of matching events: same kind, within
    ``frame_tol`` frames and ``radius_nm``, one to one, as many as possible (Hungarian
    matching, then the smallest total distance; as `match_cores` for cores).

    ``pred`` has frame, kind, x, y [px]; ``truth`` has frame, kind, x_nm, y_nm.
    """
    from scipy.optimize import linear_sum_assignment

    # Named: the two sides' tables differ (px vs nm), and swapped ones gave a bare KeyError.
    require_columns(pred, ["frame", "kind", "x", "y"], name="pred (events.csv: x, y in px)")
    require_columns(truth, ["frame", "kind", "x_nm", "y_nm"], name="truth (true events: x_nm, y_nm)")
    if pred.empty or truth.empty:
        return []
    step = pred[["x", "y"]].to_numpy(float)[:, None] * pixel_size_nm - truth[["x_nm", "y_nm"]].to_numpy(float)
    dist = np.hypot(step[..., 0], step[..., 1])
    frames = np.abs(pred["frame"].to_numpy(float)[:, None] - truth["frame"].to_numpy(float))
    # "Within 0.5 nm" includes 0.5 nm, which px * nm/px computes as 0.5000000000000007.
    ok = (pred["kind"].to_numpy()[:, None] == truth["kind"].to_numpy()) & (frames <= frame_tol) & (
        dist <= radius_nm * (1 + 1e-9))
    # A pair out of range costs more than all pairs in range together: most pairs first.
    big = 1.0 + ok.sum() * radius_nm
    rows, cols = linear_sum_assignment(np.where(ok, dist, big))
    return [(pred.index[r], truth.index[c]) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


def event_scores(pred: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_nm: float,
                 frame_tol: int = 1, radius_nm: float = MATCH_RADIUS_NM) -> dict:
    """Event F1: same kind, within ``frame_tol`` frames and ``radius_nm`` (`match_events`).

    ``pred`` has frame, kind, x, y [px]; ``truth`` has frame, kind, x_nm, y_nm. F1 is NaN
    (undefined, as in `DetectionTally`) when neither side has an event.
    """
    tp = len(match_events(pred, truth, pixel_size_nm=pixel_size_nm, frame_tol=frame_tol,
                          radius_nm=radius_nm))
    fp, fn = len(pred) - tp, len(truth) - tp
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else np.nan
    return {"event_tp": tp, "event_fp": fp, "event_fn": fn, "event_f1": f1}


def _rocksalt_judged(pred_dir: Path) -> bool:
    """Whether infer judged rock salt in any frame (counts.csv's ``rocksalt_fraction`` is
    NaN where it did not: blank frames, frames too small or coarse); True without it."""
    counts = pred_dir / "counts.csv"
    return not counts.exists() or pd.read_csv(counts)["rocksalt_fraction"].notna().any()


def _result_folders(pred_dir: Path, stem: str, stems: set[str]) -> list[Path]:
    """infer's results for annotated item ``stem``: ``<stem>/`` and its parts'
    (``<stem>_frames…``, ``<stem>_x…``, `PART_SUFFIX`), those holding detections.csv;
    a folder named after another annotated item is that item's."""
    whole = [pred_dir / stem] if (pred_dir / stem / "detections.csv").exists() else []
    parts = sorted(d for d in pred_dir.glob(f"{glob.escape(stem)}_*")
                   if d.name not in stems and PART_SUFFIX.fullmatch(d.name[len(stem):])
                   and (d / "detections.csv").exists())
    return whole + parts


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, *, figures: bool = True,
                     progress: bool = True) -> dict:
    """Score every annotated item of ``truth_dir`` against ``pred_dir/<stem>/``, and
    against the results of parts of it (infer ``--frames`` / ``--region``:
    ``pred_dir/<stem>_frames…``, ``<stem>_x…``, each its own entry scored against the
    truth of that part, `part_annotation`).

    Writes ``pred_dir/evaluation.json`` (the returned report) and, with ``figures``,
    ``pred_dir/<stem>/figures/evaluation.png`` (found, missed and false cores). An item
    without predictions or with an unreadable annotation gets an ``error`` entry
    instead of scores; the others are still scored. ``progress`` shows a bar from 5 items.
    The pooled entry holds whole items the model was not fine-tuned on (a part's cores are
    its item's too), and the parts of an item it was fine-tuned on whose frames its
    fine-tuning held out (``held_out``; one of any that overlap).

    Raises
    ------
    NotADirectoryError
        If either folder does not exist.
    ValueError
        If ``truth_dir`` holds no annotations, none has predictions in ``pred_dir`` or
        none can be scored (e.g. every image differs in shape from its predictions);
        nothing is written then.
    """
    for name, folder in (("prediction", pred_dir), ("annotation", truth_dir)):
        check_folder(folder, f"{name} folder")
    sides = find_annotations(truth_dir)
    if not sides:
        raise ValueError(f"no annotations (<stem>.json, format dislotrack-annotation) in {truth_dir}")
    stems = {s.with_suffix("").name for s in sides}
    found = {s: _result_folders(Path(pred_dir), s.with_suffix("").name, stems) for s in sides}
    if not any(found.values()):
        raise ValueError(f"none of the {len(sides)} annotated items of {truth_dir} has infer "
                         f"outputs in {pred_dir} (expected {Path(pred_dir) / '<stem>' / 'detections.csv'}; "
                         "infer the annotated images themselves, or parts of them with --frames / "
                         "--region)")
    report = {}
    pooled, n_pooled = DetectionTally(), 0  # whole items the model was not trained on
    rs_pooled = np.zeros(2)  # their rock salt: intersection, union [px]
    for side in tqdm(sides, desc="evaluating", unit="item", disable=not progress or len(sides) < 5):
        stem = side.with_suffix("").name
        if not found[side]:
            report[stem] = {"error": f"no predictions in {Path(pred_dir) / stem}"}
            continue
        try:
            ann, why = read_annotation(side), None
        except (ValueError, OSError) as err:  # one bad annotation does not stop the others
            ann, why = None, f"annotation: {err}"
        pooled_parts: dict[str, Part] = {}  # this item's held-out parts pooled so far
        for out in found[side]:
            scores, tally, rs_counts, part = _score_results(out, side, ann, why, figures=figures)
            report[out.name] = scores
            # Whole items the model was not trained on, and parts that fine-tuning held
            # out of an item it trained on (whose whole is then never pooled): a part's
            # cores are its item's too, and parts may overlap.
            if tally is None or scores.get("trained_on") or ("part" in scores and not scores.get("held_out")):
                continue
            if part is not None and (twin := next((name for name, p in pooled_parts.items()
                                                   if p.overlaps(part)), None)):
                scores["note"] = "; ".join(filter(None, (scores.get("note"), (
                    f"not pooled: it overlaps {twin}, pooled already"))))
                continue
            if part is not None:
                pooled_parts[out.name] = part
            pooled.merge(tally)
            n_pooled += 1
            rs_pooled += rs_counts
    if all("error" in r for r in report.values()):
        # e.g. the wrong --truth folder: keep the earlier evaluation rather than replace it
        why = [f"{stem}: {r['error']}" for stem, r in report.items()]
        raise ValueError(f"no annotated item of {truth_dir} could be scored against {pred_dir}, "
                         "so nothing was written: " + first_few(why, sep="; "))
    if n_pooled >= 2:  # every core of those items once, their rock salt pooled likewise
        rs_iou = float(rs_pooled[0] / rs_pooled[1]) if rs_pooled[1] else None
        report[POOLED] = _defined({**pooled.summary(), "rs_iou": rs_iou})
    for stem, r in report.items():
        if "error" in r:  # an earlier run's figure would look like this run's
            (Path(pred_dir) / stem / "figures" / "evaluation.png").unlink(missing_ok=True)
    (Path(pred_dir) / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def _score_results(out: Path, side: Path, ann: Annotation | None, why: str | None, *,
                   figures: bool) -> tuple[dict, DetectionTally | None, np.ndarray, Part | None]:
    """One results folder of infer scored against annotation ``ann`` (read from ``side``;
    None, and ``why``, where it could not be), or against the part of it the results are
    of (`find_part`).

    Returns
    -------
    scores : dict
        The report's entry (an ``error`` entry where it cannot be scored).
    tally : DetectionTally or None
        Its core counts (None with an error).
    rs_counts : ndarray
        Rock-salt intersection and union [px] (zeros where rock salt is not scored).
    part : Part or None
        The part of the item the results are of (None: the whole item, or an error).
    """
    stem, truth_dir = side.with_suffix("").name, side.parent
    run_summary = _summary(out)  # read once: the input's shape and the model
    rs_counts = np.zeros(2)
    part, truth, why = _truth_of_results(out, side, ann, run_summary) if why is None else (None, None, why)
    if why:
        return {"error": why}, None, rs_counts, None
    pred = pd.read_csv(out / "detections.csv")
    tally = detection_tally(pred, truth.cores, pixel_size_nm=truth.pixel_size_nm)
    scores = {} if part is None else {"part": part.options}
    scores.update(tally.summary())
    notes = calibration_notes(run_summary, truth.pixel_size_nm, truth.frame_interval_s)
    made_by = prediction_model(run_summary)
    tuned_on_item = trained_on(run_summary, side)  # on the item, or some of its frames
    if tuned_on_item and (part is None or trained_on(run_summary, side, part)):
        scores["trained_on"] = True
        notes.append(f"{made_by['model']} was fine-tuned on this item: its scores are not a "
                     "test of the model (left out of the pooled row)")
    elif tuned_on_item:
        # Frames that fine-tuning held out of an item it trained on: a test, pooled.
        scores["held_out"] = True
        notes.append(f"frames {part.start}-{part.stop - 1} were held out by {made_by['model']}'s "
                     "fine-tuning: a test of the model")
    if figures:
        from dislotrack.infer.figures import evaluation_figure

        (out / "figures").mkdir(exist_ok=True)
        evaluation_figure(truth.image, core_outcomes(pred, truth.cores, pixel_size_nm=truth.pixel_size_nm),
                          out / "figures" / "evaluation.png", title=out.name,
                          pixel_size_nm=truth.pixel_size_nm)
    rs_pred = out / "rocksalt_mask.tif"
    if truth.rs_mask is not None and rs_pred.exists() and not _rocksalt_judged(out):
        notes.append("rock salt not scored: the predictions did not judge it (frames blank, or "
                     "too small or coarse to show the lattice; rocksalt_fraction NaN)")
    elif truth.rs_mask is not None and rs_pred.exists():
        import tifffile

        rs = tifffile.imread(rs_pred).reshape(truth.rs_mask.shape)
        # No rock salt annotated nor found: nothing to score (not a perfect 1).
        scores["rs_iou"] = mask_iou(rs, truth.rs_mask) if (rs.any() or truth.rs_mask.any()) else None
        rs_counts = np.array([np.logical_and(rs > 0, truth.rs_mask > 0).sum(),
                              np.logical_or(rs > 0, truth.rs_mask > 0).sum()], float)
    true_tracks = truth_dir / f"{stem}_tracks.csv"
    if true_tracks.exists() and (out / "tracks.csv").exists():
        # Predictions made without a frame interval hold nm/frame: use the annotation's.
        summary = velocities_in_nm_s(pd.read_csv(out / "track_summary.csv"), truth.frame_interval_s)
        if summary is None:
            notes.append("velocities not scored: the predictions are per frame and the "
                         "annotation has no frame_interval_s")
        else:
            tracks = pd.read_csv(true_tracks)
            if part is not None:
                tracks, n_cut = _tracks_of_part(tracks, ann, part, truth_dir / f"{stem}_drift.csv")
                if n_cut:
                    notes.append(f"{n_cut} true track{'s' * (n_cut != 1)} cut by the part: "
                                 "true velocities fitted to the labels inside it, less the true drift")
            s, _ = tracking_scores(pd.read_csv(out / "tracks.csv"), summary, truth.cores,
                                   tracks, pixel_size_nm=truth.pixel_size_nm)
            scores.update(s)
    elif truth.image.shape[0] > 1 and (truth.cores.particle == UNKNOWN_PARTICLE).any():
        notes.append("identity switches not scored: the annotation has no particle ids")
    elif truth.image.shape[0] > 1 and (out / "tracks.csv").exists() and len(truth.cores):
        # A hand-annotated movie (no _tracks.csv): its particle ids still give switches.
        pairs = match_identities(pd.read_csv(out / "tracks.csv"), truth.cores,
                                 pixel_size_nm=truth.pixel_size_nm)
        n = sum(_switches(g.sort_values("frame")) for _, g in pairs.groupby("true"))
        scores.update(identity_switches=n, switches_per_track=n / truth.cores.particle.nunique())
    true_events = truth_dir / f"{stem}_events.csv"
    if true_events.exists() and (out / "events.csv").exists():
        events = pd.read_csv(true_events)
        if part is not None:
            border = ((run_summary or {}).get("options") or {}).get("border_nm")
            border = DEFAULT_BORDER_NM if border is None else border  # 0 is a band of 0
            events = part_events(events, ann.cores, part, pixel_size_nm=ann.pixel_size_nm,
                                 border_nm=border)
        scores.update(event_scores(pd.read_csv(out / "events.csv"), events,
                                   pixel_size_nm=truth.pixel_size_nm))
    if notes:
        scores["note"] = "; ".join(notes)
    scores = _defined(scores)
    if made_by is not None:
        scores["predicted_by"] = made_by
    return scores, tally, rs_counts, part


def _truth_of_results(out: Path, side: Path, ann: Annotation, run_summary: dict | None
                      ) -> tuple[Part | None, Annotation | None, str | None]:
    """The part (None: whole) of annotation ``ann`` (read from ``side``) that the results in
    ``out`` (with infer's summary.json ``run_summary``) are of, its truth
    (`part_annotation`), and why they cannot be scored against it (None where they can)."""
    try:
        part = find_part((run_summary or {}).get("options"), out.name, side.with_suffix("").name,
                         ann.image.shape)
    except ValueError as err:
        return None, None, f"the predictions are of a part that is not of the annotated item: {err}"
    truth = ann if part is None else part_annotation(ann, part)
    try:
        # Another image or movie of the same name (sets made apart reuse image_00000)?
        why = (_shape_mismatch(run_summary, truth.image.shape)
               or _image_mismatch(run_summary, truth.image[0], annotation_image(side)))
    except (ValueError, OSError) as err:  # e.g. the annotated image unreadable
        why = f"annotation: {err}"
    return part, truth, why


def _tracks_of_part(tracks: pd.DataFrame, ann: Annotation, part: Part,
                    drift_csv: Path) -> tuple[pd.DataFrame, int]:
    """`part_tracks` of the annotation's tracks, with its true drift where there is one."""
    drift = pd.read_csv(drift_csv) if drift_csv.exists() else None
    return part_tracks(tracks, ann.cores, part, drift=drift, pixel_size_nm=ann.pixel_size_nm,
                       frame_interval_s=ann.frame_interval_s, min_frames=MIN_TRACK_FRAMES)


#: The report's entry pooling the cores of all scored items the predicting model was not
#: fine-tuned on, and of parts whose frames its fine-tuning held out (where there are two
#: or more).
POOLED = "(all, pooled)"

#: Calibrations of predictions and annotation further apart than this (relative) are noted.
CALIBRATION_TOLERANCE = 0.02


def _defined(scores: dict) -> dict:
    """``scores`` with NaN (undefined) and infinity (a median velocity error where half or
    more of the long true tracks were not found) as None, for JSON."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in scores.items()}


def calibration_notes(summary: dict | None, pixel_size_nm: float,
                      frame_interval_s: float | None) -> list[str]:
    """Where infer's calibration (its summary.json, `_summary`) differs from the
    annotation's by more than `CALIBRATION_TOLERANCE`: the detector saw the image at
    another scale, and velocities are off by that factor."""
    cal = (summary or {}).get("calibration") or {}
    notes = []
    for what, key, source_key, true, unit, flag in (
            ("pixel size", "pixel_size_nm", "pixel_size_source", pixel_size_nm, "nm", "--pixel-size"),
            ("frame interval", "frame_interval_s", "frame_interval_source", frame_interval_s, "s",
             "--frame-interval")):
        pred, source = cal.get(key), cal.get(source_key)
        if pred and true and abs(pred / true - 1) > CALIBRATION_TOLERANCE:
            # The file's own calibration may be the right one (a typo in the annotation).
            fix = (f"correct the annotation, or infer again with {flag} {true:.4g}"
                   if source == "file" else f"infer again with {flag} {true:.4g}")
            notes.append(f"infer used a {what} of {pred:.4g} {unit} ({source}), the annotation "
                         f"says {true:.4g} {unit}: {fix}")
    return notes


def trained_on(summary: dict | None, side: Path, part: Part | None = None) -> bool:
    """Whether the model behind predictions (infer's summary.json, `_summary`) was
    fine-tuned on the annotation ``side`` (``<stem>.json``), or on some of its frames, in
    any round of its fine-tuning (``finetuned_on`` and its ``earlier`` rounds): its image
    is one the model trained on (by content: also in a copied or renamed folder), or its
    folder is the one the model trained on and the item was not held out whole (a split by
    frames holds out frames of an item, never the item). Results of ``part`` of the item
    (`find_part`) whose frames all lie among the frames a round held out
    (``val_frame_indices``) were not trained on in that round."""
    tuned = ((summary or {}).get("model") or {}).get("finetuned_on") or {}
    rounds = [tuned, *(tuned.get("earlier") or [])] if tuned else []
    image = annotation_image(side)
    sha = file_sha256(image) if image.exists() and any(r.get("train_items_sha256") for r in rounds) else None
    return any(_trained_in_round(r, side, part, sha) for r in rounds if isinstance(r, dict))


def _trained_in_round(tuned: dict, side: Path, part: Part | None, sha: str | None) -> bool:
    """`trained_on` for one round of fine-tuning (``finetuned_on``'s keys); ``sha``: the
    annotated image's sha256 (None where no round records those of its training images)."""
    by_content = sha is not None and sha in set(tuned.get("train_items_sha256") or [])
    # The folder it learnt from, among the items it read there (an image added later is a
    # test; cards before 0.1.31 name none: every item there but the held-out ones).
    named = tuned.get("train_items")
    by_folder = (bool(tuned.get("data")) and Path(tuned["data"]) == side.parent.resolve()
                 and (named is None or side.name in {Path(v).name for v in named}
                      or side.name in {Path(v).name for v in tuned.get("val_items") or []}))
    if not (by_content or by_folder):
        return False
    if tuned.get("split") == "frames" and part is not None:
        held = held_out_frames(tuned, side, by_content)
        if held and set(range(part.start, part.stop)) <= held:
            return False  # only frames the round validated on
    if by_content:
        return True
    held_items = ({Path(v).name for v in tuned.get("val_items") or []}
                  if tuned.get("split") == "items" else set())
    return side.name not in held_items


def held_out_frames(tuned: dict, side: Path, by_content: bool) -> set[int]:
    """The frames of annotated item ``side`` that a round of fine-tuning split by frames
    held out (its ``val_frame_indices``, by the annotation's name; an item known by its
    content, ``by_content``, in a renamed folder: the round's one split item); none
    where the card does not record them (fine-tuned before 0.1.22)."""
    recorded = tuned.get("val_frame_indices") or {}
    if not isinstance(recorded, dict):
        return set()
    frames = recorded.get(side.name)
    if frames is None and by_content and len(recorded) == 1:  # a split by frames has one item
        (frames,) = recorded.values()
    return {int(f) for f in frames or []}


def _summary(out: Path) -> dict | None:
    """infer's summary.json in ``out``; None if missing or unreadable."""
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def prediction_model(summary: dict | None) -> dict | None:
    """Which model and dislotrack version made a set of predictions, from infer's
    summary.json (`_summary`): ``model`` id and sha256, ``dislotrack_version``, and the
    infer settings that change the scores (`SCORING_OPTIONS`: views averaged, threshold
    applied, whether the network saw the frames mirrored, arithmetic); None without a
    summary."""
    if summary is None:
        return None
    model = summary.get("model") or {}
    options = summary.get("options") or {}
    return {"model": model.get("id"), "sha256": model.get("sha256"),
            "dislotrack_version": summary.get("dislotrack_version"),
            **{k: options.get(k) for k in SCORING_OPTIONS}}


#: infer's options (summary.json ``options``) that `prediction_model` records: on one
#: image, F1 0.18 at the default two views and 0.57 at ``--tta 1`` (review stop 38).
SCORING_OPTIONS = ("tta", "threshold", "network_view", "precision_used")


def _shape_mismatch(summary: dict | None, shape: tuple[int, ...]) -> str | None:
    """Why predictions with this summary (`_summary`) cannot be of an annotated (t, y, x)
    ``shape``, else None (infer's summary.json records the input shape; none: nothing to
    compare)."""
    pred = (summary or {}).get("input", {}).get("shape")
    if pred is None or list(pred) == list(shape):
        return None
    return f"the predictions are of a {tuple(pred)} input, the annotation is {tuple(shape)}"


#: Fingerprints (`frame_fingerprint`) of one image correlate above this, whatever its file.
SAME_IMAGE_CORRELATION = 0.98


#: Blocks left out of the comparison where the two fingerprints differ most (a scale bar
#: or text burned into one export and not the other: a 100 x 20 px bar touches 8 blocks
#: of a 256 px frame).
DISCREPANT_BLOCKS = 8


def _image_mismatch(summary: dict | None, frame: np.ndarray, image_path: Path) -> str | None:
    """Why predictions with this summary (`_summary`) are not of the annotated ``frame``
    (frame 0), else None; None too where infer read this very file, where summary.json has
    no fingerprint, or where the fingerprints cannot be compared (a flat frame)."""
    source = (summary or {}).get("input", {})
    recorded = source.get("fingerprint")
    if not recorded or (source.get("sha256") and image_path.is_file()
                        and source["sha256"] == file_sha256(image_path)):
        return None
    ours = frame_fingerprint(frame)
    if len(recorded) != len(ours):
        return None
    a, b = np.asarray(recorded, float), np.asarray(ours, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    # Block means that hardly vary (a flat frame) cannot tell images apart.
    if len(a) < 16 or np.std(b) <= 1e-6 * np.abs(np.mean(b)) or np.std(a) == 0:
        return None
    # Robust scores (median, median absolute deviation): the discrepant blocks must not set them.
    za, zb = ((v - np.median(v)) / (np.median(np.abs(v - np.median(v))) or v.std()) for v in (a, b))
    kept = np.argsort(np.abs(za - zb))[: len(a) - DISCREPANT_BLOCKS]
    if np.corrcoef(a[kept], b[kept])[0, 1] >= SAME_IMAGE_CORRELATION:
        return None
    return (f"the predictions are of another image ({source.get('path', 'another file')}) than the "
            f"annotated {image_path.name} (same name and shape, other pixels, or the same image "
            "flipped or rotated): infer the annotated image itself")


#: Columns of `report_table`, where the report has them.
TABLE_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "f1", "rmse_nm", "h_accuracy", "rs_iou",
                 "long_tracks_matched", "long_tracks_unmatched", "median_glide_rel_error",
                 "median_climb_rel_error",
                 "switches_per_track", "event_f1")


def report_table(report: dict) -> pd.DataFrame:
    """The `evaluate_folders` report as one row per annotated item (undefined scores NaN)."""
    table = pd.DataFrame.from_dict(report, orient="index")
    if POOLED in table.index:  # last, whatever the item names
        table = pd.concat([table.drop(index=POOLED), table.loc[[POOLED]]])
    table = table[[c for c in (*TABLE_COLUMNS, "error", "note") if c in table]]
    scores = [c for c in table if c not in ("error", "note")]
    table[scores] = table[scores].apply(pd.to_numeric)  # None (undefined) -> NaN
    # Counts stay integers beside an error row.
    counts = [c for c in ("tp", "fp", "fn", "long_tracks_matched", "long_tracks_unmatched") if c in table]
    return table.astype({c: "Int64" for c in counts})


def report_text(report: dict) -> str:
    """`report_table` as text: scores to 3 decimals, counts whole, undefined or missing
    values as ``-``; the error column is left out (errors are reported separately). The
    `POOLED` entry (every core of the items a model was not fine-tuned on, and of the parts
    its fine-tuning held out) is the last row."""
    table = report_table(report).drop(columns=["error", "note"], errors="ignore")
    if table.shape[1] == 0 or ("tp" in table and table["tp"].isna().all()):
        return "no annotated item could be scored"
    cells = table.astype(object).map(
        lambda v: "-" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v))
    trained = [k for k in cells.index if isinstance(report.get(k), dict) and report[k].get("trained_on")]
    if not trained:
        return cells.to_string()
    # Marked in the table itself: a row a model learnt from is no test of it.
    cells.index = [f"{k}*" if k in trained else k for k in cells.index]
    return cells.to_string() + ("\n* the predicting model was fine-tuned on this item: not a test "
                                "(left out of the pooled row)")
