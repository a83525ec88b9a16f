"""A movie behind one interface: frames read lazily as float32 (H, W), and calibration.

`dislotrack.infer.readers.open_movie` returns one for every supported input.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import mmap
import numbers
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from dislotrack.infer.calibration import (
    UNEVEN_STEPS,
    Calibration,
    interval_from_timestamps,
    uneven_steps_warning,
)
from dislotrack.infer.interface import option

logger = logging.getLogger(__name__)

#: What the reading libraries raise for a damaged, truncated or mislabelled file
#: (rosettasciio: NotImplementedError for unknown format versions).
READ_ERRORS = (ValueError, OSError, EOFError, NotImplementedError, struct.error)
#: ITU-R BT.709 luma weights, as in skimage.color.rgb2gray (but keeping the value range).
_LUMA = np.array([0.2125, 0.7154, 0.0721])


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
        except READ_ERRORS as err:  # a truncated or damaged file: name it
            raise ValueError(_unreadable(self._path, i, err)) from err
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
            except READ_ERRORS as err:
                raise ValueError(_unreadable(self._path, i, err)) from err
            yield self._checked(frame, i)

    def _checked(self, raw: np.ndarray, i: int) -> np.ndarray:
        try:
            frame = to_gray_float32(raw)
        except ValueError as err:  # a reader gave no image: name the file
            raise ValueError(f"{self._path}: frame {i}: {err}") from err
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

    def window(self, start: int | None, stop: int | None) -> Movie:
        """Frames ``start`` to ``stop - 1`` of this movie as a movie of their own, numbered
        from 0 and read lazily from the same open file; ``metadata["frames"]`` records
        ``[start, stop]`` and timestamps count from ``start``. ``None`` is an open end
        (from the first frame, to the last), as ``--frames 100:`` is.

        Raises
        ------
        ValueError
            If the window holds no frame of this movie.
        """
        n = len(self)
        start, stop = 0 if start is None else start, n if stop is None else stop
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
        other = Movie(self._path, (stop - start, *self._shape[1:]), self._window_calibration(start, stop),
                      {**self._metadata, "frames": [start, stop]}, lambda i: base_read(start + i),
                      iterate=iterate if base_iterate is not None else None, close=None,
                      timestamps_s=None if times is None else times[start:stop] - times[start])
        return other

    def _window_calibration(self, start: int, stop: int) -> Calibration:
        """The calibration of frames ``start:stop``: where the file's frame interval comes
        from per-frame times, the window's own times give it (an even stretch of an
        unevenly clocked movie gets its own interval, and no uneven-steps warning)."""
        cal, times = self._calibration, self._timestamps
        if times is None or len(times) != len(self) or cal.frame_interval_source != "file":
            return cal
        part = times[start:stop]
        dt = interval_from_timestamps(part) if len(part) > 1 else cal.frame_interval_s
        if dt is None:
            return cal
        notes = [w for w in cal.warnings if not w.startswith(UNEVEN_STEPS)]
        if uneven := uneven_steps_warning(part, dt):
            notes.append(uneven)
        return dataclasses.replace(cal, frame_interval_s=dt, warnings=tuple(notes))

    def crop(self, x0: int, x1: int, y0: int, y1: int) -> Movie:
        """Columns ``x0`` to ``x1 - 1`` and rows ``y0`` to ``y1 - 1`` of every frame, as a
        movie of their own read lazily from the same open file; ``metadata["region"]``
        records ``[x0, x1, y0, y1]`` in the file's frames (`dislotrack.infer.options.region_box`
        checks a user's region).

        Raises
        ------
        ValueError
            If the bounds are not whole numbers of a non-empty region of these frames.
        """
        h, w = self._shape[1:]
        integral = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (x0, x1, y0, y1))
        if not (integral and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"[{x0}:{x1}, {y0}:{y1}] is not a region of the {w} x {h} px frames "
                             f"of {self._path.name} (whole numbers, 0 <= x0 < x1 <= {w}, "
                             f"0 <= y0 < y1 <= {h})")
        x0, x1, y0, y1 = int(x0), int(x1), int(y0), int(y1)
        base_read, base_iterate = self._read, self._iterate

        def cut(raw: np.ndarray) -> np.ndarray:  # grey first: a colour frame has a third axis
            return to_gray_float32(raw)[y0:y1, x0:x1]

        ox, _, oy, _ = self._metadata.get("region", [0, w, 0, h])  # a region of a region
        other = copy.copy(self)
        other._shape = (self._shape[0], y1 - y0, x1 - x0)
        other._metadata = {**self._metadata, "region": [ox + x0, ox + x1, oy + y0, oy + y1]}
        other._read = lambda i: cut(base_read(i))
        other._iterate = None if base_iterate is None else lambda: map(cut, base_iterate())
        other._close = None  # the file stays this movie's to close
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


def close_lazy_array(data: object) -> None:
    """Close the file behind a lazy rosettasciio array (HDF5 handle, TiffFile or memory map)."""
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
    _close_meta_map(data)


def _close_meta_map(data: object) -> None:
    """Close the memory map under a dask array's empty ``_meta``: rosettasciio's memmap
    readers (MRC) make it by calling their block reader once, and it keeps the file open
    (a descriptor per movie, until garbage collection). Each block maps the file anew."""
    base = getattr(data, "_meta", None)
    for _ in range(8):  # meta -> views -> np.memmap -> mmap
        if base is None or isinstance(base, mmap.mmap):
            break
        base = getattr(base, "base", None)
    if isinstance(base, mmap.mmap):
        with contextlib.suppress(BufferError):  # a view still reads from it: leave it open
            base.close()


def _unreadable(path: Path, i: int, err: Exception) -> str:
    """Why frame ``i`` of ``path`` cannot be read, with the fix where a codec is missing
    (tifffile reads LZW, JPEG, ... TIFFs only with the imagecodecs package)."""
    hint = " (pip install imagecodecs)" if "imagecodecs" in str(err) else ""
    return f"{path}: frame {i} cannot be read: {err}{hint}"
