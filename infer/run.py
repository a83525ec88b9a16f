"""``dislotrack infer``: analyze each input and write DESIGN.md's outputs."""

from __future__ import annotations

import contextlib
import glob
import inspect
import json
import logging
import os
import re
import shutil
import signal
import socket
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import TqdmWarning

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.infer import dipole_figure, event_figure, figures
from dislotrack.infer.calibration import Calibration
from dislotrack.infer.columns import TABLES
from dislotrack.infer.interface import option, unexpected_keywords
from dislotrack.infer.options import frame_window, region_box
from dislotrack.infer.outputs import MaskWriter, check_parquet, refuse_a_file, write_tables
from dislotrack.infer.pipeline import AnalysisResult, analyze, calibrate, check_region_size
from dislotrack.infer.readers import Movie, movie_from_array, open_movie
from dislotrack.infer.strain import COMPONENTS as STRAIN_COMPONENTS
from dislotrack.infer.strain import reference_box
from dislotrack.infer.warning_log import AnalysisWarning, named

with warnings.catch_warnings():  # a Jupyter kernel without ipywidgets: text bars, silently
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def output_dir(out: str | Path, input_path: str | Path, signal: int | str | None = None) -> Path:
    """``<out>/<input-stem>/``, or ``<out>/<input-stem>_<signal>/`` where one signal of a
    file holding several was picked (``--signal``), so that each signal's results stay.

    Examples
    --------
    >>> output_dir("results", "scan.emd", "DF2").as_posix()
    'results/scan_DF2'
    >>> output_dir("results", "scan.h5", "/entry/data/frames").as_posix()
    'results/scan_entry_data_frames'
    """
    p = Path(input_path)
    name = p.name if p.is_dir() else p.stem
    if signal is not None:  # a title or an HDF5 path: only characters safe in a folder name
        name += "_" + (re.sub(r"[^\w.+-]+", "_", str(signal)).strip("_") or "signal")
    return Path(out) / name


#: What `infer_one` passes on to `analyze`.
ANALYZE_KEYWORDS = frozenset(inspect.signature(analyze).parameters) - {
    "path", "calibration", "mask_sink", "frame_sink"}  # infer_one sets these itself


def infer_one(path: str | Path | np.ndarray, out: str | Path, *, movie: bool = True,
              parquet: bool = False, strain: bool = False, strain_resolution_nm: float = 1.0,
              strain_reference: str | None = None, name: str | None = None,
              **options) -> AnalysisResult:
    """Analyze one input and write tables, masks, summary and figures to ``out/<stem>/``.

    The result's warnings, those about writing included, are issued as
    `AnalysisWarning` at the caller's line (where writing fails after the analysis,
    the exception says so, without them).

    Parameters
    ----------
    path : str, Path or ndarray
        A movie or image file (or folder of frames), or an in-memory (y, x) image or
        (t, y, x) stack (`movie_from_array`; give ``name`` and ``pixel_size_nm``).
    out : str or Path
        Folder under which ``<stem>/`` (or ``<name>/``) is written.
    movie : bool
        Write the overlay (figures/overlay.mp4, or overlay.png for one frame).
    parquet : bool
        Also write the tables as Parquet.
    strain : bool
        Also write GPA strain maps (strain_exx/eyy/exy.tif, rotation_rad.tif) and
        figures/strain.png; summary.json's ``strain`` says how they were made.
    strain_resolution_nm : float
        The strain maps' resolution [nm] (the GPA mask's real-space width; coarser
        is smoother, and suppresses moiré ripples from aliased reflections).
    strain_reference : str, optional
        ``"X0:X1,Y0:Y1"`` [px, of the frames analysed]: strain and rotation relative
        to this region's mean lattice (e.g. perfect bulk beside an interface), not
        the frame's.
    name : str, optional
        The output folder's name: needed for an array, else the file's stem.
    **options
        `analyze`'s keywords.

    Returns
    -------
    AnalysisResult
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # issued once below, with the rest
        res = _infer_one(path, out, movie=movie, parquet=parquet, strain=strain,
                         strain_resolution_nm=strain_resolution_nm,
                         strain_reference=strain_reference, name=name, **options)
    for message in res.warnings:
        warnings.warn(named(res.input_path, message), AnalysisWarning, stacklevel=2)
    return res


def _infer_one(path: str | Path | np.ndarray, out: str | Path, *, movie: bool, parquet: bool,
               strain: bool, strain_resolution_nm: float, strain_reference: str | None = None,
               name: str | None = None, **options) -> AnalysisResult:
    if isinstance(path, np.ndarray):
        if not name:  # there is no file stem to name the folder by
            raise TypeError("infer_one(array, ...) needs name=, the output folder's name "
                            "(or use analyze(array) and write_tables)")
        opened = contextlib.nullcontext(movie_from_array(path))
    elif isinstance(path, (str, os.PathLike)):
        opened = None
    else:
        raise TypeError(f"infer_one takes a file path or a numpy array, not a "
                        f"{type(path).__name__}: for frames in memory, pass np.stack(frames) "
                        "with name=, or use analyze(...) and write_tables(...)")
    if name is not None and (not str(name).strip() or Path(str(name)).name != str(name)):
        raise ValueError(f"name must be a folder name, not a path: got {name!r}")
    if strain and not (np.isfinite(strain_resolution_nm) and strain_resolution_nm > 0):
        raise ValueError(f"{option('strain_resolution_nm')} must be a positive width [nm], "
                         f"got {strain_resolution_nm}")
    if strain_reference is not None and not strain:
        raise ValueError(f"{option('strain_reference')} applies to strain maps ({option('strain')})")
    if parquet:
        check_parquet()  # before, not after, the analysis
    refuse_a_file(out)
    # Here, not in analyze, whose TypeError names a function the caller did not call.
    unexpected_keywords("infer_one", options, ANALYZE_KEYWORDS)
    asked = options.get("signal")
    frames = options.pop("frames", None)
    region = options.pop("region", None)
    # Opened once for calibration, analysis and the overlay (a folder of frames reads every
    # file's header when opened).
    with opened or open_movie(path, signal=asked) as whole:  # unreadable: leaves no folder
        ignored = []
        if frames is not None and len(whole) == 1:  # e.g. `infer movie.dm4 image.tif --frames 0:10`
            ignored.append(f"{option('frames', frames, text=True)} does not apply to a single image: "
                           "ignored")
            frames = None
        if options.get("frame_interval_s") is not None and len(whole) == 1:  # recorded as "user" else
            ignored.append(f"{option('frame_interval_s', options.pop('frame_interval_s'))} does not "
                           "apply to a single image: ignored")
        span = None if frames is None else frame_window(frames, len(whole))
        if span == (0, len(whole)):  # the whole movie: its results, under its own name
            frames = span = None
        m = whole if span is None else whole.window(*span)
        box = None if region is None else region_box(region, m.shape[1:])
        if box == (0, m.shape[2], 0, m.shape[1]):  # the whole frame: its results, under its name
            box = None
        # Named by the signal read (a title, not the index it was asked by), where asked.
        dest = output_dir(out, name if name is not None else path,
                          None if asked is None else m.metadata.get("signal", asked))
        if frames is not None:  # beside the whole movie's results, not over them
            dest = dest.with_name("{}_frames{}-{}".format(dest.name, *m.metadata["frames"]))
        if box is not None:
            dest = dest.with_name("{}_x{}-{}_y{}-{}".format(dest.name, *box))
        cal = calibrate(m, pixel_size_nm=options.get("pixel_size_nm"),
                        frame_interval_s=options.get("frame_interval_s"),
                        d_spacing_nm=options.get("d_spacing_nm", D003_LINIO2_NM))
        if box is not None:  # calibrated on whole frames: the same for every region
            check_region_size(cal, m.shape[1:], (box[3] - box[2], box[1] - box[0]),
                              options.get("d_spacing_nm", D003_LINIO2_NM))
            m = m.crop(*box)
        ref_box = None if strain_reference is None else reference_box(strain_reference, m.shape[1:])
        stale = stale_outputs(dest, movie=movie, strain=strain, parquet=parquet,
                              single_image=m.shape[0] == 1)
        earlier = earlier_input(dest)  # read before this run replaces it
        # Written beside the results and moved in only when complete: a run that fails
        # leaves an earlier run's results whole, and no half-written folder.
        staging = claim_staging(dest)
        (staging / "figures").mkdir(parents=True)
        try:
            res = _analyze_and_write(m, staging, cal, movie=movie, parquet=parquet, strain=strain,
                                     strain_resolution_nm=strain_resolution_nm,
                                     strain_reference=ref_box, earlier=earlier,
                                     results_dir=dest, notes=ignored, **options)
            if strain and not (staging / f"{STRAIN_COMPONENTS['exx']}.tif").exists():
                # No maps could be made: an earlier run's would belie this run's warning.
                stale += [p for p in (*(dest / f"{n}.tif" for n in STRAIN_COMPONENTS.values()),
                                      dest / "figures" / "strain.png") if p.is_file()]
            with signals_held():
                _move_into(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    scored = stale_evaluation(dest)
    for old in stale + ([scored] if scored else []):  # only once this run's outputs are in place
        try:
            old.unlink()
        except OSError as err:  # e.g. an MP4 open in a player (Windows)
            res.warnings.append(f"could not remove the earlier run's {old.name}: {err}")
    if scored is not None and not scored.exists():
        res.warnings.append(f"removed {scored}: it scored the earlier results of {dest.name} "
                            "(run dislotrack evaluate again)")
    return res


def stale_evaluation(dest: Path) -> Path | None:
    """``evaluation.json`` beside ``dest`` (``<out>/<stem>/``) where it scores ``<stem>``:
    `dislotrack.infer.evaluate` made it from the results this run replaces."""
    report = dest.parent / "evaluation.json"
    try:
        scored = json.loads(report.read_text())
    except (OSError, ValueError):  # none, or not ours
        return None
    return report if isinstance(scored, dict) and dest.name in scored else None


def claim_staging(dest: Path) -> Path:
    """This process' staging folder for ``dest``: ``.<name>.running-<host>-<pid>`` beside it.

    Raises
    ------
    ValueError
        If another live process is writing ``dest`` (two runs into one folder would mix
        their files), or one on another machine may be (a shared folder): the message
        names its staging folder, to remove if that run has ended. Staging folders of runs
        of this machine that were killed are removed.
    """
    me = f"{socket.gethostname()}-{os.getpid()}"
    for other in dest.parent.glob(f".{glob.escape(dest.name)}.running*"):
        owner = other.name.removeprefix(f".{dest.name}.running").removeprefix("-")
        host, _, pid = owner.rpartition("-")
        elsewhere = bool(host) and host != socket.gethostname()
        if owner != me and pid.isdigit() and (elsewhere or _alive(int(pid))):
            process = f"process {pid} on {host}" if elsewhere else f"process {pid}"
            raise ValueError(f"another dislotrack run ({process}) is writing {dest}: wait for it, "
                             f"give another {option('out', 'FOLDER')}, or, if that run has ended, "
                             f"remove {other}")
        shutil.rmtree(other, ignore_errors=True)  # left by a run that was killed
    return dest.with_name(f".{dest.name}.running-{me}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (where the platform allows): moving
    a run's files into place is not cut in half."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _move_into(staging: Path, dest: Path) -> None:
    """Move every file of ``staging`` to the same place under ``dest``, replacing files
    of the same name (one filesystem: each move is a rename)."""
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = dest / src.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        src.replace(target)


def earlier_input(dest: Path) -> dict | None:
    """The input (``path``, ``sha256``, ...) an earlier run recorded in
    ``dest/summary.json``, if any."""
    try:
        earlier = dict(json.loads((dest / "summary.json").read_text())["input"])
    except (OSError, ValueError, KeyError, TypeError):  # no run there, or not one of ours
        return None
    return earlier if isinstance(earlier.get("path"), str) else None


def replaced_note(earlier: dict | None, res: AnalysisResult, dest: Path) -> str | None:
    """A warning where ``res`` replaces the results of another input of the same name in
    ``dest`` (x.dm4, then its x.tif export): another path and other content."""
    if earlier is None or earlier.get("sha256") == res.input_sha256:
        return None  # a rerun (also of a moved or linked file)
    if Path(earlier["path"]) == Path(res.input_path):
        return None  # the same file, changed since: a rerun
    return (f"replaced the results of {earlier.get('path')} in {dest} (a different input of the "
            f"same name; give another {option('out', 'FOLDER')} to keep both)")


#: Figures over time, which a single image does not get (nor the overlay MP4).
MOVIE_ONLY_FIGURES = ("displacement", "counts", "events", "dipoles")


def stale_outputs(dest: Path, *, movie: bool, strain: bool, parquet: bool,
                  single_image: bool = False) -> list[Path]:
    """Files of an earlier run in ``dest`` that a run with these options would not rewrite.

    Parameters
    ----------
    dest : Path
        An output folder (``<out>/<stem>/``); only one holding an earlier run's
        ``summary.json`` has stale outputs.
    movie, strain, parquet : bool
        The new run's options (`infer_one`).
    single_image : bool
        Whether the new run's input is one frame (its overlay is a PNG, and it has no
        figures over time).

    Returns
    -------
    list of Path
        The overlay MP4 (without ``movie`` or for a single image), its PNG (without
        ``movie`` or for a movie), the figures over time (`MOVIE_ONLY_FIGURES`, for a
        single image), strain maps (without ``strain``), Parquet tables (without
        ``parquet``) and evaluate's figure (made from the earlier predictions), where they
        exist.
    """
    if not (dest / "summary.json").is_file():
        return []
    names = ["figures/evaluation.png"]
    if not movie or single_image:
        names.append("figures/overlay.mp4")
    if not (movie and single_image):
        names.append("figures/overlay.png")
    if single_image:
        names += [f"figures/{n}.png" for n in MOVIE_ONLY_FIGURES]
    if not strain:
        names += [f"{n}.tif" for n in STRAIN_COMPONENTS.values()] + ["figures/strain.png"]
    if not parquet:
        names += [f"{t}.parquet" for t in TABLES]
    return [dest / n for n in names if (dest / n).is_file()]


def _analyze_and_write(m: Movie, dest: Path, cal: Calibration, *, movie: bool, parquet: bool,
                       strain: bool, strain_resolution_nm: float = 1.0,
                       strain_reference: tuple[int, int, int, int] | None = None,
                       earlier: dict | None = None,
                       results_dir: Path | None = None, notes: Sequence[str] = (),
                       **options) -> AnalysisResult:
    """Analyse ``m`` and write everything into ``dest``; ``earlier`` is the input of the
    results ``results_dir`` held before (`earlier_input`), for `replaced_note`; ``notes``
    lead the result's warnings (and summary.json's)."""
    shape = m.shape
    writer = MaskWriter(dest / "rocksalt_mask.tif", shape=shape, pixel_size_nm=cal.pixel_size_nm,
                        frame_interval_s=cal.frame_interval_s)
    strain_writer = None
    if strain:
        from dislotrack.infer.strain import StrainWriter

        strain_writer = StrainWriter(dest, shape=shape, pixel_size_nm=cal.pixel_size_nm,
                                     pixel_size_source=cal.pixel_size_source or "file",
                                     frame_interval_s=cal.frame_interval_s,
                                     d_spacing_nm=options.get("d_spacing_nm", D003_LINIO2_NM),
                                     resolution_nm=strain_resolution_nm,
                                     reference=strain_reference)
    try:
        res = analyze(m, calibration=cal, mask_sink=writer, frame_sink=strain_writer, **options)
    except BaseException:  # Ctrl-C included: nothing to compress, and no error over this one
        writer.discard()
        if strain_writer is not None:
            strain_writer.discard()
        raise
    writer.close()
    if res.shape[0] < len(m):  # the file ended early (analyze said so): figures of the frames read
        m = m.window(0, res.shape[0])
    if strain_writer is not None:
        strain_writer.close()
        strain_writer.figure(dest / "figures" / "strain.png")
    res.warnings[:0] = [n for n in notes if n not in res.warnings]
    if (note := replaced_note(earlier, res, results_dir or dest)) is not None:
        res.warnings.append(note)  # before summary.json is written
    write_tables(res, dest, parquet=parquet)
    if strain_writer is not None:  # how the strain maps were made (write_tables knows no maps)
        summary = dest / "summary.json"
        written = json.loads(summary.read_text())
        written["strain"] = strain_writer.settings()
        summary.write_text(json.dumps(written, indent=2) + "\n")
    figures.trajectories(res, dest / "figures" / "trajectories.png")
    if shape[0] > 1:  # motion, counts and events over time: nothing to show for one frame
        figures.displacement(res, dest / "figures" / "displacement.png")
        figures.counts(res, dest / "figures" / "counts.png")
        dipole_figure.dipoles(res, dest / "figures" / "dipoles.png")
        event_figure.events(res, m, dest / "figures" / "events.png")  # reads the frames shown
    if movie:
        import tifffile

        with tifffile.TiffFile(dest / "rocksalt_mask.tif") as masks:
            fps = 1.0 / res.calibration.frame_interval_s if res.calibration.frame_interval_s else 5.0
            frames = figures.overlay_frames(res, iter(m), (p.asarray() for p in masks.pages))
            frames = tqdm(frames, total=res.shape[0], desc="overlay.mp4", unit="frame",
                          disable=not options.get("progress", True) or res.shape[0] == 1)
            if shape[0] == 1:  # one frame: a PNG, which every viewer shows, not a movie
                figures.write_png(next(iter(frames)), dest / "figures" / "overlay.png")
            else:
                figures.write_mp4(frames, dest / "figures" / "overlay.mp4", fps=min(max(fps, 1.0), 30.0))
    return res
