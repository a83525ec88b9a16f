"""Open microscope movies lazily behind one `Movie` interface.

``open_movie(path)`` returns a `Movie`: ``len(movie)`` frames of shape (H, W),
each read from disk only when asked for, as float32 (colour -> luminance), plus
the `Calibration` found in the file's metadata (source "file"; "annotation" for what
an annotated image's ``<stem>.json`` adds) and a small
metadata dict whose ``notes`` say what was assumed (also ``calibration.notes``, for
summary.json).

=====================  ===========================================================
input                  how
=====================  ===========================================================
.tif/.tiff (OME)       tifffile, frame by frame (plain reads at each frame's offset,
                       or page by page). Pixel size and frame
                       interval from OME (PhysicalSizeX, TimeIncrement or DeltaT),
                       ImageJ (unit + XResolution, finterval), vendor tags (DM,
                       FEI, ... via rosettasciio) or cm/inch resolution tags.
.dm3/.dm4, .emd,       rosettasciio with ``lazy=True`` (dask); axis scales and
.ser/.emi, .mrc,       units, a time axis or TIA per-frame clock if present.
.hspy (HyperSpy)
.mp4/.avi              imageio + PyAV; frame interval = *playback* interval.
.png/.jpg/.jpeg        a single frame (an animated PNG: its frames) without calibration.
.npy                   a (y, x) or (t, y, x) NumPy array, memory-mapped, without
                       calibration (never unpickled: object arrays are refused).
.hdf5/.h5/.hdf         a HyperSpy file (rosettasciio, calibrated) or any HDF5 file:
                       its largest (y, x) or (t, y, x) dataset, read frame by
                       frame with h5py, without calibration.
folder                 one frame per file (PNG/JPEG/TIFF/DM3/DM4), natural order;
                       a folder tree (GMS in-situ recording) is searched when the
                       top level holds no frames (refused where it holds fewer than
                       the tree); the DM acquisition clock gives the frame interval
                       (median step). Frames that differ in pixel size, bit depth
                       or colour mode are warned about.
=====================  ===========================================================

`Movie` itself is in `dislotrack.infer.movie`, the TIFF reader in
`dislotrack.infer.read_tiff`.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import json
import logging
import os
import re
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from dislotrack.data_gen.annotations import PIXEL_SIZE_TOLERANCE, annotation_image, is_sidecar
from dislotrack.data_gen.text import first_few
from dislotrack.infer.calibration import (
    FROM_ANNOTATION_NOTE,
    RECIPROCAL_NOTE,
    Calibration,
    check_positive,
    interval_from_timestamps,
    length_nm_or_none,
    non_increasing_warning,
    seconds_or_none,
    square_pixel_size,
    stack_axis_warning,
    uneven_steps_warning,
)
from dislotrack.infer.interface import option
from dislotrack.infer.movie import READ_ERRORS, Movie, close_lazy_array
from dislotrack.infer.read_tiff import EAGER_LIMIT_BYTES, open_tiff

logger = logging.getLogger(__name__)

_TIFF = (".tif", ".tiff")
_IMAGE = (".png", ".jpg", ".jpeg")
_VIDEO = (".mp4", ".avi")
_RSCIIO = {
    ".dm3": ("rsciio.digitalmicrograph", "DigitalMicrograph"),
    ".dm4": ("rsciio.digitalmicrograph", "DigitalMicrograph"),
    ".emd": ("rsciio.emd", "EMD"),
    ".ser": ("rsciio.tia", "TIA"),
    ".emi": ("rsciio.tia", "TIA"),
    ".mrc": ("rsciio.mrc", "MRC"),
    ".hspy": ("rsciio.hspy", "HyperSpy"),
}
_NUMPY = (".npy",)
_HDF5 = (".hdf5", ".h5", ".hdf")
#: Smallest side [px] of an HDF5 dataset taken for an image (smaller ones are metadata).
_MIN_IMAGE_SIDE = 16
SUPPORTED_EXTENSIONS = tuple(sorted({*_TIFF, *_IMAGE, *_VIDEO, *_RSCIIO, *_NUMPY, *_HDF5}))
FRAME_EXTENSIONS = (*_TIFF, *_IMAGE, ".dm3", ".dm4")
_FRAME_KIND = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG",
               ".dm3": "DM", ".dm4": "DM"}
_FILETIME_TO_UNIX_S = 11644473600.0


def open_movie(path: str | Path, *, signal: int | str | None = None) -> Movie:
    """Open a movie, image or folder of frames for lazy reading.

    Parameters
    ----------
    path : str or Path
        A file with one of `SUPPORTED_EXTENSIONS`, or a folder of frames.
    signal : int or str, optional
        For files holding several images (multi-detector Velox EMD, DM with
        several images, generic HDF5): index or title (HDF5: dataset path) of the
        image to read; default the first (generic HDF5: the largest).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Unsupported extension, empty folder, frames of differing shapes, or a
        file holding no 2-D image.
    ImportError
        Naming the file and the package to install, where reading it needs an optional
        package (e.g. ``sparse`` for a Velox EMD with an EDS spectrum image).
    """
    path = Path(path)
    movie = _with_annotation_calibration(_open(path, signal))
    # The reader's notes travel with the calibration into the result (summary.json input.notes).
    movie = movie.with_calibration(dataclasses.replace(
        movie.calibration, notes=tuple(movie.metadata.get("notes", ()))))
    if any(RECIPROCAL_NOTE in n for n in movie.metadata.get("notes", ())):
        # a warning too: a --pixel-size given would hide the note that explains it
        movie.metadata.setdefault("warnings", []).append(
            f"the image axes are calibrated in reciprocal units: {RECIPROCAL_NOTE}, so "
            "what it finds here means nothing")
    if signal is not None and "signals" not in movie.metadata:  # a format of one image (stack)
        movie.metadata.setdefault("warnings", []).append(
            f"{option('signal', signal, text=isinstance(signal, str))} was ignored: "
            f"{movie.metadata.get('format', 'this')} input has no images to choose from")
    return movie


def _with_annotation_calibration(movie: Movie) -> Movie:
    """``movie`` with what its file lacks (pixel size, frame interval) taken from the
    annotation sidecar beside it (``<stem>.json``, format dislotrack-annotation), where
    there is one: a lab's annotated images need no second calibration (source
    "annotation", and a calibration note names the sidecar). Where the file has its own
    pixel size or frame interval and the sidecar says another
    (`annotation_pixel_size_conflict`), the file's is kept and a note says so."""
    cal, side = movie.calibration, movie.path.with_suffix(".json")
    if not is_sidecar(side):
        return movie
    meta = json.loads(side.read_text())
    taken, notes = {}, list(cal.warnings)
    for key in ("pixel_size_nm", "frame_interval_s"):
        if conflict := _calibration_conflict(cal, meta.get(key), side, key):
            notes.append(f"{conflict}: the file's is used")
    for key, have, unit in (("pixel_size_nm", cal.pixel_size_nm, "nm/px"),
                            ("frame_interval_s", cal.frame_interval_s, "s")):
        if have is None and meta.get(key) is not None:
            try:
                taken[key] = check_positive(meta[key], f"{side.name}'s {key}", unit)
            except ValueError as err:  # `read_annotation` refuses it; here it is just not used
                notes.append(f"{err}: not used")
    if taken:
        said = " and ".join(f"{k} {v:g}" for k, v in taken.items())
        notes.append(f"{said} from the annotation {side.name} {FROM_ANNOTATION_NOTE}")
    if notes == list(cal.warnings):
        return movie
    px, dt = (taken.get(k, getattr(cal, k)) for k in ("pixel_size_nm", "frame_interval_s"))
    source = lambda key, value: None if value is None else "annotation" if key in taken else "file"  # noqa: E731
    return movie.with_calibration(Calibration(
        pixel_size_nm=px, frame_interval_s=dt, pixel_size_source=source("pixel_size_nm", px),
        frame_interval_source=source("frame_interval_s", dt), warnings=tuple(notes)))


def _calibration_conflict(cal: Calibration, said: object, side: Path,
                         key: str = "pixel_size_nm") -> str | None:
    """Why a sidecar's ``key`` (``pixel_size_nm`` or ``frame_interval_s``; its value
    ``said``) and the file's own disagree by more than `PIXEL_SIZE_TOLERANCE`, else None."""
    have, unit = ((cal.pixel_size_nm, "nm/px") if key == "pixel_size_nm" else
                  (cal.frame_interval_s, "s"))
    source = cal.pixel_size_source if key == "pixel_size_nm" else cal.frame_interval_source
    if have is None or source != "file":
        return None
    try:
        said = float(said)
    except (TypeError, ValueError):
        return None  # missing or malformed: `read_annotation` names it
    if not said > 0 or abs(have / said - 1) <= PIXEL_SIZE_TOLERANCE:
        return None
    return f"{side.name} says {key} {said:g}, the file's own calibration {have:.4g} {unit}"


def annotation_pixel_size_conflict(sidecar: str | Path,
                                   calibration: Calibration | None = None) -> str | None:
    """Where an annotation's ``pixel_size_nm`` and its image file's own calibration (as
    infer reads it: ImageJ, OME, vendor tags) differ by more than
    `dislotrack.data_gen.annotations.PIXEL_SIZE_TOLERANCE`, a message naming both, else
    None (also where the file has no calibration of its own).

    ``read_annotation`` compares with ImageJ calibrations only; infer would analyse such an
    image at the file's scale while fine-tuning used the annotation's. ``calibration``:
    the image's as `open_movie` gives it, where the caller has it open (the sidecar only
    fills what the file lacks, so a ``"file"`` source is the file's own); else the image
    is opened here.
    """
    sidecar = Path(sidecar)
    image = annotation_image(sidecar)
    if not image.is_file() or not is_sidecar(sidecar):
        return None
    if calibration is None:
        with _open(image, None) as movie:  # the file's calibration, before any sidecar's
            calibration = movie.calibration
    conflict = _calibration_conflict(calibration,
                                     json.loads(sidecar.read_text()).get("pixel_size_nm"), sidecar)
    return None if conflict is None else f"{image}: {conflict}; correct whichever is wrong"


def check_readable(path: Path) -> None:
    """Refuse, before anything is read, a file that is empty or of a type no reader takes.

    Raises
    ------
    ValueError
        Naming the file and, for an unknown type, the supported extensions.
    """
    if path.is_dir():
        return
    if path.stat().st_size == 0:  # e.g. an interrupted copy: say so, not the parser's riddle
        raise ValueError(f"{path} is empty (0 bytes)")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        archive = ext in (".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz")
        raise ValueError(
            f"unsupported file type {ext or '(none)'!r} for {path.name}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}, or a folder of frames"
            + ("; an archive: unpack it and pass the file or folder inside" if archive else "")
        )


def _open(path: Path, signal: int | str | None) -> Movie:
    if path.is_dir():
        return _open_folder(path, signal)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    check_readable(path)
    ext = path.suffix.lower()
    # Before the library reads: its words for a cut file are a riddle ("unpack requires a
    # buffer of 1 bytes"), or come only when frame 0 is read (MRC's memory map).
    if (short := _truncation(path, ext)) is not None:
        raise ValueError(short)
    try:
        if ext in _TIFF:
            return open_tiff(path)
        if ext in _RSCIIO:
            return _open_rsciio(path, *_RSCIIO[ext], signal=signal)
        if ext in _VIDEO:
            return _open_video(path)
        if ext in _NUMPY:
            return _open_numpy(path)
        if ext in _HDF5:
            return _open_hdf5(path, signal=signal)
        return _open_image(path)
    # A damaged or mislabelled file: the reading library's error, with the file named.
    except READ_ERRORS as err:
        if isinstance(err, ValueError) and (str(path) in str(err) or path.name in str(err)):
            raise  # ours, already naming the file
        raise ValueError(f"{path}: cannot be read as {ext[1:].upper()}: {err}"
                         f"{_damage_hint(err)}") from err


#: What readers say when they run out of a file's bytes (struct, mmap, NumPy, PyAV, HDF5).
_CUT_SHORT = ("mmap length", "array element with a sequence", "can not handle the given uri",
              "initializing plugin", "truncated", "unexpected end")
#: Ends the message of a file that failed on reading its data, as the TIFF reader's do.
DAMAGED_HINT = " (a truncated or damaged file? an incomplete copy?)"


def _damage_hint(err: BaseException) -> str:
    """`DAMAGED_HINT` where ``err`` is a library running out of a file's bytes, else ""."""
    said = str(err).lower()
    if isinstance(err, (struct.error, EOFError)) or any(s in said for s in _CUT_SHORT):
        return DAMAGED_HINT
    return ""


def _truncation(path: Path, ext: str) -> str | None:
    """Where a .npy, .mrc, .dm3/.dm4 or .ser file is shorter than its own header says, why
    (one line, naming the file); else None (also where the header cannot be parsed: the
    reader then says what is wrong)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(1024)
            need = {".npy": _npy_bytes, ".mrc": _mrc_bytes, ".dm3": _dm_bytes,
                    ".dm4": _dm_bytes, ".ser": _ser_bytes}.get(ext, lambda *_: None)(head, f)
    except struct.error:  # the file ends within the fixed header its format begins with
        return f"{path}: truncated: its {size} bytes end within its header (an incomplete write or copy?)"
    except (ValueError, OSError, EOFError, OverflowError):
        return None
    if need is None or size >= need[0]:
        return None
    return (f"{path}: truncated: its header says {need[1]} ({need[0]} bytes in all) but the file "
            f"holds {size} bytes (an incomplete write or copy?)")


def _npy_bytes(head: bytes, f) -> tuple[int, str] | None:
    """Bytes a .npy file needs (header + data) and what its header says."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    fmt = np.lib.format
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:  # pickled objects: their size is not in the header
        return None
    return f.tell() + int(np.prod(shape)) * dtype.itemsize, f"{dtype} {shape}"


#: MRC modes and their bytes per value (101: 4-bit packed, half a byte).
_MRC_ITEMSIZE = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 0.5}


def path_size(f) -> int:
    """Size [bytes] of the open file ``f``."""
    return os.fstat(f.fileno()).st_size


def _mrc_bytes(head: bytes, f) -> tuple[int, str] | None:
    """Bytes an MRC file needs: 1024-byte header + extended header (NSYMBT) + NX*NY*NZ values."""
    for order in "<>":  # the machine stamp is often unset: the order whose mode is known
        nx, ny, nz, mode = struct.unpack(order + "4i", head[:16])
        if mode in _MRC_ITEMSIZE and min(nx, ny, nz) > 0:
            next_bytes = struct.unpack(order + "i", head[92:96])[0]
            data = int(nx * ny * nz * _MRC_ITEMSIZE[mode])
            extended = f" after a {next_bytes}-byte extended header" if next_bytes > 0 else ""
            return 1024 + max(next_bytes, 0) + data, f"{nz} x {ny} x {nx} values of mode {mode}{extended}"
    return None


def _dm_bytes(head: bytes, f) -> tuple[int, str] | None:
    """Bytes a DM3/DM4 file needs: its header and the tag tree whose length it gives."""
    version = struct.unpack(">i", head[:4])[0]
    if version == 3:
        return 12 + struct.unpack(">I", head[4:8])[0], "a DM3 tag tree"
    if version == 4:
        return 16 + struct.unpack(">Q", head[4:12])[0], "a DM4 tag tree"
    return None


def _ser_bytes(head: bytes, f) -> tuple[int, str] | None:
    """Bytes a TIA .ser file of 2-D elements needs: up to the end of its last element's data
    (its offset table, then that element's calibration, type, size and values)."""
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        return None
    version, data_type, _, _, valid = struct.unpack(order + "HiiiI", head[4:22])
    wide = version >= 0x220  # 64-bit offsets
    table = struct.unpack(order + ("q" if wide else "i"), head[22:30 if wide else 26])[0]
    if data_type != 0x4122 or valid == 0:  # 1-D spectra: not images, the reader says so
        return None
    f.seek(table)
    step = 8 if wide else 4
    raw = f.read(valid * step)
    if len(raw) < valid * step:
        return table + valid * step, f"{valid} image(s) with an offset table"
    last = max(struct.unpack(f"{order}{valid}{'q' if wide else 'i'}", raw))
    if last + 50 > path_size(f):  # cut before the last image's own header
        return last + 50, f"{valid} image(s), the last starting at byte {last}"
    f.seek(last + 40)  # two axes' calibration: offset, delta (float64) and element (int32)
    kind, nx, ny = struct.unpack(order + "hii", f.read(10))
    itemsize = {1: 1, 2: 2, 3: 4, 4: 1, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 16}.get(kind)
    if itemsize is None:
        return None
    return last + 50 + nx * ny * itemsize, f"{valid} image(s), the last of {ny} x {nx}"


# --- rosettasciio formats (DM, EMD, TIA, MRC) ------------------------------------------------


#: Direct Electron's own movie names (``20250429_06699_0_movie.mrc``), which rosettasciio
#: pairs with their ``_info.txt`` itself.
_DE_MOVIE_NAME = re.compile(r"\d{8}_\d+(?:_.*)?_movie\.mrc")


def de_info_file(path: Path) -> Path | None:
    """The Direct Electron metadata (``<stem>_info.txt``: pixel size, frame rate) of an MRC
    movie whose name rosettasciio does not pair with it itself (it looks only beside
    ``YYYYMMDD_NNNNN[_...]_movie.mrc``): ``<stem>_info.txt`` or, for ``<name>_movie.mrc``,
    ``<name>_info.txt``; None where there is none, or rosettasciio finds it."""
    if path.suffix.lower() != ".mrc":
        return None
    try:  # rosettasciio's private pattern; its own names if it moves
        from rsciio.mrc._api import MOVIE_RE
    except ImportError:
        MOVIE_RE = _DE_MOVIE_NAME  # noqa: N806
    if MOVIE_RE.fullmatch(path.name):
        return None  # rosettasciio's own pairing
    stems = [path.stem] + ([path.stem[:-len("_movie")]] if path.stem.endswith("_movie") else [])
    return next((c for s in stems if (c := path.with_name(f"{s}_info.txt")).is_file()), None)


def _open_rsciio(path: Path, module: str, label: str, *, signal: int | str | None) -> Movie:
    try:
        reader = importlib.import_module(module).file_reader
    except ModuleNotFoundError as err:  # EMD needs h5py (rosettasciio's "hdf5" extra)
        raise ImportError(f"reading {label} files needs the {err.name!r} package "
                          f"(pip install {err.name})") from err
    notes: list[str] = []
    kwargs = {}
    if (info := de_info_file(path)) is not None:  # a renamed Direct Electron movie's metadata
        kwargs["metadata_file"] = str(info)
        notes.append(f"pixel size and frame rate from {info.name} (Direct Electron metadata)")
    try:
        try:
            with warnings.catch_warnings():
                # rosettasciio's MRC reader opens the header without closing it; CPython closes
                # it when the reader returns, and the ResourceWarning says nothing to our user
                warnings.simplefilter("ignore", ResourceWarning)
                try:
                    signals = reader(str(path), lazy=True, **kwargs)
                except ValueError as err:
                    if not kwargs:
                        raise
                    # e.g. the metadata of a scan (4D-STEM): the movie without it
                    notes[-1] = f"{info.name} not used: {err}"
                    kwargs = {}
                    signals = reader(str(path), lazy=True)
        except ValueError as err:  # e.g. RGBA DigitalMicrograph images are not lazy-readable
            if path.stat().st_size > EAGER_LIMIT_BYTES:
                raise ValueError(f"{path}: not lazily readable ({err}), too big to load whole") from err
            signals = reader(str(path), lazy=False, **kwargs)
            notes.append(f"read whole: {err}")
    except ModuleNotFoundError as err:  # e.g. a Velox EMD with an EDS spectrum image: sparse
        raise _missing_module(path, label, err) from err
    if not signals and path.suffix.lower() == ".emi" and not _ser_files_of(path):
        # rosettasciio reads an .emi's data from <stem>_1.ser (..._N.ser) beside it
        raise ValueError(f"{path}: its data file {path.stem}_1.ser is not beside it: copy the "
                         ".ser file(s) with the .emi, or pass the .ser")
    images = [s for s in signals if _is_image_signal(s)]
    if isinstance(signal, str):  # a non-image signal named: say so, not "no such image"
        _refuse_non_image(signals, images, signal, path)
    if not images:
        raise ValueError(f"{path} holds no 2-D image or image stack")
    sig = _choose_signal(images, signal, path)  # signals of one file share its handle
    data, axes = sig["data"], sig["axes"]
    cal_warnings: list[str] = []
    px = square_pixel_size(
        length_nm_or_none(axes[-1].get("scale"), axes[-1].get("units"), notes, "x axis"),
        length_nm_or_none(axes[-2].get("scale"), axes[-2].get("units"), notes, "y axis"),
        cal_warnings,
    )
    dt = seconds_or_none(axes[0].get("scale"), axes[0].get("units")) if data.ndim == 3 else None
    om = sig.get("original_metadata", {})
    if dt is None and data.ndim == 3 and "ser_header_parameters" in om:
        # Whole seconds: too coarse for per-frame times (a window's median step), so none kept.
        clock = np.asarray(om["ser_header_parameters"].get("Time", []), dtype=float).ravel()
        dt = interval_from_timestamps(clock, resolution_s=1.0)
        if dt:
            notes.append("frame interval from the TIA whole-second clock")
        elif len(clock) >= 2:  # a span of 10 clock steps gives the interval to 10 %
            span = float(clock[-1] - clock[0])
            cal_warnings.append(f"the TIA file's whole-second clock is too coarse for a frame "
                                f"interval: its {len(clock)} frames span {span:g} s, under the "
                                "10 s that give it to 10 %")
        else:
            cal_warnings.append("the TIA file holds no per-frame clock: no frame interval")
    if data.ndim == 3 and dt is None:  # a z, focal or tilt series: analysed, with a warning
        cal_warnings += filter(None, [stack_axis_warning(axes[0].get("name"), axes[0].get("units"))])
    stamp = _dm_acquisition_time_s(om) if label == "DigitalMicrograph" else None
    meta = {"format": label, "reader": module, "dtype": str(data.dtype), "notes": notes,
            "signal": sig.get("metadata", {}).get("General", {}).get("title"),
            "signals": [s.get("metadata", {}).get("General", {}).get("title") for s in images],
            "axes": [f"{a.get('name')}: {a.get('scale')} {a.get('units')}" for a in axes]}
    if stamp is not None:
        meta["acquired_unix_s"] = stamp
    if np.issubdtype(data.dtype, np.complexfloating):  # e.g. an FFT or exit wave saved by DM
        meta["warnings"] = [f"the image is complex ({data.dtype}): its modulus was analysed"]

    def read(i: int) -> np.ndarray:
        block = data if data.ndim == 2 else data[i]
        return np.asarray(block.compute() if hasattr(block, "compute") else block)

    shape = (1, *data.shape) if data.ndim == 2 else data.shape
    cal = Calibration.from_file(pixel_size_nm=px, frame_interval_s=dt, warnings=cal_warnings)
    return Movie(path, shape, cal, meta,
                 read, close=lambda: close_lazy_array(data),
                 # a stack's one time is its start, not each frame's (Movie.window slices these)
                 timestamps_s=None if stamp is None or data.ndim != 2 else np.zeros(1))


def _missing_module(path: Path, label: str, err: ModuleNotFoundError) -> ImportError:
    """A one-line error naming the file, the optional module a reader lacked and its install
    (rosettasciio raises some without ``name``, saying it in quotes)."""
    name = err.name or next(iter(re.findall(r"'([\w.]+)'", str(err))), None)
    if name is None:
        return ImportError(f"{path}: reading this {label} file needs a package that is not "
                           f"installed ({err})")
    why = " (it holds an EDS spectrum image)" if name == "sparse" else ""
    return ImportError(f"{path}: reading this {label} file{why} needs the optional {name!r} package: "
                       f"pip install {name}")


def _is_image_signal(sig: dict) -> bool:
    """2-D image, or a stack of them with one navigation axis first."""
    nav = [bool(a.get("navigate")) for a in sig["axes"]]
    ndim = sig["data"].ndim
    return len(nav) == ndim and nav in ([False, False], [True, False, False])


def _ser_files_of(emi: Path) -> list[Path]:
    """The TIA data files of ``emi`` beside it (``<stem>_1.ser``, ``<stem>_2.ser``, ...)."""
    return [p for p in emi.parent.glob(glob.escape(emi.stem) + "_*.ser")
            if p.stem[len(emi.stem) + 1:].isdigit()]


def _title(sig: dict) -> str:
    return str(sig.get("metadata", {}).get("General", {}).get("title"))


def _refuse_non_image(signals: list[dict], images: list[dict], signal: str, path: Path) -> None:
    """Raise where ``signal`` names one of the file's signals that is no image (a DM "Plot",
    a spectrum, a 4D-STEM scan): `_pick` would otherwise look among the images only."""
    key = signal.strip("/").lower()
    if any(_title(s).strip("/").lower() == key for s in images):
        return
    named = next((s for s in signals if _title(s).strip("/").lower() == key), None)
    if named is None:
        return
    nav = sum(bool(a.get("navigate")) for a in named["axes"])
    ndim = named["data"].ndim
    what = ("a 1-D signal (a spectrum or profile)" if ndim == 1 else
            f"a {ndim}-D signal with {nav} scan axes (a spectrum image or diffraction scan?)")
    titles = [_title(s) for s in images]
    others = (f"the file's only image is {titles[0]!r}" if len(titles) == 1 else
              f"the file's images are {titles}" if titles else "the file holds no image")
    raise ValueError(f"{path}: {signal!r} is {what}, not an image; {others}")


def _choose_signal(images: list[dict], signal: int | str | None, path: Path) -> dict:
    titles = [_title(s) for s in images]
    return images[_pick(titles, signal, path, what="image")]


def _pick(names: list[str], signal: int | str | None, path: Path, *, what: str) -> int:
    """Index of the item ``signal`` numbers or names (case and slashes aside); 0 if None."""
    if signal is None:
        return 0
    if isinstance(signal, int) and -len(names) <= signal < len(names):
        return signal % len(names)
    key = str(signal).strip("/").lower()
    for i, name in enumerate(names):
        if name.strip("/").lower() == key:
            return i
    if len(names) == 1:  # e.g. a one-image MRC read through the multi-image path
        shown = "untitled" if names[0] in ("None", "") else repr(names[0])
        raise ValueError(f"{path} holds one {what} ({shown}): {option('signal')} chooses among several "
                         "and is not needed here")
    raise ValueError(f"{path} has no {what} {signal!r}; its {what}s are {names}")


def _dm_acquisition_time_s(om: dict) -> float | None:
    """Acquisition time [Unix s] from DM tags: DataBar FILETIME, else the epoch in ms."""
    image_list = om.get("ImageList", {}).values()
    groups = [g.get("ImageTags", {}) for g in image_list if isinstance(g, dict)]
    for tags in groups:
        filetime = tags.get("DataBar", {}).get("Acquisition Time (OS)")
        if filetime:
            return float(filetime) * 1e-7 - _FILETIME_TO_UNIX_S
    for tags in groups:
        seq = tags.get("Acquisition", {}).get("Frame", {}).get("Sequence", {})
        if seq.get("Acquisition Start Time (epoch)"):
            return float(seq["Acquisition Start Time (epoch)"]) * 1e-3
    return None


# --- video and single images ---------------------------------------------------------------


def _open_video(path: Path) -> Movie:
    import imageio.v3 as iio

    props = iio.improps(path, plugin="pyav")
    n = props.shape[0] if props.is_batch else 1
    if n == 0:  # e.g. an image renamed .mp4 (PyAV's image demuxer), or a recording cut short
        raise ValueError(f"{path}: no video frame can be read (not a video, or a damaged or "
                         "incomplete recording?)")
    handle = iio.imopen(path, "r", plugin="pyav")
    fps = handle.metadata().get("fps")
    dt = 1.0 / fps if fps and np.isfinite(fps) and fps > 0 else None
    # No pixel size either: calibration says so, or the estimate, or the user's value.
    note = (f"frame interval {dt:g} s is the container's playback rate ({fps:g} fps), not "
            f"necessarily the acquisition rate: pass {option('frame_interval_s', 'S')} if it "
            "differs") if dt else "the video states no frame rate"
    # The playback caveat is a warning only where the file's rate is used (infer.pipeline.calibrate).
    cal = Calibration.from_file(frame_interval_s=dt)

    def iterate() -> Iterator[np.ndarray]:
        with iio.imopen(path, "r", plugin="pyav") as fresh:
            yield from fresh.iter()

    meta = {"format": path.suffix.lower()[1:].upper(), "playback_fps": fps, "notes": [note],
            "frame_interval_caveat": note if dt else None}
    def read(i: int) -> np.ndarray:
        try:
            return handle.read(index=i)
        except StopIteration:  # past the frames that decode; Movie names the file and frame
            raise EOFError(f"the video ends before frame {i} of the {n} its header lists "
                           "(a truncated recording or an incomplete copy?)") from None

    return Movie(path, (n, *props.shape[-3:-1]), cal, meta, read, iterate=iterate,
                 close=handle.close)


def _open_image(path: Path) -> Movie:
    import imageio.v3 as iio
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        mode = im.mode
        n = getattr(im, "n_frames", 1)  # an animated PNG holds several
    kind = _FRAME_KIND[path.suffix.lower()]
    notes = [f"no calibration in {kind} files"]  # as the NumPy and HDF5 readers say
    if n > 1:
        notes.append(f"an animated {kind} of {n} frames; its playback timing is not used")
    meta = {"format": path.suffix.lower()[1:].upper(), "mode": mode, "notes": notes}
    return Movie(path, (n, h, w), Calibration(), meta, lambda i: iio.imread(path, index=i))


#: `Movie.path` of an in-memory array (`movie_from_array`): not a file.
IN_MEMORY = Path("<array>")


def movie_from_array(data: np.ndarray) -> Movie:
    """A `Movie` over an in-memory (y, x) image or (t, y, x) stack, e.g. a cropped stack
    or HyperSpy's ``signal.data``, for `dislotrack.infer.pipeline.analyze`.

    It has no calibration: give ``analyze`` the pixel size and frame interval (else the
    pixel size is estimated from the fringes, and velocities are per frame). Its path
    is `IN_MEMORY`; ``metadata["sha256"]`` identifies the data.

    Parameters
    ----------
    data : array_like
        A real-valued (y, x) image or (t, y, x) stack; a (y, x, 3 or 4) array is read as
        one colour image, with a warning.

    Returns
    -------
    Movie

    Raises
    ------
    ValueError
        If ``data`` is not such an image or stack.

    Examples
    --------
    >>> movie_from_array(np.zeros((3, 64, 48), np.uint16)).shape
    (3, 64, 48)
    """
    data = np.asarray(data)
    if not _is_image_array(data):
        raise ValueError(f"an in-memory {data.dtype} array of shape {data.shape} is not an image: "
                         "expected a real-valued (y, x) image or (t, y, x) stack")
    digest = hashlib.sha256(f"{data.dtype.str} {data.shape}".encode())  # the same bytes, reshaped, differ
    for frame in data.reshape(-1, *data.shape[-2:]):  # frame by frame: no copy of a whole view
        digest.update(np.ascontiguousarray(frame).data)
    meta = {"format": "array", "notes": ["an in-memory array: no calibration"],
            "sha256": digest.hexdigest()}
    return _array_movie(IN_MEMORY, data, meta)


def _array_movie(path: Path, data: np.ndarray, meta: dict) -> Movie:
    """An uncalibrated `Movie` over an image or stack array (in memory or memory-mapped)."""
    n_frames, read = _frames_of(data)
    if _is_colour(data):  # a guess, so say it: a (y, x, t) stack of 3 or 4 frames looks the same
        meta = {**meta, "warnings": [*meta.get("warnings", []), colour_guess_warning(data.shape)]}
    return Movie(path, (n_frames, *_frame_shape(data)), Calibration(), meta, read)


def colour_guess_warning(shape: tuple[int, ...]) -> str:
    """What a (y, x, 3 or 4) array read as one colour image says."""
    return (f"the {' x '.join(map(str, shape))} array was read as one colour image (its last axis "
            f"{'RGB' if shape[-1] == 3 else 'RGBA'}); a (y, x, t) stack of {shape[-1]} frames is "
            "np.moveaxis(a, -1, 0)")


def _open_numpy(path: Path) -> Movie:
    try:  # allow_pickle=False: a .npy of Python objects is code, not an image
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "object" in str(err).lower() or "pickle" in str(err).lower():
            raise ValueError(f"{path} is not a plain numeric array ({err})") from err
        raise ValueError(f"{path}: cannot be read as NPY: {err}{_damage_hint(err)}") from err
    if not _is_image_array(data):
        raise ValueError(f"{path} holds a {data.dtype} array of shape {data.shape}; "
                         "expected a real-valued (y, x) image or (t, y, x) stack")
    meta = {"format": "NumPy", "dtype": str(data.dtype), "notes": ["no calibration in .npy files"]}
    return _array_movie(path, data, meta)


def _is_image_array(data: np.ndarray | h5py.Dataset) -> bool:
    """A real-valued, non-empty (y, x) image or (t, y, x) stack (NumPy or h5py array;
    an HDF5 null dataspace has shape None)."""
    if data.shape is None or data.dtype.kind not in "uif":
        return False
    return len(data.shape) in (2, 3) and 0 not in data.shape


def _is_colour(data) -> bool:
    """(y, x, RGB[A]) rather than a stack of 3 or 4 frames."""
    return len(data.shape) == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4


def _frame_shape(data) -> tuple[int, int]:
    return tuple(data.shape[:2]) if _is_colour(data) else tuple(data.shape[-2:])


def _frames_of(data) -> tuple[int, Callable[[int], np.ndarray]]:
    """Frame count and reader of a lazily indexable image or stack (mmap or h5py)."""
    if len(data.shape) == 2 or _is_colour(data):
        return 1, lambda i: np.array(data[()])  # a copy: no mapped pages stay referenced
    return data.shape[0], lambda i: np.array(data[i])


def _open_hdf5(path: Path, *, signal: int | str | None) -> Movie:
    """A HyperSpy file through rosettasciio, else the largest image dataset via h5py."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        hdf4 = (" (HDF4 files are not supported: convert to HDF5 or TIFF)"
                if path.suffix.lower() == ".hdf" else "")
        raise ValueError(f"{path}: cannot be read as HDF5{hdf4}: {err}{_damage_hint(err)}") from err
    notes = ["no calibration read from a generic HDF5 file"]
    if "Experiments" in handle:  # HyperSpy's layout, whatever the extension
        try:
            movie = _open_rsciio(path, "rsciio.hspy", "HyperSpy", signal=signal)
        except (KeyError, *READ_ERRORS) as err:  # HyperSpy-like but not HyperSpy: read it plainly
            notes.append(f"not a valid HyperSpy file ({err!r}): read as generic HDF5")
        else:
            handle.close()
            return movie
    found: list[tuple[str, h5py.Dataset]] = []
    try:
        handle.visititems(lambda name, obj: found.append((name, obj))
                          if isinstance(obj, h5py.Dataset) and _is_image_array(obj)
                          and min(_frame_shape(obj)) >= _MIN_IMAGE_SIDE else None)
        found.sort(key=lambda item: -item[1].size)  # a movie before its thumbnail; ties by name
        name, data = _choose_dataset(found, signal, path)
    except BaseException:
        handle.close()
        raise
    if len(found) > 1:
        notes.append(f"read dataset {name!r}; the file also holds "
                     f"{', '.join(repr(n) for n, _ in found if n != name)}")
    meta = {"format": "HDF5", "signal": name, "signals": [n for n, _ in found],
            "dtype": str(data.dtype), "notes": notes}
    n_frames, read = _frames_of(data)
    return Movie(path, (n_frames, *_frame_shape(data)), Calibration(), meta, read,
                 close=handle.close)


def _choose_dataset(found: list[tuple[str, object]], signal: int | str | None,
                    path: Path) -> tuple[str, object]:
    """The dataset named or numbered by ``signal`` (in ``found``'s order), else the first."""
    if not found:
        raise ValueError(f"{path} holds no (y, x) image or (t, y, x) stack of at least "
                         f"{_MIN_IMAGE_SIDE} px")
    return found[_pick([n for n, _ in found], signal, path, what="image dataset")]


# --- folders of frames ---------------------------------------------------------------------


def _natural_key(rel: Path) -> tuple:
    split = (re.split(r"(\d+)", part) for part in rel.parts)
    return tuple([int(t) if t.isdigit() else t.lower() for t in tokens] for tokens in split)


def _frame_files(folder: Path) -> list[Path]:
    """Frame files at the top level, else anywhere below (GMS in-situ trees), natural order.
    Folders of dislotrack results (holding a ``summary.json``: ``--out`` inside the frames'
    folder) are no frames.

    Raises ValueError where the top level holds fewer frame files than the folders below:
    a stray image (a preview, a reference frame) beside a recording's tree."""
    def is_frame(p: Path) -> bool:
        return p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".") and p.is_file()

    entries = list(folder.iterdir())
    top = [p for p in entries if is_frame(p)]
    below = [p for d in entries if d.is_dir() and not d.name.startswith(".") for p in d.rglob("*")
             if is_frame(p)]
    results = {r.parent for r in folder.rglob("summary.json")} if below else set()
    below = [p for p in below if not results & set(p.parents)]
    if top and len(below) > len(top):
        names = first_few(sorted(p.name for p in top), 3)
        subs = first_few(sorted({p.relative_to(folder).parts[0] for p in below}), 3)
        raise ValueError(
            f"folder {folder} holds {len(top)} frame file(s) at the top level ({names}) and "
            f"{len(below)} in subfolders ({subs}): move the top-level file(s) out to read the "
            "subfolders' frames as one movie, or pass the folder you mean")
    files = top or below
    if not files:
        raise ValueError(f"folder {folder} holds no frames ({', '.join(FRAME_EXTENSIONS)})")
    kinds = Counter(_FRAME_KIND[p.suffix.lower()] for p in files)
    if len(kinds) > 1:
        raise ValueError(f"folder {folder} mixes frame formats {dict(kinds)}; keep one per folder")
    return sorted(files, key=lambda p: _natural_key(p.relative_to(folder)))


def _open_folder(folder: Path, signal: int | str | None = None) -> Movie:
    files = _frame_files(folder)
    if any(is_sidecar(p) for p in folder.glob("*.json")):  # not frames of one movie
        raise ValueError(
            f"{folder} holds annotated images or movies (dislotrack annotations): a folder is "
            "read as one movie, one frame per file; pass the image files themselves "
            "(the <stem>_rs.tif masks are skipped)")
    shapes, stamps, sizes, depths = [], [], [], []
    for f in files:  # headers only: PIL, tifffile and rosettasciio-lazy read no pixels here
        with _open(f, signal) as m:  # the same image of every multi-image frame file
            if len(m) != 1:
                raise ValueError(
                    f"{f} holds {len(m)} frames: a folder is read as one movie of one frame per "
                    "file; to analyse the movies in it, pass the movie files themselves")
            if f is files[0]:
                first = m
            shapes.append(m.shape[1:])
            stamps.append(m.metadata.get("acquired_unix_s"))
            sizes.append(m.calibration.pixel_size_nm)
            depths.append(" ".join(str(m.metadata[k]) for k in ("mode", "dtype") if k in m.metadata))
    odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
    if odd is not None:
        n_odd = sum(s != shapes[0] for s in shapes)
        others = f" (and {n_odd - 1} more file(s) not of {shapes[0]} px)" if n_odd > 1 else ""
        raise ValueError(
            f"folder {folder}: frames differ in shape: {files[0].name} is {shapes[0]} px but "
            f"{files[odd].relative_to(folder)} is {shapes[odd]} px{others}; a folder is read as "
            "one movie of one frame size: move the files of other sizes out (or crop them to "
            "one size), or pass the images one by one")
    notes = list(first.metadata.get("notes", []))
    names = [str(f.relative_to(folder)) for f in files]
    times = np.array(stamps, dtype=float) - stamps[0] if None not in stamps else None
    dt = interval_from_timestamps(times) if times is not None else None
    said = []
    if times is not None and dt is None and len(times) > 1:
        said.append(non_increasing_warning(times, names))
    said.append(uneven_steps_warning(times, dt) if times is not None else None)
    said.append(_differing_pixel_sizes(sizes, names))
    cal = Calibration.from_file(pixel_size_nm=first.calibration.pixel_size_nm, frame_interval_s=dt,
                                warnings=(*first.calibration.warnings, *filter(None, said)))
    # as the first frame's file says (e.g. one channel of several read)
    warnings = list(first.metadata.get("warnings", []))
    if len(set(depths)) > 1:  # e.g. an export with other settings: intensities jump
        warnings.append(_differing("bit depth or colour mode", depths, names))
    meta = {"format": f"folder of {first.metadata['format']} frames", "n_files": len(files),
            "first_file": names[0], "notes": notes,
            **({"warnings": warnings} if warnings else {}),
            **{k: first.metadata[k] for k in ("signal", "signals") if k in first.metadata}}

    def read(i: int) -> np.ndarray:
        with _open(files[i], signal) as m:
            return m[0]

    return Movie(folder, (len(files), *shapes[0]), cal, meta, read, timestamps_s=times)


def _differing(what: str, values: list[str], names: list[str], odd: list[int] | None = None) -> str:
    """A warning that the frame files differ in ``what``: the first file's value and a few
    of the files that differ from it (``odd``, their indices; default: another value)."""
    odd = [i for i, v in enumerate(values) if v != values[0]] if odd is None else odd
    shown = first_few([f"{names[i]} {values[i]}" for i in odd], 3)
    return f"the frames differ in {what}: {names[0]} is {values[0]}, but {shown}"


def _differing_pixel_sizes(sizes: list[float | None], names: list[str]) -> str | None:
    """A calibration warning where the frame files' pixel sizes differ by more than 1 % (a
    magnification change?) or only some files have one; else None."""
    ref = sizes[0]
    same = [s == ref if ref is None or s is None else abs(s - ref) <= 0.01 * ref for s in sizes]
    if all(same):
        return None
    shown = [f"{s:.4g} nm/px" if s is not None else "none" for s in sizes]
    odd = [i for i, ok in enumerate(same) if not ok]
    # Whatever pixel size is used (the first frame's, the user's), some frames are off.
    return (f"{_differing('pixel size', shown, names, odd)} (a magnification change?): one pixel "
            "size is used for all frames, so distances and velocities in the others are off; "
            f"analyse frames of one pixel size ({option('frames')})")
