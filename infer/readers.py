"""Open microscope movies lazily behind one `Movie` interface.

``open_movie(path)`` returns a `Movie`: ``len(movie)`` frames of shape (H, W),
each read from disk only when asked for, as float32 (colour -> luminance), plus
the `Calibration` found in the file's metadata (source "file") and a small
metadata dict whose ``notes`` say what was assumed.

=====================  ===========================================================
input                  how
=====================  ===========================================================
.tif/.tiff (OME)       tifffile, memory-mapped or page by page. Pixel size and frame
                       interval from OME (PhysicalSizeX, TimeIncrement or DeltaT),
                       ImageJ (unit + XResolution, finterval), vendor tags (DM,
                       FEI, ... via rosettasciio) or cm/inch resolution tags.
.dm3/.dm4, .emd,       rosettasciio with ``lazy=True`` (dask); axis scales and
.ser/.emi, .mrc,       units, a time axis or TIA per-frame clock if present.
.hspy (HyperSpy)
.mp4/.avi              imageio + PyAV; frame interval = *playback* interval.
.png/.jpg/.jpeg        a single frame without calibration.
.npy                   a (y, x) or (t, y, x) NumPy array, memory-mapped, without
                       calibration (never unpickled: object arrays are refused).
.hdf5/.h5/.hdf         a HyperSpy file (rosettasciio, calibrated) or any HDF5 file:
                       its largest (y, x) or (t, y, x) dataset, read frame by
                       frame with h5py, without calibration.
folder                 one frame per file (PNG/JPEG/TIFF/DM3/DM4), natural order;
                       a folder tree (GMS in-situ recording) is searched when the
                       top level holds no frames; the DM acquisition clock gives
                       the frame interval (median step).
=====================  ===========================================================
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import itertools
import json
import logging
import numbers
import re
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import tifffile

from dislotrack.data_gen.annotations import is_sidecar
from dislotrack.infer.calibration import (
    Calibration,
    check_positive,
    interval_from_timestamps,
    to_nm,
    to_seconds,
)
from dislotrack.infer.interface import option

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
#: What the reading libraries raise for a damaged, truncated or mislabelled file
#: (rosettasciio: NotImplementedError for unknown format versions).
_READ_ERRORS = (ValueError, OSError, EOFError, NotImplementedError, struct.error)
SUPPORTED_EXTENSIONS = tuple(sorted({*_TIFF, *_IMAGE, *_VIDEO, *_RSCIIO, *_NUMPY, *_HDF5}))
FRAME_EXTENSIONS = (*_TIFF, *_IMAGE, ".dm3", ".dm4")
_FRAME_KIND = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG",
               ".dm3": "DM", ".dm4": "DM"}
#: Files that cannot be read lazily are loaded whole only below this size [bytes].
EAGER_LIMIT_BYTES = 256 * 2**20
#: ITU-R BT.709 luma weights, as in skimage.color.rgb2gray (but keeping the value range).
_LUMA = np.array([0.2125, 0.7154, 0.0721])
_FILETIME_TO_UNIX_S = 11644473600.0
_IMAGEJ_TAGS = (50838, 50839)  # IJMetadataByteCounts, IJMetadata


def to_gray_float32(frame: np.ndarray) -> np.ndarray:
    """One frame as a float32 (H, W) array: RGB(A) -> luminance, complex -> modulus."""
    a = np.asarray(frame)
    if a.dtype.names:  # DigitalMicrograph RGBA: structured R, G, B, A
        a = np.stack([a[c] for c in ("R", "G", "B")], axis=-1)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float64) @ _LUMA
    elif a.ndim == 3 and a.shape[-1] == 2:  # grey + alpha
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"a frame must be 2-D (or 2-D colour), got shape {a.shape}")
    return np.array(a, dtype=np.float32)


class Movie:
    """A lazily read stack of frames with its calibration.

    Frames are read on access: ``movie[i]`` (negative ``i`` counts from the end)
    and iteration give finite float32 arrays of shape ``movie.shape[1:]`` (NaN or
    infinite pixels, e.g. alignment padding, become the frame's median, with a warning). Use as a
    context manager (or call `close`) to release the file.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        (T, H, W) [frames, px, px].
    calibration : Calibration
        From the file's metadata; combine with user values via
        `dislotrack.infer.calibration.resolve_calibration` and `with_calibration`.
    metadata : dict
        Small: ``format``, ``notes`` (list of str: how the file was read), optionally
        ``warnings`` (list of str: what the user should know, e.g. only one channel
        was read; infer reports them) and format-specific entries.
    timestamps_s : ndarray or None
        Acquisition time of each frame relative to the first [s], where the
        files record it.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        calibration: Calibration,
        metadata: dict,
        read: Callable[[int], np.ndarray],
        *,
        iterate: Callable[[], Iterator[np.ndarray]] | None = None,
        close: Callable[[], None] | None = None,
        timestamps_s: np.ndarray | None = None,
    ) -> None:
        self._path = Path(path)
        self._shape = tuple(int(n) for n in shape)
        self._calibration = calibration
        self._metadata = metadata
        self._read, self._iterate, self._close = read, iterate, close
        self._timestamps = timestamps_s
        self._filled = False  # whether non-finite pixels were replaced (logged once)

    path = property(lambda self: self._path)
    shape = property(lambda self: self._shape)
    calibration = property(lambda self: self._calibration)
    metadata = property(lambda self: self._metadata)
    timestamps_s = property(lambda self: self._timestamps)

    def __len__(self) -> int:
        return self._shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {index!r}")
        i = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames of {self._path}")
        try:
            raw = self._read(i)
        except _READ_ERRORS as err:  # a truncated or damaged file: name it
            raise ValueError(f"{self._path}: frame {i} cannot be read: {err}") from err
        return self._checked(raw, i)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterate is None:
            for i in range(len(self)):
                yield self[i]
            return
        frames = self._iterate()
        for i in range(len(self)):
            try:
                frame = next(frames)
            except StopIteration:  # fewer frames than the header said
                return
            except _READ_ERRORS as err:
                raise ValueError(f"{self._path}: frame {i} cannot be read: {err}") from err
            yield self._checked(frame, i)

    def _checked(self, raw: np.ndarray, i: int) -> np.ndarray:
        frame = to_gray_float32(raw)
        if frame.shape != self._shape[1:]:
            raise ValueError(
                f"frame {i} of {self._path} is {frame.shape} px, expected {self._shape[1:]} px"
            )
        bad = ~np.isfinite(frame)
        if bad.any():  # e.g. the padding of an aligned stack: neutral grey, said once per movie
            frame[bad] = np.median(frame[~bad]) if not bad.all() else 0.0
            if not self._filled:
                logger.warning("%s: frame %d has %d NaN or infinite pixels (e.g. padding from "
                               "alignment), set to the frame's median; later frames likewise",
                               self._path.name, i, int(bad.sum()))
            self._filled = True
        return frame

    def window(self, start: int, stop: int) -> Movie:
        """Frames ``start`` to ``stop - 1`` of this movie as a movie of their own, numbered
        from 0 and read lazily from the same open file; ``metadata["frames"]`` records
        ``[start, stop]`` and timestamps count from ``start``.

        Raises
        ------
        ValueError
            If the window holds no frame of this movie.
        """
        n = len(self)
        integral = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (start, stop))
        if not (integral and 0 <= start < stop <= n):
            window = option("frames", f"{start}:{stop}", text=True)
            raise ValueError(f"{window} is not a window of the {n} frames "
                             f"of {self._path.name} (whole numbers, 0 <= start < stop <= {n})")
        start, stop = int(start), int(stop)
        base_read, base_iterate = self._read, self._iterate

        def iterate() -> Iterator[np.ndarray]:  # a stream is read from its start, once
            return itertools.islice(base_iterate(), start, stop)

        times = self._timestamps
        other = Movie(self._path, (stop - start, *self._shape[1:]), self._calibration,
                      {**self._metadata, "frames": [start, stop]}, lambda i: base_read(start + i),
                      iterate=iterate if base_iterate is not None else None, close=None,
                      timestamps_s=None if times is None else times[start:stop] - times[start])
        return other

    def with_calibration(self, calibration: Calibration) -> Movie:
        """The same movie (sharing the open file) with another calibration."""
        other = copy.copy(self)
        other._calibration = calibration
        return other

    def close(self) -> None:
        """Release the file (further reads may fail)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> Movie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self._calibration
        return (f"Movie({self._path.name!r}, shape={self._shape}, pixel_size_nm={c.pixel_size_nm}, "
                f"frame_interval_s={c.frame_interval_s})")


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
    """
    path = Path(path)
    movie = _with_annotation_calibration(_open(path, signal))
    if signal is not None and "signals" not in movie.metadata:  # a format of one image (stack)
        movie.metadata.setdefault("warnings", []).append(
            f"{option('signal', signal, text=isinstance(signal, str))} was ignored: "
            f"{movie.metadata.get('format', 'this')} input has no images to choose from")
    return movie


def _with_annotation_calibration(movie: Movie) -> Movie:
    """``movie`` with what its file lacks (pixel size, frame interval) taken from the
    annotation sidecar beside it (``<stem>.json``, format dislotrack-annotation), where
    there is one: a lab's annotated images need no second calibration (source "file",
    and a calibration note names the sidecar)."""
    cal, side = movie.calibration, movie.path.with_suffix(".json")
    if (cal.pixel_size_nm is not None and cal.frame_interval_s is not None) or not is_sidecar(side):
        return movie
    meta = json.loads(side.read_text())
    taken, notes = {}, list(cal.warnings)
    for key, have, unit in (("pixel_size_nm", cal.pixel_size_nm, "nm/px"),
                            ("frame_interval_s", cal.frame_interval_s, "s")):
        if have is None and meta.get(key) is not None:
            try:
                taken[key] = check_positive(meta[key], f"{side.name}'s {key}", unit)
            except ValueError as err:  # `read_annotation` refuses it; here it is just not used
                notes.append(f"{err}: not used")
    if taken:
        said = " and ".join(f"{k} {v:g}" for k, v in taken.items())
        notes.append(f"{said} from the annotation {side.name} (the file has none)")
    return movie.with_calibration(Calibration.from_file(
        pixel_size_nm=taken.get("pixel_size_nm", cal.pixel_size_nm),
        frame_interval_s=taken.get("frame_interval_s", cal.frame_interval_s),
        warnings=notes)) if notes != list(cal.warnings) else movie


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
    try:
        if ext in _TIFF:
            return _open_tiff(path)
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
    except _READ_ERRORS as err:
        if isinstance(err, ValueError) and (str(path) in str(err) or path.name in str(err)):
            raise  # ours, already naming the file
        raise ValueError(f"{path}: cannot be read as {ext[1:].upper()}: {err}") from err


# --- small helpers -------------------------------------------------------------------------


def _length_nm(scale: object, unit: object, notes: list[str], what: str) -> float | None:
    """A calibration length [nm], or None (with a note) if unusable."""
    try:
        value = to_nm(float(scale), str(unit) if unit is not None else "")
    except (TypeError, ValueError) as err:
        notes.append(f"{what}: no usable pixel size ({err})")
        return None
    if not (np.isfinite(value) and value > 0):
        notes.append(f"{what}: ignored non-positive pixel size {scale} {unit}")
        return None
    return value


def _seconds(scale: object, unit: object) -> float | None:
    try:
        value = to_seconds(float(scale), str(unit) if unit is not None else "")
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _xy_calibration(px_x: float | None, px_y: float | None, warnings: list[str]) -> float | None:
    """One pixel size from x and y; a calibration warning if they differ by more than 1 %
    (distances along y then come out scaled by y/x)."""
    if px_x is None or px_y is None:
        return px_x if px_x is not None else px_y
    if abs(px_x - px_y) > 0.01 * px_x:
        warnings.append(f"non-square pixels: x {px_x:.6g} nm, y {px_y:.6g} nm; using x: positions, "
                        "velocities and strain along y are off by that ratio; resample the movie "
                        "to square pixels first")
    return px_x


# --- TIFF ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[list[str]]:
    """tifffile's logged complaints about damaged files, collected instead of printed
    (our error says it): yields the list of their messages."""
    log = logging.getLogger("tifffile")
    said: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handler, propagate = _Collect(level=logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False  # it logs a damaged page offset as an error
    try:
        yield said
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _open_tiff(path: Path) -> Movie:
    with _quiet_tifffile():
        tif = tifffile.TiffFile(path)
    try:
        with _quiet_tifffile() as damage:
            if not tif.series:  # e.g. only the 8-byte header of an interrupted write
                raise ValueError(f"{path}: the TIFF holds no images (an incomplete write or copy?)")
            series = tif.series[0]
        declared = int((tif.imagej_metadata or {}).get("images", 0)) if tif.is_imagej else 0
        if declared > int(np.prod(series.shape[: series.ndim - series.keyframe.ndim])):
            raise ValueError(f"{path}: the ImageJ header lists {declared} images but fewer can be "
                             "read (a truncated file?)")
        page_axes = series.keyframe.axes
        if not series.axes.endswith(page_axes):
            raise ValueError(f"{path}: cannot map TIFF axes {series.axes!r} to frames")
        if series.axes == "SYX" and tif.is_shaped:  # how tifffile writes a (3|4, y, x) array
            return _planar_stack(path, tif, series)
        lead_axes = series.axes[: len(series.axes) - len(page_axes)]
        lead_shape = tuple(series.shape[: len(lead_axes)])
        notes: list[str] = []
        warnings = [] if len(tif.series) == 1 else [
            f"the TIFF holds {len(tif.series)} image series; only the first was read"]
        index = _tiff_frame_index(lead_axes, lead_shape, warnings)
        _check_tiff_complete(path, tif, series, int(np.prod(lead_shape)))
        cut = [m for m in damage if "invalid page offset" in m]
        if cut:  # the chain of pages breaks off: tifffile kept the pages before the break
            raise ValueError(f"{path}: truncated or damaged: its pages break off after "
                             f"{len(index)} frame(s) (an incomplete write or copy?)")
        read = _tiff_reader(path, tif, series, lead_shape, page_axes)
        h, w = (series.keyframe.shape[page_axes.index(a)] for a in "YX")
        cal = _tiff_calibration(path, tif, notes)
    except Exception:
        tif.close()
        raise
    meta = {"format": "OME-TIFF" if tif.is_ome else "ImageJ TIFF" if tif.is_imagej else "TIFF",
            "axes": series.axes, "dtype": str(series.dtype), "notes": notes, "warnings": warnings}
    return Movie(path, (len(index), h, w), cal, meta, lambda i: read(index[i]), close=tif.close)


#: An ImageJ/TIFF stack whose only stacked axis is C with more entries than this is a
#: movie saved without axes (tifffile writes a 3-D array as channels by default); up to
#: this many are detectors of one scan (HAADF, BF, ...), of which channel 0 is read.
MAX_DETECTOR_CHANNELS = 4


def _planar_stack(path: Path, tif: tifffile.TiffFile, series) -> Movie:
    """A one-page TIFF whose 3 or 4 planar samples are frames: tifffile stores a (3|4, y, x)
    array as planar RGB(A), which no camera writes for a colour image (those are (y, x, 3))."""
    n, h, w = series.shape
    cal = _tiff_calibration(path, tif, notes := [])
    meta = {"format": "TIFF", "axes": series.axes, "dtype": str(series.dtype), "notes": notes,
            "warnings": [f"the TIFF stores {n} planar colour samples in one page, as tifffile "
                         f"writes a ({n}, y, x) array: read as {n} frames, not as one colour image"]}
    page = functools.cache(tif.pages.first.asarray)  # all frames are in it: read it once
    return Movie(path, (n, h, w), cal, meta, lambda i: page()[i], close=tif.close)


def _tiff_frame_index(axes: str, shape: tuple[int, ...], warnings: list[str]) -> list[tuple]:
    """Multi-indices into the non-image axes, one per frame (channel 0 only, unless the
    channels are the only stack and too many to be detectors: then they are the frames)."""
    ranges = [range(n) for n in shape]
    if "C" in axes and shape[axes.index("C")] > 1:
        n_c = shape[axes.index("C")]
        if n_c > MAX_DETECTOR_CHANNELS and all(n == 1 for a, n in zip(axes, shape, strict=True) if a != "C"):
            warnings.append(f"the file's {n_c} channels were read as {n_c} frames (it has no time "
                            "or z axis); save movies with axes 'TYX' to say so")
        else:
            warnings.append(f"the file holds {n_c} channels; only channel 0 was read")
            ranges[axes.index("C")] = range(1)
    if sum(len(r) > 1 for r in ranges) > 1:
        warnings.append(f"TIFF axes {axes!r} {shape} were read as one sequence of frames")
    return list(np.ndindex(*[len(r) for r in ranges]))


def _tiff_complete_frames(path: Path, tif: tifffile.TiffFile, series, n_frames: int) -> int:
    """How many of a TIFF series' ``n_frames`` frames lie wholly within the file."""
    size = path.stat().st_size
    if series.dataoffset is not None:  # contiguous: frames one after another from dataoffset
        frame_bytes = int(np.prod(series.keyframe.shape)) * np.dtype(series.dtype).itemsize
        return int(min(n_frames, max(size - series.dataoffset, 0) // max(frame_bytes, 1)))
    return _complete_pages(path, list(series.pages), n_frames)


def _complete_pages(path: Path, pages: list, n_frames: int) -> int:
    """How many of ``pages``, in order, have all their data within their file (a
    multi-file OME-TIFF's pages live in several)."""
    for k, page in enumerate(pages):  # per page: its strips or tiles
        if page is None:  # in a file of a multi-file OME-TIFF that is not there
            raise ValueError(f"{path}: frame {k} is in a file of this multi-file OME-TIFF that "
                             "is missing; copy all its files together")
        size = page.parent.filehandle.size
        if any(o + c > size for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)):
            return k
    return min(len(pages), n_frames)


def _check_tiff_complete(path: Path, tif: tifffile.TiffFile, series, n_frames: int) -> None:
    """Refuse a truncated TIFF at once, rather than after analysing its first frames."""
    whole = _tiff_complete_frames(path, tif, series, n_frames)
    if tif.is_shaped and tif.shaped_metadata:  # tifffile's own header: the shape it wrote
        declared = int(np.prod(tif.shaped_metadata[0].get("shape", [0])))
        declared //= max(int(np.prod(series.keyframe.shape)), 1)
        if declared > n_frames:  # pages lost to a cut: tifffile fell back to the first page(s)
            with _quiet_tifffile():
                whole = _complete_pages(path, list(tif.pages), declared)
            n_frames = declared
    if whole < n_frames:
        raise ValueError(f"{path}: truncated: {whole} of its {n_frames} frames are in the file "
                         "(an incomplete write or copy?)")


def _tiff_reader(path, tif, series, lead_shape, page_axes) -> Callable[[tuple], np.ndarray]:
    def to_frame(block: np.ndarray) -> np.ndarray:
        return np.moveaxis(block, page_axes.index("S"), -1) if "S" in page_axes else block

    offset = series.dataoffset
    if offset is not None:  # contiguous, uncompressed data (incl. ImageJ files over 4 GB)
        # Plain reads at the frame's offset rather than a memory map: mapped pages would
        # stay in the resident size, which then grows with every frame read.
        frame_shape = tuple(series.keyframe.shape)
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        count = int(np.prod(frame_shape))

        def read(idx: tuple) -> np.ndarray:
            k = int(np.ravel_multi_index(idx, lead_shape)) if lead_shape else 0
            data = np.fromfile(path, dtype=dtype, count=count, offset=offset + k * count * dtype.itemsize)
            return to_frame(data.reshape(frame_shape).astype(dtype.newbyteorder("="), copy=False))

        return read
    n_pages = int(np.prod(lead_shape))
    if len(series.pages) == n_pages:
        def page(idx: tuple) -> int:
            return int(np.ravel_multi_index(idx, lead_shape)) if lead_shape else 0

        return lambda idx: to_frame(tif.asarray(key=page(idx), series=0))
    if series.nbytes > EAGER_LIMIT_BYTES:
        raise ValueError(f"{path}: TIFF layout not readable frame by frame, too big to load whole")
    data = series.asarray().reshape(lead_shape + tuple(series.keyframe.shape))
    return lambda idx: to_frame(data[idx])


def _tiff_calibration(path: Path, tif: tifffile.TiffFile, notes: list[str]) -> Calibration:
    """OME > ImageJ > vendor tags (rosettasciio) > cm/inch resolution tags."""
    page = tif.pages.first
    found = [(None, None)]
    warnings: list[str] = []
    if tif.is_ome:
        found.append(_ome_calibration(tif.ome_metadata, notes, warnings))
    if tif.is_imagej:
        found.append(_imagej_calibration(tif.imagej_metadata, page, notes))
    px = next((p for p, _ in found if p is not None), None)
    dt = next((t for _, t in found if t is not None), None)
    vendor_tags = any(t.code >= 32768 and t.code not in _IMAGEJ_TAGS for t in page.tags)
    if (px is None or dt is None) and vendor_tags:  # DM, FEI, Zeiss, Olympus, ... tags
        vendor_px, vendor_dt = _vendor_tiff_calibration(path, warnings)
        px, dt = px if px is not None else vendor_px, dt if dt is not None else vendor_dt
    if px is None:
        px = _resolution_tag_calibration(page, notes)
    return Calibration.from_file(pixel_size_nm=px, frame_interval_s=dt, warnings=warnings)


def _ome_calibration(xml: str, notes: list[str],
                     warnings: list[str]) -> tuple[float | None, float | None]:
    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return None, None
    a = pixels.attrib
    px = py = None
    if "PhysicalSizeX" in a:
        px = _length_nm(a["PhysicalSizeX"], a.get("PhysicalSizeXUnit", "µm"), notes, "OME x")
    if "PhysicalSizeY" in a:
        py = _length_nm(a["PhysicalSizeY"], a.get("PhysicalSizeYUnit", "µm"), notes, "OME y")
    dt = None
    if "TimeIncrement" in a:
        dt = _seconds(a["TimeIncrement"], a.get("TimeIncrementUnit", "s"))
    else:  # per-plane DeltaT of the first Z and channel
        planes = [p.attrib for p in pixels if p.tag.endswith("Plane") and "DeltaT" in p.attrib]
        planes = [p for p in planes if p.get("TheZ", "0") == "0" and p.get("TheC", "0") == "0"]
        planes.sort(key=lambda p: int(p.get("TheT", 0)))
        times = [_seconds(p["DeltaT"], p.get("DeltaTUnit", "s")) or 0.0 for p in planes]
        dt = interval_from_timestamps(times)
    return _xy_calibration(px, py, warnings), dt


def _imagej_calibration(ij: dict, page, notes: list[str]) -> tuple[float | None, float | None]:
    unit = ij.get("unit")
    if isinstance(unit, str) and "\\u" in unit:
        unit = unit.encode().decode("unicode_escape")  # ImageJ writes "\\u00B5m" for µm
    px = None
    if unit and unit.lower() not in ("pixel", "pixels", "px") and "XResolution" in page.tags:
        num, den = page.tags["XResolution"].value
        if num > 0 and den > 0:
            px = _length_nm(den / num, unit, notes, "ImageJ")
    dt = None
    if ij.get("finterval"):
        dt = _seconds(ij["finterval"], ij.get("tunit", "s"))  # ImageJ's default time unit is "sec"
    return px, dt


def _vendor_tiff_calibration(path: Path, warnings: list[str]) -> tuple[float | None, float | None]:
    """Pixel size / frame interval from vendor tags (DM, FEI, Zeiss, ...) via rosettasciio."""
    try:
        from rsciio.tiff import file_reader

        sig = file_reader(str(path), lazy=True)[0]
        _close_rsciio(sig["data"])
    except Exception as err:  # vendor tags are optional extras; never fail the read on them
        logger.debug("rosettasciio could not read %s: %s", path, err)
        return None, None
    axes = sig["axes"]
    if len(axes) < 2 or str(axes[-1].get("units")).lower() in ("none", "", "inch", "in", "cm"):
        return None, None  # uncalibrated or print resolution: handled by the tag fallback
    scratch: list[str] = []
    px = _xy_calibration(
        _length_nm(axes[-1].get("scale"), axes[-1].get("units"), scratch, "x"),
        _length_nm(axes[-2].get("scale"), axes[-2].get("units"), scratch, "y"),
        warnings,
    )
    dt = next((t for a in axes[:-2] if (t := _seconds(a.get("scale"), a.get("units")))), None)
    return px, dt


def _resolution_tag_calibration(page, notes: list[str]) -> float | None:
    """Pixel size from XResolution in px/cm or px/inch, if microscope-like (< 1 µm)."""
    unit = page.tags.get("ResolutionUnit")
    per = {2: 2.54e7, 3: 1e7}.get(int(unit.value) if unit is not None else 1)  # nm per inch / cm
    if per is None or "XResolution" not in page.tags:
        return None
    num, den = page.tags["XResolution"].value
    if num <= 0 or den <= 0:
        return None
    px = per * den / num
    if px >= 1000:
        notes.append(f"ignored XResolution {num / den:g} px/{'inch' if per > 1e7 else 'cm'}: "
                     "a print resolution, not a microscope calibration")
        return None
    return px


# --- rosettasciio formats (DM, EMD, TIA, MRC) ------------------------------------------------


def _open_rsciio(path: Path, module: str, label: str, *, signal: int | str | None) -> Movie:
    try:
        reader = importlib.import_module(module).file_reader
    except ModuleNotFoundError as err:  # EMD needs h5py (rosettasciio's "hdf5" extra)
        raise ImportError(f"reading {label} files needs the {err.name!r} package "
                          f"(pip install {err.name})") from err
    notes: list[str] = []
    try:
        signals = reader(str(path), lazy=True)
    except ValueError as err:  # e.g. RGBA DigitalMicrograph images are not lazy-readable
        if path.stat().st_size > EAGER_LIMIT_BYTES:
            raise ValueError(f"{path}: not lazily readable ({err}), too big to load whole") from err
        signals = reader(str(path), lazy=False)
        notes.append(f"read whole: {err}")
    images = [s for s in signals if _is_image_signal(s)]
    if not images:
        raise ValueError(f"{path} holds no 2-D image or image stack")
    sig = _choose_signal(images, signal, path)  # signals of one file share its handle
    data, axes = sig["data"], sig["axes"]
    cal_warnings: list[str] = []
    px = _xy_calibration(
        _length_nm(axes[-1].get("scale"), axes[-1].get("units"), notes, "x axis"),
        _length_nm(axes[-2].get("scale"), axes[-2].get("units"), notes, "y axis"),
        cal_warnings,
    )
    dt = _seconds(axes[0].get("scale"), axes[0].get("units")) if data.ndim == 3 else None
    om = sig.get("original_metadata", {})
    if dt is None and data.ndim == 3 and "ser_header_parameters" in om:
        dt = interval_from_timestamps(om["ser_header_parameters"].get("Time", []), resolution_s=1.0)
        notes.append("frame interval from the TIA whole-second clock" if dt else
                     "TIA clock too coarse for a frame interval")
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
                 read, close=lambda: _close_rsciio(data),
                 timestamps_s=None if stamp is None else np.zeros(1))


def _is_image_signal(sig: dict) -> bool:
    """2-D image, or a stack of them with one navigation axis first."""
    nav = [bool(a.get("navigate")) for a in sig["axes"]]
    ndim = sig["data"].ndim
    return len(nav) == ndim and nav in ([False, False], [True, False, False])


def _choose_signal(images: list[dict], signal: int | str | None, path: Path) -> dict:
    titles = [str(s.get("metadata", {}).get("General", {}).get("title")) for s in images]
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


def _close_rsciio(data: object) -> None:
    """Close the file behind a lazy rosettasciio array (HDF5 handle or TiffFile)."""
    if not hasattr(data, "dask"):
        return
    from rsciio.utils.file import get_file_handle

    handle = get_file_handle(data, warn=False)
    if handle is None:  # rsciio misses tifffile handles in recent dask graphs
        args = (a for task in data.dask.values() for a in getattr(task, "args", ()))
        handle = next((a.parent for a in args
                       if isinstance(getattr(a, "parent", None), tifffile.TiffFile)), None)
    if handle is not None:
        handle.close()


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
    return Movie(path, (n, *props.shape[-3:-1]), cal, meta, lambda i: handle.read(index=i),
                 iterate=iterate, close=handle.close)


def _open_image(path: Path) -> Movie:
    import imageio.v3 as iio
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        mode = im.mode
    meta = {"format": path.suffix.lower()[1:].upper(), "mode": mode, "notes": []}
    return Movie(path, (1, h, w), Calibration(), meta, lambda i: iio.imread(path))


#: `Movie.path` of an in-memory array (`movie_from_array`): not a file.
IN_MEMORY = Path("<array>")


def movie_from_array(data: np.ndarray) -> Movie:
    """A `Movie` over an in-memory (y, x) image or (t, y, x) stack, e.g. a cropped stack
    or HyperSpy's ``signal.data``, for `dislotrack.infer.pipeline.analyze`.

    It has no calibration: give ``analyze`` the pixel size and frame interval (else the
    pixel size is estimated from the fringes, and velocities are per frame). Its path
    is `IN_MEMORY`; ``metadata["sha256"]`` identifies the data.

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
    return Movie(path, (n_frames, *_frame_shape(data)), Calibration(), meta, read)


def _open_numpy(path: Path) -> Movie:
    try:  # allow_pickle=False: a .npy of Python objects is code, not an image
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a plain numeric array ({err})") from err
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
        raise ValueError(f"{path}: cannot be read as HDF5{hdf4}: {err}") from err
    notes = ["no calibration read from a generic HDF5 file"]
    if "Experiments" in handle:  # HyperSpy's layout, whatever the extension
        try:
            movie = _open_rsciio(path, "rsciio.hspy", "HyperSpy", signal=signal)
        except (KeyError, *_READ_ERRORS) as err:  # HyperSpy-like but not HyperSpy: read it plainly
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
    """Frame files at the top level, else anywhere below (GMS in-situ trees), natural order."""
    def is_frame(p: Path) -> bool:
        return p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".") and p.is_file()

    files = [p for p in folder.iterdir() if is_frame(p)]
    files = files or [p for p in folder.rglob("*") if is_frame(p)]
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
    shapes, stamps = [], []
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
    odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
    if odd is not None:
        raise ValueError(f"frames differ in shape: {files[0].name} is {shapes[0]} px but "
                         f"{files[odd].relative_to(folder)} is {shapes[odd]} px")
    notes = list(first.metadata.get("notes", []))
    times = np.array(stamps, dtype=float) - stamps[0] if None not in stamps else None
    dt = interval_from_timestamps(times) if times is not None else None
    if times is not None and dt is None and len(times) > 1:
        notes.append("the frames' acquisition times do not increase; no frame interval")
    if dt is not None and np.ptp(np.diff(times)) > 0.2 * dt:
        notes.append(f"frame steps vary from {np.diff(times).min():.4g} to "
                     f"{np.diff(times).max():.4g} s; using the median {dt:.4g} s")
    cal = Calibration.from_file(pixel_size_nm=first.calibration.pixel_size_nm, frame_interval_s=dt,
                                warnings=first.calibration.warnings)
    meta = {"format": f"folder of {first.metadata['format']} frames", "n_files": len(files),
            "first_file": str(files[0].relative_to(folder)), "notes": notes,
            # as the first frame's file says (e.g. one channel of several read)
            **{k: first.metadata[k] for k in ("warnings", "signal", "signals") if k in first.metadata}}

    def read(i: int) -> np.ndarray:
        with _open(files[i], signal) as m:
            return m[0]

    return Movie(folder, (len(files), *shapes[0]), cal, meta, read, timestamps_s=times)
