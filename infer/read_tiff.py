"""TIFF stacks (plain, ImageJ, OME, vendor) read frame by frame (plain reads at each
frame's offset, or page by page; never memory-mapped), with their calibration: OME sizes,
time increments and per-plane times, ImageJ units and frame intervals, vendor tags (via
rosettasciio) or resolution tags in cm or inch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from dislotrack.infer.calibration import (
    PRINT_RESOLUTION_NM,
    Calibration,
    interval_from_timestamps,
    is_print_resolution,
    length_nm_or_none,
    non_increasing_warning,
    not_time_warning,
    seconds_or_none,
    square_pixel_size,
    uneven_steps_warning,
)
from dislotrack.infer.movie import Movie, close_lazy_array

logger = logging.getLogger(__name__)

#: Files that cannot be read lazily are loaded whole only below this size [bytes].
EAGER_LIMIT_BYTES = 256 * 2**20
_IMAGEJ_TAGS = (50838, 50839)  # IJMetadataByteCounts, IJMetadata


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


def open_tiff(path: Path) -> Movie:
    """A TIFF file as a lazy `Movie` with the calibration its tags give (module docstring);
    `dislotrack.infer.readers.open_movie` calls it for .tif/.tiff."""
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
        if _pages_as_series(tif):
            return _page_series_stack(path, tif)
        lead_axes = series.axes[: len(series.axes) - len(page_axes)]
        lead_shape = tuple(series.shape[: len(lead_axes)])
        notes: list[str] = []
        warnings = [] if len(tif.series) == 1 else [
            f"the TIFF holds {len(tif.series)} image series; only the first was read"]
        index, interleaved = _tiff_frame_index(lead_axes, lead_shape, warnings)
        _check_tiff_complete(path, tif, series, int(np.prod(lead_shape)))
        cut = [m for m in damage if "invalid page offset" in m]
        if cut:  # the chain of pages breaks off: tifffile kept the pages before the break
            raise ValueError(f"{path}: truncated or damaged: its pages break off after "
                             f"{len(index)} frame(s) (an incomplete write or copy?)")
        read = _tiff_reader(path, tif, series, lead_shape, page_axes)
        h, w = (series.keyframe.shape[page_axes.index(a)] for a in "YX")
        cal, times = _tiff_calibration(path, tif, notes)
        _note_uncalibrated(cal, notes)
        stacked = "".join(a for a, n in zip(lead_axes, lead_shape, strict=True) if n > 1)
        if stacked == "Z" and cal.frame_interval_s is None:  # ImageJ slices, OME SizeZ: no time
            said = "ImageJ 'slices' without 'frames'" if tif.is_imagej else f"TIFF axes {series.axes!r}"
            cal = dataclasses.replace(cal, warnings=(*cal.warnings, not_time_warning("z", said)))
        if interleaved and cal.frame_interval_s is not None:  # a frame step is no time step
            cal = Calibration.from_file(pixel_size_nm=cal.pixel_size_nm, warnings=cal.warnings)
            warnings[-1] += (" (its frame interval was not used: a frame step is not a time step; "
                             "save the movie with axes 'TYX')")
    except Exception:
        tif.close()
        raise
    meta = {"format": "OME-TIFF" if tif.is_ome else "ImageJ TIFF" if tif.is_imagej else "TIFF",
            "axes": series.axes, "dtype": str(series.dtype), "notes": notes, "warnings": warnings}
    per_frame = times is not None and len(times) == len(index) and not interleaved
    return Movie(path, (len(index), h, w), cal, meta, lambda i: read(index[i]), close=tif.close,
                 timestamps_s=np.asarray(times) - times[0] if per_frame else None)


#: An ImageJ/TIFF stack whose only stacked axis is C with more entries than this is a
#: movie saved without axes (tifffile writes a 3-D array as channels by default); up to
#: this many are detectors of one scan (HAADF, BF, ...), of which channel 0 is read.
MAX_DETECTOR_CHANNELS = 4


def _planar_stack(path: Path, tif: tifffile.TiffFile, series) -> Movie:
    """A one-page TIFF whose 3 or 4 planar samples are frames: tifffile stores a (3|4, y, x)
    array as planar RGB(A), which no camera writes for a colour image (those are (y, x, 3))."""
    n, h, w = series.shape
    cal, _ = _tiff_calibration(path, tif, notes := [])
    _note_uncalibrated(cal, notes)
    meta = {"format": "TIFF", "axes": series.axes, "dtype": str(series.dtype), "notes": notes,
            "warnings": [f"the TIFF stores {n} planar colour samples in one page, as tifffile "
                         f"writes a ({n}, y, x) array: read as {n} frames, not as one colour image"]}
    page = functools.cache(tif.pages.first.asarray)  # all frames are in it: read it once
    return Movie(path, (n, h, w), cal, meta, lambda i: page()[i], close=tif.close)


def _pages_as_series(tif: tifffile.TiffFile) -> bool:
    """Whether the file is a movie written page by page (one ``TiffWriter.write`` per
    frame, as acquisition scripts do): more single-page 2-D series of one shape and type
    than a scan has detectors (`MAX_DETECTOR_CHANNELS`), which tifffile lists apart."""
    first = tif.series[0]
    if tif.is_ome or len({s.name for s in tif.series}) > 1:  # positions or named detectors
        return False
    return len(tif.series) > MAX_DETECTOR_CHANNELS and all(
        s.axes == "YX" and len(s.pages) == 1 and s.shape == first.shape and s.dtype == first.dtype
        for s in tif.series)


def _page_series_stack(path: Path, tif: tifffile.TiffFile) -> Movie:
    """The frames of a file that `_pages_as_series` recognised, read one page at a time."""
    n, (h, w) = len(tif.series), tif.series[0].shape
    cal, _ = _tiff_calibration(path, tif, notes := [])
    _note_uncalibrated(cal, notes)
    meta = {"format": "TIFF", "axes": "TYX", "dtype": str(tif.series[0].dtype), "notes": notes,
            "warnings": [f"the TIFF holds {n} single-page images of one size (written frame by "
                         f"frame): read as {n} frames"]}
    return Movie(path, (n, h, w), cal, meta, lambda i: tif.series[i].asarray(), close=tif.close)


def _tiff_frame_index(axes: str, shape: tuple[int, ...],
                      warnings: list[str]) -> tuple[list[tuple], bool]:
    """Multi-indices into the non-image axes, one per frame (channel 0 only, unless the
    channels are the only stack and too many to be detectors: then they are the frames;
    with a time axis, index 0 of the others, e.g. z), and whether several axes were still
    read as one interleaved sequence."""
    ranges = [range(n) for n in shape]
    if "C" in axes and shape[axes.index("C")] > 1:
        n_c = shape[axes.index("C")]
        if n_c > MAX_DETECTOR_CHANNELS and all(n == 1 for a, n in zip(axes, shape, strict=True) if a != "C"):
            warnings.append(f"the file's {n_c} channels were read as {n_c} frames (it has no time "
                            "or z axis); save movies with axes 'TYX' to say so")
        else:
            warnings.append(f"the file holds {n_c} channels; only channel 0 was read")
            ranges[axes.index("C")] = range(1)
    if "T" in axes and shape[axes.index("T")] > 1:  # a time series of z-stacks (or positions)
        for k, (axis, n) in enumerate(zip(axes, shape, strict=True)):
            if axis not in "TC" and n > 1:
                warnings.append(f"the file holds {n} {_AXIS_NAMES.get(axis, f'{axis!r} planes')} per "
                                f"time point (axes {axes!r}); only the first was read")
                ranges[k] = range(1)
    interleaved = sum(len(r) > 1 for r in ranges) > 1
    if interleaved:
        warnings.append(f"TIFF axes {axes!r} {shape} were read as one sequence of frames")
    return list(np.ndindex(*[len(r) for r in ranges])), interleaved


#: What tifffile's axis letters stack, for warnings.
_AXIS_NAMES = {"Z": "z-slices", "R": "tiles", "P": "positions", "I": "images", "Q": "images"}


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


def _note_uncalibrated(cal: Calibration, notes: list[str]) -> None:
    """Say so in ``notes`` (summary.json input.notes) where the tags give no pixel size and
    no note already says why, as the NumPy and HDF5 readers do."""
    if cal.pixel_size_nm is None and not notes:
        notes.append("no calibration in the TIFF's tags (OME, ImageJ, vendor or resolution)")


def _tiff_calibration(path: Path, tif: tifffile.TiffFile,
                      notes: list[str]) -> tuple[Calibration, list[float] | None]:
    """OME > ImageJ > vendor tags (rosettasciio) > cm/inch resolution tags; and the OME
    per-plane times [s] (DeltaT of the first z and channel; None without them)."""
    page = tif.pages.first
    found = [(None, None)]
    warnings: list[str] = []
    times = None
    if tif.is_ome:
        *ome, times = _ome_calibration(tif.ome_metadata, notes, warnings)
        found.append(tuple(ome))
    if tif.is_imagej:
        found.append(_imagej_calibration(tif.imagej_metadata, page, notes, warnings))
    px = next((p for p, _ in found if p is not None), None)
    dt = next((t for _, t in found if t is not None), None)
    vendor_tags = any(t.code >= 32768 and t.code not in _IMAGEJ_TAGS for t in page.tags)
    if (px is None or dt is None) and vendor_tags:  # DM, FEI, Zeiss, Olympus, ... tags
        vendor_px, vendor_dt = _vendor_tiff_calibration(path, warnings)
        px, dt = px if px is not None else vendor_px, dt if dt is not None else vendor_dt
    if px is None and not any(w.startswith(_PRINT_NOTE) for w in warnings):  # said once
        px = _resolution_tag_calibration(page, warnings)
    return Calibration.from_file(pixel_size_nm=px, frame_interval_s=dt, warnings=warnings), times


def _ome_calibration(xml: str, notes: list[str],
                     warnings: list[str]) -> tuple[float | None, float | None, list[float] | None]:
    """Pixel size [nm], frame interval [s] and per-plane times [s] (DeltaT, else None)."""
    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return None, None, None
    a = pixels.attrib
    px = py = None
    if "PhysicalSizeX" in a:
        px = length_nm_or_none(a["PhysicalSizeX"], a.get("PhysicalSizeXUnit", "µm"), notes, "OME x")
    if "PhysicalSizeY" in a:
        py = length_nm_or_none(a["PhysicalSizeY"], a.get("PhysicalSizeYUnit", "µm"), notes, "OME y")
    dt, times = None, None
    if "TimeIncrement" in a:
        dt = seconds_or_none(a["TimeIncrement"], a.get("TimeIncrementUnit", "s"))
    else:  # per-plane DeltaT of the first Z and channel
        planes = [p.attrib for p in pixels if p.tag.endswith("Plane") and "DeltaT" in p.attrib]
        planes = [p for p in planes if p.get("TheZ", "0") == "0" and p.get("TheC", "0") == "0"]
        planes.sort(key=lambda p: int(p.get("TheT", 0)))
        times = [seconds_or_none(p["DeltaT"], p.get("DeltaTUnit", "s")) or 0.0 for p in planes] or None
        dt = interval_from_timestamps(times) if times else None
        if times and (said := uneven_steps_warning(times, dt) or non_increasing_warning(times)):
            warnings.append(said)
    return square_pixel_size(px, py, warnings), dt, times


def _unescaped(text: object) -> object:
    """An ImageJ unit as written: ImageJ escapes non-ASCII ("\\u00B5m" for µm)."""
    if isinstance(text, str) and "\\u" in text:
        return text.encode().decode("unicode_escape")
    return text


def _imagej_calibration(ij: dict, page, notes: list[str],
                        warnings: list[str]) -> tuple[float | None, float | None]:
    """Pixel size [nm] from ImageJ's ``unit`` (``yunit``) and X (Y) resolution, unless a
    print resolution; frame interval [s] from ``finterval`` and ``tunit``."""
    unit = _unescaped(ij.get("unit"))
    sizes = []
    for tag, axis_unit, what in (("XResolution", unit, "ImageJ x"),
                                 ("YResolution", _unescaped(ij.get("yunit", unit)), "ImageJ y")):
        num, den = page.tags[tag].value if tag in page.tags else (0, 0)
        size = None
        if axis_unit and str(axis_unit).lower() not in ("pixel", "pixels", "px") and num > 0 and den > 0:
            size = length_nm_or_none(den / num, axis_unit, notes, what)
        if is_print_resolution(size, axis_unit):  # ImageJ keeps the dpi of an editor's TIFF
            if tag == "XResolution":
                warnings.append(f"{_PRINT_NOTE} {num / den:g} px/{axis_unit} (ImageJ): a print "
                                "resolution, not a microscope calibration")
            size = None
        sizes.append(size)
    px = square_pixel_size(*sizes, warnings) if sizes[0] is not None else None
    dt = None
    if ij.get("finterval") is not None:
        tunit = _unescaped(ij.get("tunit", "s"))  # ImageJ's default time unit is "sec"
        dt = seconds_or_none(ij["finterval"], tunit)
        if dt is None and float(ij["finterval"] or 0) > 0:  # 0 is ImageJ's "not set"
            warnings.append(f"ignored the ImageJ frame interval {ij['finterval']} {tunit}: not a "
                            "time unit")
    return px, dt


def _vendor_tiff_calibration(path: Path, warnings: list[str]) -> tuple[float | None, float | None]:
    """Pixel size / frame interval from vendor tags (DM, FEI, Zeiss, ...) via rosettasciio."""
    try:
        from rsciio.tiff import file_reader

        sig = file_reader(str(path), lazy=True)[0]
        close_lazy_array(sig["data"])
    except Exception as err:  # vendor tags are optional extras; never fail the read on them
        logger.debug("rosettasciio could not read %s: %s", path, err)
        return None, None
    axes = sig["axes"]
    if len(axes) < 2 or str(axes[-1].get("units")).lower() in ("none", "", "inch", "in", "cm"):
        return None, None  # uncalibrated or print resolution: handled by the tag fallback
    scratch: list[str] = []
    px = square_pixel_size(
        length_nm_or_none(axes[-1].get("scale"), axes[-1].get("units"), scratch, "x"),
        length_nm_or_none(axes[-2].get("scale"), axes[-2].get("units"), scratch, "y"),
        warnings,
    )
    dt = next((t for a in axes[:-2] if (t := seconds_or_none(a.get("scale"), a.get("units")))), None)
    return px, dt


#: How the warning begins that a print resolution (dpi) was not taken for a pixel size.
_PRINT_NOTE = "ignored the resolution"


def _resolution_tag_calibration(page, warnings: list[str]) -> float | None:
    """Pixel size from XResolution in px/cm or px/inch, if microscope-like (< 1 µm)."""
    unit = page.tags.get("ResolutionUnit")
    per = {2: 2.54e7, 3: 1e7}.get(int(unit.value) if unit is not None else 1)  # nm per inch / cm
    if per is None or "XResolution" not in page.tags:
        return None
    num, den = page.tags["XResolution"].value
    if num <= 0 or den <= 0:
        return None
    px = per * den / num
    if px >= PRINT_RESOLUTION_NM:
        warnings.append(f"{_PRINT_NOTE} {num / den:g} px/{'inch' if per > 1e7 else 'cm'} (TIFF tags): "
                        "a print resolution, not a microscope calibration")
        return None
    return px
