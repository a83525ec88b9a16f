"""Write an `AnalysisResult` to disk as the output contract (`columns.SCHEMA_VERSION`)."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from dislotrack.data_gen.version import package_version
from dislotrack.infer.columns import (
    SCHEMA_VERSION,
    TABLES,
    velocity_columns,
    velocity_columns_as_written,
)
from dislotrack.infer.drift import READ_FROM_LAYER_SPOTS, UNSEEN_ALONG_FRINGES
from dislotrack.infer.interface import option
from dislotrack.infer.motion import moving_tracks
from dislotrack.infer.result import AnalysisResult, require_result


class MaskWriter:
    """Per-frame uint8 rock-salt masks into a zlib-compressed, ImageJ-calibrated TIFF stack
    (``shape``: the frames expected; the stack ends at the last frame written).

    Masks go to an uncompressed, memory-mapped stack beside ``path`` as they come (in any
    order), so memory does not grow with the movie; `close` streams it, frame by frame,
    into the compressed file (a mask compresses ~200x) and removes it. ImageJ stacks
    cannot be written compressed one frame at a time, hence the two steps.
    """

    def __init__(self, path: Path, *, shape: tuple[int, int, int], pixel_size_nm: float | None,
                 frame_interval_s: float | None):
        meta: dict = {"unit": "nm" if pixel_size_nm else "px", "axes": "TYX"}
        if frame_interval_s:
            meta["finterval"] = frame_interval_s
        self.path = path
        self._shape = shape
        self._tags = {"resolution": (1 / pixel_size_nm, 1 / pixel_size_nm) if pixel_size_nm else None,
                      "metadata": meta}
        self._partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        self._mm = tifffile.memmap(self._partial, shape=shape, dtype=np.uint8, photometric="minisblack")
        self._frames = 0  # one past the last frame written

    def __call__(self, frame: int, mask: np.ndarray) -> None:
        self._mm[frame] = mask
        self._frames = max(self._frames, frame + 1)

    def close(self) -> None:
        """Write the compressed stack and remove the uncompressed one."""
        if self._mm is None:
            return
        try:
            # The memory-mapped stack itself: tifffile reads it page by page as it compresses.
            # ImageJ's layout takes frames one pixel wide for colour samples: plain TIFF then.
            # Up to the last frame written: a video may yield fewer frames than its header
            # said, and the stack is not padded with empty masks for frames never read.
            tifffile.imwrite(self.path, self._mm[: max(self._frames, 1)], imagej=self._shape[2] > 1,
                             photometric="minisblack", compression="zlib", **self._tags)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the uncompressed stack without writing anything (an analysis that failed)."""
        if self._mm is not None:
            self._mm = None  # unmapped before the file goes (Windows cannot remove a mapped file)
            self._partial.unlink(missing_ok=True)


def _tally(table: pd.DataFrame, column: str) -> dict[str, int]:
    """How often each value of ``column`` occurs ({} for an empty table)."""
    if not len(table):
        return {}
    return {str(k): int(v) for k, v in table[column].value_counts().items()}


#: Side of the grid of block means that fingerprints an input's frame 0 in summary.json.
FINGERPRINT_GRID = 8


def frame_fingerprint(frame: np.ndarray) -> list[float]:
    """Means of a `FINGERPRINT_GRID`-square grid of blocks of a frame, row by row: enough to
    tell two images apart (the illumination, thickness and noise differ) whatever the file
    format, dtype or scale they were saved in; `evaluate` checks predictions against it."""
    rows = np.array_split(np.asarray(frame), min(FINGERPRINT_GRID, frame.shape[0]), axis=0)
    with warnings.catch_warnings():  # a block of NaN pixels only (alignment padding): NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return [float(f"{np.nanmean(block, dtype=np.float64):.8g}") for band in rows
                for block in np.array_split(band, min(FINGERPRINT_GRID, frame.shape[1]), axis=1)]


def summary_dict(res: AnalysisResult) -> dict:
    """The summary.json content."""
    cal = res.calibration
    s = res.track_summary

    def stats(component: str) -> dict:  # nm/s or nm/frame, whichever the table holds
        cols = velocity_columns(s, component)
        v = s[cols[0]].dropna().to_numpy(float) if cols else np.array([])
        moving, _ = moving_tracks(s, component, cal.frame_interval_s, cal.frame_times_s)
        return {"mean": float(v.mean()) if len(v) else None,
                "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "n_tracks": int(len(v)),
                # The tracks displacement.png draws, by particle: the mean over all tracks
                # mixes a moving core with resting ones and with those moving the other way.
                "moving": {str(int(p)): float(x) for p, x in moving.items()}}

    return {
        "schema_version": SCHEMA_VERSION,
        "dislotrack_version": package_version(),
        "model": {"id": res.model_card.get("model_id"), "sha256": res.model_card.get("sha256"),
                  # evaluate flags the items a fine-tuned model learnt from
                  "finetuned_on": _finetuned_on(res.model_card)},
        "input": {"path": res.input_path, "sha256": res.input_sha256,
                  "shape": list(res.shape),
                  # evaluate tells the annotated image from another of the same name by it
                  "fingerprint": None if res.first_frame is None else frame_fingerprint(res.first_frame),
                  # how the reader read it: what it assumed or ignored (the warnings say what matters)
                  "notes": list(cal.notes)},
        "calibration": {"pixel_size_nm": cal.pixel_size_nm, "pixel_size_source": cal.pixel_size_source,
                        "frame_interval_s": cal.frame_interval_s,
                        "frame_interval_source": cal.frame_interval_source,
                        # t_s and velocities on the file's clock (it steps unevenly), not frame x interval
                        "times_from_clock": cal.frame_times_s is not None,
                        "velocity_unit": "nm/s" if cal.frame_interval_s else "nm/frame"},
        "totals": {"frames": int(res.shape[0]), "detections": int(len(res.detections)),
                   "tracks": int(len(s)),
                   "dipoles": int((s["kind"] == "dipole").sum() // 2) if len(s) else 0,
                   "events": _tally(res.events, "kind"),
                   # How tracks begin and end (from_rocksalt / into_rocksalt: no event).
                   "births": _tally(s, "birth"), "deaths": _tally(s, "death")},
        "velocities": {"glide": stats("glide"), "climb": stats("climb"),
                       "unit": "nm/s" if cal.frame_interval_s else "nm/frame"},
        "lattice": _lattice_dict(res),
        "drift": _drift_dict(res.drift),
        # The analysis options (`analyze` keywords, plus the device used); the lattice and
        # calibration above say what the movie then gave.
        "options": dict(res.options),
        "warnings": list(res.warnings),
    }


def _drift_dict(drift: pd.DataFrame | None) -> dict | None:
    """The largest specimen drift [px] removed (drift.csv) and how many frames' drift along
    the (003) fringes was read from the in-layer spots or could not be seen (None where not
    counted); None for a single image."""
    if drift is None or len(drift) < 2:
        return None
    counts = {key: drift.attrs.get(key) for key in (READ_FROM_LAYER_SPOTS, UNSEEN_ALONG_FRINGES)}
    return {"largest_px": float(np.hypot(drift["dx"], drift["dy"]).max()),
            **{key: None if n is None else int(n) for key, n in counts.items()}}


def _finetuned_on(card: dict) -> dict | None:
    """The annotation folder, split (by "items" or "frames"), held-out items and the
    trained-on images' sha256 of a fine-tuned model (None otherwise): of its latest round
    of fine-tuning, plus ``val_frame_indices`` (the held-out frames, where one item's frames
    were split) and ``earlier`` (the rounds before, latest first, same keys) where they
    apply. The rounds are those of the card's lineage (`_finetune_rounds`): a model
    fine-tuned twice, or trained on (``train fit --model.init_from``) from a fine-tuned
    one, still learnt from the items of every round."""
    rounds = _finetune_rounds(card.get("training"))
    if not rounds:
        return None
    latest, *earlier = rounds
    return {**latest, **({"earlier": earlier} if earlier else {})}


#: What summary.json records of each round of fine-tuning (`_finetuned_on`).
_ROUND_KEYS = ("data", "split", "val_items", "train_items", "train_items_sha256")


def _finetune_rounds(training: object) -> list[dict]:
    """Each round of fine-tuning in a card's ``training`` record, latest first: its own
    ``finetune``, then those of its ``base`` (the record of the model it started from,
    which finetune and ``train fit --model.init_from`` keep), and so on."""
    rounds = []
    for _ in range(100):  # a lineage, not a loop (JSON has no cycles): a bound all the same
        if not isinstance(training, dict):
            break
        tuned = training.get("finetune")
        if isinstance(tuned, dict):
            held = tuned.get("val_frame_indices")
            rounds.append({**{k: tuned.get(k) for k in _ROUND_KEYS},
                           **({"val_frame_indices": held} if held else {})})
        training = training.get("base")
    return rounds


def _lattice_dict(res: AnalysisResult) -> dict | None:
    """The measured lattice: spacings [nm] and the Burgers vectors it allows [nm]."""
    lat = res.lattice
    if lat is None:
        return None
    b = lat.burgers_vectors()
    return {"d003_nm": float(1 / np.hypot(*lat.g003)),
            "in_layer_reflection_nm": None if lat.g_layer is None else float(1 / np.hypot(*lat.g_layer)),
            "misfit_burgers_nm": b["misfit"].round(4).tolist() if b else None,
            "basal_burgers_nm": b["basal"].round(4).tolist() if b else None,
            "track_h_from_lattice": bool(b) and res.lattice_h}


#: How the tables' floats are written to CSV.
CSV_FLOAT_FORMAT = "%.7g"


def refuse_a_file(out: str | Path) -> None:
    """Raises NotADirectoryError, naming the option, where the output folder ``out`` is a
    file (mkdir's own error shows internal paths)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"{option('out', str(out), text=True)} is a file; give a folder")


def check_parquet() -> None:
    """Raises ImportError, saying what to install, where pandas has no Parquet engine."""
    if not any(importlib.util.find_spec(engine) for engine in ("pyarrow", "fastparquet")):
        raise ImportError(f"Parquet output ({option('parquet', True)}) needs pyarrow: pip install "
                          "pyarrow (or, in a clone, pip install -e '.[parquet]')")


def write_tables(res: AnalysisResult, out: str | Path, *, parquet: bool = False) -> list[Path]:
    """Write every table as CSV (and optionally Parquet), plus summary.json, into ``out``
    (created if needed).

    Parameters
    ----------
    res : AnalysisResult
        An analysis (`analyze`, or a `AnalysisResult.relink` of one).
    out : str or Path
        The folder to write into (not an existing file).
    parquet : bool
        Also write each table as Parquet (needs the ``parquet`` extra).

    Returns
    -------
    list of Path
        The files written.
    """
    require_result(res, "write_tables")
    if parquet:
        check_parquet()  # before writing anything
    out = Path(out)
    refuse_a_file(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        df: pd.DataFrame = getattr(res, name)
        # The contract's columns; drift-corrected positions and rock-salt flags stay in memory.
        if name == "tracks":
            df = df.drop(columns=["x_corr", "y_corr"], errors="ignore")
        if name == "detections":
            df = df.drop(columns=["in_rocksalt", "at_specimen_edge"], errors="ignore")
        if name == "track_summary":  # as `analyze` names them; a result built otherwise too
            df = velocity_columns_as_written(df, res.calibration.frame_interval_s)
        p = out / f"{name}.csv"
        # Seven significant digits (0.001 px at 4096 px, 0.1 ms at 1000 s), not the 17 that
        # read back bit for bit: a spreadsheet shows 122.0005, not 122.00045870244038.
        # Parquet keeps the full values.
        df.to_csv(p, index=False, float_format=CSV_FLOAT_FORMAT)
        written.append(p)
        if parquet:
            df.to_parquet(out / f"{name}.parquet", index=False)
    p = out / "summary.json"
    p.write_text(json.dumps(summary_dict(res), indent=2) + "\n")
    written.append(p)
    return written
