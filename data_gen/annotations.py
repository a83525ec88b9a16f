"""The one annotation format of dislotrack (written by ``generate``, read by
``evaluate`` and ``finetune``; labs can write it for their own data).

For an image or movie ``<stem>``, in one folder:

* ``<stem>.tif`` (or ``.tiff``) -- float32 image or (t, y, x) stack, ImageJ-calibrated (nm, s);
* ``<stem>_cores.csv`` -- one row per core per frame: frame, x, y [px, pixel-centre
  origin], hx, hy (into the extra half-plane; any length, read as a unit vector),
  particle (a core's id over the frames); for a single image frame and particle may be
  left out (read as 0 and one id per core), for a movie particle (identities unknown:
  `UNKNOWN_PARTICLE`, and no identity switches scored); hx, hy may be left out or left
  empty in a row (h unknown: neither trained nor scored); optional bx_nm, by_nm, kind (single or
  dipole), partner (the dipole partner's particle, -1 for none);
* ``<stem>_rs.tif`` -- uint8 rock-salt mask, same shape as the image (optional);
* ``<stem>.json`` -- sidecar: format, version, pixel_size_nm, frame_interval_s,
  shape, and free-form ``source`` (generator settings for synthetic data).
"""

from __future__ import annotations

import glob
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from dislotrack.data_gen.text import first_few

FORMAT = "dislotrack-annotation"
VERSION = 1
REQUIRED_CORE_COLUMNS = ["frame", "x", "y", "hx", "hy", "particle"]
#: ``particle`` of a movie's cores annotated without identities (no particle column).
UNKNOWN_PARTICLE = -1


@dataclass
class Annotation:
    """One annotated image or movie."""

    image: np.ndarray  # (t, y, x) float32
    cores: pd.DataFrame
    rs_mask: np.ndarray | None  # (t, y, x) uint8 or None
    pixel_size_nm: float
    frame_interval_s: float | None
    source: dict


def write_imagej_tiff(path: str | Path, data: np.ndarray, *, pixel_size_nm: float,
                      frame_interval_s: float | None = None) -> None:
    """Write a (t, y, x) or (y, x) stack as an ImageJ TIFF calibrated in nm (and s)."""
    data = np.asarray(data)
    meta: dict = {"unit": "nm", "axes": "TYX" if data.ndim == 3 else "YX"}
    if frame_interval_s is not None and data.ndim == 3:
        meta["finterval"] = float(frame_interval_s)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel_size_nm, 1 / pixel_size_nm),
                     metadata=meta)


def write_annotation(folder: str | Path, stem: str, ann: Annotation) -> Path:
    """Write an annotation; returns the sidecar path.

    ``ann.cores`` needs the columns of `REQUIRED_CORE_COLUMNS`; for a single image
    ``frame`` may be left out (it is 0).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "frame" not in ann.cores.columns and (ann.image.ndim == 2 or len(ann.image) == 1):
        ann = replace(ann, cores=ann.cores.assign(frame=0))  # a single image (e.g. Sample.cores)
    missing = [c for c in REQUIRED_CORE_COLUMNS if c not in ann.cores.columns]
    if missing:
        raise ValueError(f"cores table lacks columns {missing}")
    write_imagej_tiff(folder / f"{stem}.tif", ann.image.astype(np.float32),
                      pixel_size_nm=ann.pixel_size_nm, frame_interval_s=ann.frame_interval_s)
    extra = [c for c in ann.cores.columns if c not in REQUIRED_CORE_COLUMNS]
    ann.cores[REQUIRED_CORE_COLUMNS + extra].to_csv(folder / f"{stem}_cores.csv", index=False)
    if ann.rs_mask is not None:
        write_imagej_tiff(folder / f"{stem}_rs.tif", ann.rs_mask.astype(np.uint8),
                          pixel_size_nm=ann.pixel_size_nm, frame_interval_s=ann.frame_interval_s)
    side = {"format": FORMAT, "version": VERSION, "pixel_size_nm": ann.pixel_size_nm,
            "frame_interval_s": ann.frame_interval_s, "shape": list(ann.image.shape),
            "source": ann.source}
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(side, indent=2, default=_jsonable))
    return path


def annotation_image(sidecar: str | Path) -> Path:
    """The image of the annotation ``<stem>.json``: ``<stem>.tif``, or ``<stem>.tiff`` where
    only that exists (the ``.tif`` path, to be named, where neither does)."""
    tif = Path(sidecar).with_suffix(".tif")
    tiff = tif.with_suffix(".tiff")
    return tiff if not tif.exists() and tiff.exists() else tif


def read_annotation(sidecar: str | Path) -> Annotation:
    """Read an annotation from its ``<stem>.json`` sidecar.

    **h** is normalised to a unit vector (labs may write any length); a single image's
    ``_cores.csv`` without ``frame`` or ``particle`` gets frame 0 and one particle per
    core.

    Raises
    ------
    ValueError
        Naming the file, if the sidecar or a table is malformed or its values are
        out of range (see `annotation_problems`).
    """
    sidecar = Path(sidecar)
    if not sidecar.is_file():
        raise FileNotFoundError(f"no annotation sidecar {sidecar}")
    if problem := _sidecar_problem(sidecar):
        raise ValueError(f"{sidecar} is not a {FORMAT} sidecar ({problem}): it needs "
                         f'"format": "{FORMAT}" and "pixel_size_nm" (README, annotation format)')
    side = json.loads(sidecar.read_text())
    version = side.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{sidecar}: version must be a whole number (e.g. {VERSION}), "
                         f"got {version!r}")
    if version > VERSION:
        raise ValueError(f"{sidecar}: annotation version {version}; this dislotrack "
                         f"reads version {VERSION} and older (update dislotrack)")
    stem = sidecar.with_suffix("")
    for need, hint in ((annotation_image(sidecar), "the image or stack, a grayscale TIFF"),
                       (Path(f"{stem}_cores.csv"), "write one with just the header line for an "
                                                   "image without cores")):
        if not need.exists():
            others = sorted(p.name for p in sidecar.parent.glob(f"{glob.escape(stem.name)}.*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p != need)
            found = (f"; found {', '.join(others)}: annotations need a .tif (or .tiff)"
                     if need.suffix == ".tif" and others else "")
            if need.suffix == ".csv" and (strays := stray_cores_tables(sidecar.parent)):
                found = (f"; {first_few(strays, 5)} in that folder belong(s) to no <stem>.json: "
                         f"if one is this item's, rename it {need.name}")
            raise ValueError(f"{sidecar}: no {need.name} next to it ({hint}){found}")
    image_path = annotation_image(sidecar)
    with tifffile.TiffFile(image_path) as tif:
        if "S" in tif.series[0].axes:  # samples per pixel: RGB(A), not a (t, y, x) stack
            raise ValueError(f"{image_path} is a colour image (axes {tif.series[0].axes}); "
                             "annotations need a grayscale image or stack")
        image = tif.asarray().astype(np.float32)
        tif_px = imagej_pixel_size_nm(tif)
    if image.ndim == 2:
        image = image[None]
    try:
        px = float(side["pixel_size_nm"])
    except (KeyError, TypeError, ValueError):
        px = float("nan")
    if "pixel_size_nm" not in side:
        told = (f"; {image_path.name}'s own calibration says {tif_px:g} nm/px: add "
                f'"pixel_size_nm": {tif_px:g}' if tif_px else "")
        raise ValueError(f"{sidecar}: no pixel_size_nm (the image's nm per pixel); it has "
                         f"{', '.join(sorted(side)) or 'no keys'}{told}")
    if not (np.isfinite(px) and px > 0):
        raise ValueError(f"{sidecar}: pixel_size_nm must be a positive number [nm/px], "
                         f"got {side.get('pixel_size_nm')!r}")
    if tif_px is not None and abs(tif_px / px - 1) > PIXEL_SIZE_TOLERANCE:
        # One of them is a typo; training or scoring at the wrong one is silently wrong.
        raise ValueError(f"{sidecar}: pixel_size_nm {px:g} disagrees with {image_path.name}'s own "
                         f"calibration, {tif_px:g} nm/px (ImageJ); correct whichever is wrong")
    cores = read_cores_table(Path(f"{stem}_cores.csv"))
    found = list(cores.columns)
    if len(image) == 1:  # one image: its frame is 0, and each core is its own particle
        cores = cores.assign(**{k: v for k, v in (("frame", 0), ("particle", np.arange(len(cores))))
                                if k not in cores.columns})
    elif "particle" not in cores.columns:  # cores clicked frame by frame: identities unknown
        cores = cores.assign(particle=UNKNOWN_PARTICLE)
    if hint := _unread_columns(found):
        warnings.warn(f"{stem.name}_cores.csv: {hint}", stacklevel=2)
    if "hx" not in cores.columns and "hy" not in cores.columns:  # positions only: h unknown
        cores = cores.assign(hx=np.nan, hy=np.nan)
    missing = [c for c in REQUIRED_CORE_COLUMNS if c not in cores.columns]
    if missing:
        raise ValueError(f"{stem}_cores.csv lacks columns {missing}: it has {found}"
                         + "".join(f"; {hint}" for hint in _position_hints(found, missing, px))
                         + f"; the header needs {','.join(REQUIRED_CORE_COLUMNS)} (positions in px, "
                         "h the direction into the extra half-plane (may be left out), particle "
                         "a core's id over the frames; a single image may leave out frame and "
                         "particle, a movie particle: identities unknown)")
    rs_path = Path(f"{stem}_rs.tif")
    rs = _read_mask(rs_path) if rs_path.exists() else None
    numeric = [c for c in REQUIRED_CORE_COLUMNS
               if len(cores) and not pd.api.types.is_numeric_dtype(cores[c])]
    if numeric:
        raise ValueError(f"{stem}_cores.csv has non-numeric values in columns {numeric}")
    ann = Annotation(image, cores, rs, px, side.get("frame_interval_s"), side.get("source", {}))
    problems = annotation_problems(ann, declared_shape=side.get("shape"))
    if problems:
        raise ValueError(f"{sidecar}: " + "; ".join(problems))
    if hint := _positions_in_nm(cores, image.shape, px):
        warnings.warn(f"{stem.name}_cores.csv: {hint}", stacklevel=2)
    generated = isinstance(ann.source, dict) and "generator" in ann.source  # labelled in full
    if not generated and (hint := _frames_left_unannotated(cores, len(image))):
        warnings.warn(f"{stem.name}_cores.csv: {hint}", stacklevel=2)
    norm = np.hypot(cores.hx, cores.hy)
    ann.cores = cores.assign(hx=cores.hx / norm, hy=cores.hy / norm)
    return ann


#: Other names of a core's position columns, by the column they stand for, and whether
#: they are in nm (to be divided by the pixel size).
_POSITION_ALIASES = {"x": (("x_nm", True), ("x_px", False), ("col", False), ("column", False),
                           ("xpos", False), ("x_pixel", False)),
                     "y": (("y_nm", True), ("y_px", False), ("row", False), ("ypos", False),
                           ("y_pixel", False))}


def _position_hints(found: list[str], missing: list[str], pixel_size_nm: float) -> list[str]:
    """How to turn a table's position columns under another name into x, y [px]."""
    hints = []
    lower = {c.lower(): c for c in found}
    for target in ("x", "y"):
        if target not in missing:
            continue
        for alias, in_nm in _POSITION_ALIASES[target]:
            if alias in lower:
                name = lower[alias]
                hints.append(f"{name} in nm: divide it by pixel_size_nm ({pixel_size_nm:g}) and name "
                             f"it {target}" if in_nm else f"if {name} is the position in pixels "
                             f"(from the centre of the top-left pixel), name it {target}")
                break
    return hints


#: Column names that look like a core's h under another name (lower case, without "_",
#: "-" and spaces), and words that suggest it as an angle.
_H_LOOKALIKES = {"hvx", "hvy", "hxnm", "hynm", "hdx", "hdy", "dirx", "diry", "directionx",
                 "directiony", "ux", "uy", "nx", "ny"}
_ANGLE_WORDS = ("angle", "theta", "phi", "orient", "direction")


def _unread_columns(columns: list[str]) -> str | None:
    """A sentence naming the columns of a ``_cores.csv`` that nothing reads (a core's h
    under another name would be dropped without a word), else None."""
    unread = [c for c in columns if c not in CORE_COLUMNS_KNOWN and not c.startswith("Unnamed: ")]
    if not unread:
        return None
    said = f"columns {unread} are not read (known: {', '.join(CORE_COLUMNS_KNOWN)})"
    if "hx" in columns or "hy" in columns:
        return said
    key = {c: c.lower().replace("_", "").replace("-", "").replace(" ", "") for c in unread}
    like_h = [c for c in unread if key[c] in _H_LOOKALIKES or key[c].startswith(("hx", "hy"))]
    angles = [c for c in unread if any(w in key[c] for w in _ANGLE_WORDS)]
    if like_h:
        said += (f"; {', '.join(like_h)} look like h: name them hx, hy (a unit vector into the "
                 "extra half-plane, image axes, y down)")
    elif angles:
        said += (f"; for h, convert {', '.join(angles)} to hx, hy (a unit vector into the extra "
                 "half-plane, image axes, y down)")
    return said + "; without hx, hy every core's h is unknown"


def stray_cores_tables(folder: str | Path) -> list[str]:
    """The ``<stem>_cores.csv`` files of ``folder`` beside which there is no ``<stem>.json``
    (misnamed, or a sidecar forgotten), sorted."""
    return sorted(p.name for p in Path(folder).glob("*_cores.csv")
                  if not p.with_name(p.name[: -len("_cores.csv")] + ".json").exists())


#: Every column a ``_cores.csv`` may have (`read_cores_table` reads them in any case).
CORE_COLUMNS_KNOWN = (*REQUIRED_CORE_COLUMNS, "bx_nm", "by_nm", "kind", "partner")


def read_cores_table(path: Path) -> pd.DataFrame:
    """A ``_cores.csv`` table, its column names stripped.

    Read as a spreadsheet may save it: comma-separated, or where the header has no comma,
    semicolon- or tab-separated (European Excel), with decimal commas there; the known
    columns (`CORE_COLUMNS_KNOWN`) in any case (``X``, ``Y``) where that names each
    once. An ImageJ/Fiji Results table (``X``, ``Y`` beside ``Slice`` or its unnamed row
    number) is refused, saying how to convert it: its positions may be calibrated (nm),
    put pixel centres at .5, and its slices count from 1.

    Raises
    ------
    ValueError
        Naming the file: unreadable, or an ImageJ Results table.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV table: {err}") from None
    header, body = (lines[0] if lines else ""), "\n".join(lines[1:])
    sep = next((c for c in (";", "\t") if "," not in header and c in header), ",")
    decimal = "," if sep != "," and "," in body else "."
    try:  # "frame, x, y" as typed by hand reads as frame, x, y
        cores = pd.read_csv(path, skipinitialspace=True, sep=sep, decimal=decimal, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV table: {err}") from None
    cores.columns = [str(c).strip() for c in cores.columns]
    names = list(cores.columns)
    unnamed = bool(names) and (names[0] == "" or names[0].startswith("Unnamed: "))
    if {"X", "Y"} <= set(names) and ("Slice" in names or unnamed):
        shown = ", ".join(repr(c) if not c or c.startswith("Unnamed: ") else c for c in names)
        raise ValueError(
            f"{path} looks like an ImageJ/Fiji Results table (columns {shown}), which is "
            "not read as it is: ImageJ gives X, Y in the image's calibrated unit (nm where it is "
            "calibrated: measure with the scale removed, or divide by pixel_size_nm) with pixel "
            "centres at .5 (dislotrack's are at whole pixels: subtract 0.5), and counts Slice "
            "from 1; write the header x,y (frame = Slice - 1 for a movie; hx,hy where known) "
            "and leave out the row numbers")
    folded = [c.lower() if c.lower() in CORE_COLUMNS_KNOWN else c for c in names]
    if len(set(folded)) == len(folded):  # X and x both: left as they are (named as found)
        cores.columns = folded
    return cores


#: Largest relative difference between a sidecar's pixel size and its TIFF's own.
PIXEL_SIZE_TOLERANCE = 0.02

#: ImageJ length units [nm] (as ImageJ and common tools write them); others are not checked.
_IMAGEJ_UNITS_NM = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0,
                    "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3, "microns": 1e3,
                    "micrometer": 1e3, "micrometre": 1e3, "å": 0.1, "Å": 0.1, "a": 0.1, "ang": 0.1,
                    "angstrom": 0.1, "angstroms": 0.1, "ångström": 0.1, "pm": 1e-3}


def imagej_pixel_size_nm(tif: tifffile.TiffFile) -> float | None:
    """The pixel size [nm/px] of an ImageJ-calibrated TIFF, else None.

    From its unit and XResolution tag; None also for a unit not in ``_IMAGEJ_UNITS_NM``
    (where infer may still read one: then the annotation check is skipped).

    Parameters
    ----------
    tif : tifffile.TiffFile
        Open file.

    Returns
    -------
    float or None
    """
    if not tif.is_imagej:
        return None
    unit = tif.imagej_metadata.get("unit")
    if isinstance(unit, str) and "\\u" in unit:
        unit = unit.encode().decode("unicode_escape")  # ImageJ writes "\\u00B5m" for µm
    scale = _IMAGEJ_UNITS_NM.get(unit.lower()) if isinstance(unit, str) else None
    tag = tif.pages.first.tags.get("XResolution")
    if scale is None or tag is None:
        return None
    num, den = tag.value
    return scale * den / num if num > 0 and den > 0 else None


#: Image files a lab may have saved instead of the TIFF an annotation needs.
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".dm3", ".dm4", ".emd", ".mrc"}


def _read_mask(path: Path) -> np.ndarray:
    """A rock-salt mask as (t, y, x) uint8 0/1: any two levels, the higher one rock salt
    (ImageJ writes binary masks as 0/255); more levels are refused."""
    raw = tifffile.imread(path)
    levels = np.unique(raw)
    if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
        shown = ", ".join(str(v) for v in levels[:5]) + (", ..." if len(levels) > 5 else "")
        raise ValueError(f"{path} is not a binary mask: values {shown} (expected 0 for no rock salt "
                         "and one value, e.g. 1 or 255, for rock salt)")
    mask = (raw > 0).astype(np.uint8)
    return mask[None] if mask.ndim == 2 else mask


def annotation_problems(ann: Annotation, *, declared_shape: object = None) -> list[str]:
    """What is out of range in an annotation (empty if nothing).

    Checked: the image is (t, y, x) and matches the sidecar's ``shape`` and the
    rock-salt mask; ``frame_interval_s`` is null or positive; every core has a frame
    of the stack, a position inside the image (pixel-centre origin, so x in
    [-0.5, width - 0.5]), a non-zero finite **h** or none (hx and hy both empty) and an
    integer particle.

    Parameters
    ----------
    ann : Annotation
        As read (image promoted to (t, y, x)).
    declared_shape : list, optional
        The sidecar's ``shape``; a single image may declare (y, x).

    Returns
    -------
    list of str
        One message per problem; ``_cores.csv`` ones name their data rows.
    """
    if ann.image.ndim != 3:
        return [f"image has {ann.image.ndim} dimensions, expected (y, x) or (t, y, x)"]
    problems = []
    t, h, w = ann.image.shape
    agree = [[t, h, w]] + ([[h, w]] if t == 1 else [])  # a single image may be declared (y, x)
    if declared_shape is not None and (not isinstance(declared_shape, list) or declared_shape not in agree):
        problems.append(f"shape {declared_shape!r} disagrees with the image's {[t, h, w]}")
    if ann.rs_mask is not None and ann.rs_mask.shape != ann.image.shape:
        problems.append(f"rock-salt mask shape {list(ann.rs_mask.shape)} differs from "
                        f"the image's {[t, h, w]}")
    dt = ann.frame_interval_s
    if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float))
                           or not (np.isfinite(dt) and dt > 0)):
        problems.append(f"frame_interval_s must be null or a positive number [s], got {dt!r}")
    return problems + _core_problems(ann.cores, (t, h, w))


def _frames_left_unannotated(c: pd.DataFrame, n_frames: int) -> str | None:
    """Why a stack looks annotated on some frames only (e.g. every fifth), else None: at
    least 2, and a quarter or more, of the frames between its first and last annotated
    one hold no core. Such frames train and score as frames without dislocations."""
    if n_frames < 3 or not len(c):
        return None
    held = np.unique(c["frame"].to_numpy(int))
    span = np.arange(held[0], held[-1] + 1)
    empty = np.setdiff1d(span, held)
    if len(empty) < 2 or len(empty) < 0.25 * len(span):
        return None
    return (f"{len(empty)} of the frames between the first and last annotated one ({held[0]} "
            f"and {held[-1]}) hold no core ({first_few([str(f) for f in empty], 5)}): each "
            "frame of a stack is read as fully annotated, so these train and score as "
            "frames without dislocations; if they were not annotated, leave them out of "
            "the stack (save the annotated frames alone)")


def units_checkable(c: pd.DataFrame, pixel_size_nm: float) -> bool:
    """Whether `_positions_in_nm` can tell positions in nm from positions in px: a frame
    holds at least 3 cores, and a pixel is under 0.5 nm (the image's extent in nm is then
    under half of it in px)."""
    return bool(len(c)) and c.groupby("frame").size().max() >= 3 and pixel_size_nm < 0.5


def positions_look_like_nm(ann: Annotation) -> bool:
    """Whether the cores' x, y [px] of ``ann`` look like nm (`_positions_in_nm`)."""
    return _positions_in_nm(ann.cores, ann.image.shape, ann.pixel_size_nm) is not None


def _positions_in_nm(c: pd.DataFrame, shape: tuple[int, int, int], pixel_size_nm: float) -> str | None:
    """Why the cores' x, y [px] look like nm, else None: a frame holds at least 3 cores,
    all positions lie within the image's extent in nm (under half of it in px) and spread
    over a quarter of that extent or more, as positions in nm across the image would."""
    _, h, w = shape
    if not units_checkable(c, pixel_size_nm):
        return None
    x_nm, y_nm = (w - 0.5) * pixel_size_nm + 0.5, (h - 0.5) * pixel_size_nm + 0.5
    if c.x.max() > x_nm or c.y.max() > y_nm:
        return None
    if max(np.ptp(c.x) / x_nm, np.ptp(c.y) / y_nm) < 0.25:  # a small patch near the corner
        return None
    return (f"all {len(c)} positions lie within x <= {c.x.max():.3g}, y <= {c.y.max():.3g}, the "
            f"image's size in nm ({w * pixel_size_nm:.3g} x {h * pixel_size_nm:.3g}) of its "
            f"{w} x {h} px: positions must be in pixels; are these in nm?")


def _core_problems(c: pd.DataFrame, shape: tuple[int, int, int]) -> list[str]:
    """Out-of-range values of a cores table for a (t, y, x) image, naming the rows."""
    if not len(c):
        return []
    t, h, w = shape
    norm = np.hypot(c.hx, c.hy)
    checks = {
        f"frame not one of 0..{t - 1}": ~(c.frame.between(0, t - 1) & (c.frame % 1 == 0)),
        f"x missing or outside the image [-0.5, {w - 0.5}] px": ~c.x.between(-0.5, w - 0.5),
        f"y missing or outside the image [-0.5, {h - 0.5}] px": ~c.y.between(-0.5, h - 0.5),
        # both hx and hy empty: h unknown (not trained or scored); one alone is a slip
        "h zero, not finite or half given": ~((np.isfinite(norm) & (norm > 0))
                                              | (c.hx.isna() & c.hy.isna())),
        "particle not an integer": ~(np.isfinite(c.particle) & (c.particle % 1 == 0)),
    }
    if c.frame.min() == 1 and c.frame.max() == t:
        checks[f"frame not one of 0..{t - 1} (frames count from 0; these look counted from 1)"] = (
            checks.pop(f"frame not one of 0..{t - 1}"))
    problems = []
    for what, bad in checks.items():
        if bad.any():  # data rows counted from 1 below the header (blank lines skipped)
            rows = first_few([str(i + 1) for i in np.flatnonzero(bad.to_numpy())], 5)
            problems.append(f"_cores.csv {what} in data row(s) {rows}")
    return problems


def _sidecar_problem(path: Path) -> str | None:
    """None if ``path`` is an annotation sidecar, else why it is not."""
    try:
        side = json.loads(path.read_text())
    except json.JSONDecodeError as err:  # where: a trailing comma is the usual slip
        return f"not valid JSON: {err}"
    except (OSError, UnicodeDecodeError):
        return "not valid JSON"
    fmt = side.get("format") if isinstance(side, dict) else None
    return None if fmt == FORMAT else f"format {fmt!r}, not {FORMAT!r}"


def find_annotations(folder: str | Path) -> list[Path]:
    """All annotation sidecars in a folder (sorted); other .json files are skipped with a
    warning that names them (a sidecar with a typo would otherwise vanish unnoticed), or
    listed all the same where a ``<stem>_cores.csv`` beside one shows it was meant as a
    sidecar (`read_annotation` then refuses it, saying why)."""
    out, skipped = [], []
    for p in sorted(Path(folder).glob("*.json")):
        # Beside a _cores.csv it was meant as one: `read_annotation` then says what is wrong.
        if _sidecar_problem(p) is None or p.with_name(f"{p.stem}_cores.csv").exists():
            out.append(p)
        else:
            skipped.append(f"{p.name} ({_sidecar_problem(p)})")
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} .json file(s) that are not annotations: "
                      + "; ".join(skipped), stacklevel=2)
    return out


def is_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is an annotation sidecar (a .json file of this `FORMAT`)."""
    p = Path(path)
    return p.suffix.lower() == ".json" and p.is_file() and _sidecar_problem(p) is None


def mask_sidecar(path: str | Path) -> Path | None:
    """The sidecar whose rock-salt mask ``path`` is (``<stem>_rs.tif`` next to
    ``<stem>.json``), else None."""
    p = Path(path)
    if not p.name.lower().endswith("_rs.tif"):
        return None
    side = p.with_name(p.name[: -len("_rs.tif")] + ".json")
    return side if is_sidecar(side) else None


def _jsonable(o: object) -> object:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")
