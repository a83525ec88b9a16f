"""The ``dislotrack`` command line: a thin dispatcher over the subpackages.

Each subcommand's implementation lives beside the code it drives and is
imported lazily, so ``dislotrack generate`` never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.data_gen.version import package_version
from dislotrack.infer.calibration import parse_frame_interval, parse_pixel_size
from dislotrack.infer.interface import command_line


def _check_out_folder(out: str) -> None:
    """Refuse an ``--out`` that is a file or cannot be made (before any work)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    folder = Path(os.path.abspath(out))  # "new/../out": never rmdir "new/.." below
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:  # made and removed again: a refused option later leaves no empty folder behind
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. read-only or under /proc: say which option
        raise NotADirectoryError(f"--out {out}: cannot create the folder ({err.strerror or err})") from err
    for p in missing:  # deepest first
        p.rmdir()


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write synthetic labelled images or movies")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of images (or movies)")
    p.add_argument("--size", type=int, default=256,
                   help=f"image side [px] (default 256, at most {MAX_GENERATE_SIZE})")
    p.add_argument("--mode", choices=["hrtem", "stem", "mixed"], default="mixed",
                   help="imaging mode (default mixed: each item HRTEM or STEM at random)")
    p.add_argument("--movie", type=int, default=None, metavar="FRAMES",
                   help="write movies of FRAMES (>= 2) frames instead of single images")
    p.add_argument("--frame-interval", type=_frame_interval, default=None, metavar="S",
                   help="time between movie frames [s; or with a unit: 40ms, 25fps] (default 1)")
    p.add_argument("--dose", type=_dose_range, default=None, metavar="LOW[,HIGH]",
                   help="electron dose [e/A^2]: one value, or a range drawn log-uniformly "
                        "(default 20,5000)")
    p.add_argument("--pixel-size", type=_pixel_size, default=None, metavar="NM",
                   help="pixel size [nm/px; or with a unit: 1.2A] (default 0.1, the bundled model's)")
    p.add_argument("--material", default=None, metavar="NAME",
                   help="LiNiO2, LiCoO2, NMC811 or NMC111 (default: drawn per structure)")
    p.add_argument("--density", type=float, default=None, metavar="D",
                   help="dislocation sites (single or dipole) per 100 nm^2 (default 1); "
                        "movies: 0.6 D single cores per 100 nm^2, at least 0.5 per movie on "
                        "average (so --density 0 still gives some)")
    p.add_argument("--dipole-fraction", type=float, default=None, metavar="F",
                   help="share of sites that are dipoles (default 0.35); movies: 2 F dipoles "
                        "per movie on average, so F may exceed 1")
    p.add_argument("--basal-fraction", type=float, default=None, metavar="F",
                   help="share of dislocations with a basal Burgers vector, which the (003) "
                        "fringes do not show (default 0.2)")
    p.add_argument("--perfect-fraction", type=float, default=None, metavar="F",
                   help="share of images with no dislocation (default 0.1; not for movies)")
    p.add_argument("--rocksalt-probability", type=float, default=None, metavar="P",
                   help="chance of a rock-salt domain around each core (default 0.3)")
    p.add_argument("--variants", type=int, default=1, metavar="V",
                   help="images per generated structure (new lens/probe and detector each; "
                        "about 4x faster at 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    p.set_defaults(func=_run_generate)


#: Largest ``generate --size``: the generator's cost grows faster than the area
#: (1024 px: 7-10 s per image on 2 cores), and training crops 128 px anyway.
MAX_GENERATE_SIZE = 2048


def _dose_range(value: str) -> tuple[float, float]:
    """``--dose``: ``D`` (one dose) or ``LOW,HIGH`` [e/A^2]."""
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected DOSE or LOW,HIGH in e/A^2, got {value!r}")
    return (parts[0], parts[-1])


def _pixel_size(value: str) -> float:
    """``--pixel-size``: nm/px, or a length with its unit (`parse_pixel_size`)."""
    try:
        return parse_pixel_size(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _frame_interval(value: str) -> float:
    """``--frame-interval``: s, or a time or frame rate with its unit (`parse_frame_interval`)."""
    try:
        return parse_frame_interval(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_generate(args: argparse.Namespace) -> int:
    _check_out_folder(args.out)
    if args.movie is not None and args.movie < 2:  # 0 would quietly mean single images
        raise ValueError(f"--movie needs at least 2 frames, got {args.movie} "
                         "(leave it out for single images)")
    if args.size > MAX_GENERATE_SIZE:
        raise ValueError(f"--size {args.size} is over {MAX_GENERATE_SIZE} px (1024 px already takes "
                         "about 10 s per image); use the Python API for larger fields")
    if args.frame_interval is not None and args.movie is None:
        raise ValueError("--frame-interval applies to movies (--movie FRAMES)")
    if args.perfect_fraction is not None and args.movie is not None:
        raise ValueError("--perfect-fraction applies to single images (movies draw their own "
                         "number of dislocations, which may be none)")
    if args.dipole_fraction is not None and args.movie is None and args.dipole_fraction > 1:
        raise ValueError(f"--dipole-fraction is a share of sites for images, at most 1, got "
                         f"{args.dipole_fraction}")
    try:
        paths = _generate(args)
    except ValueError as err:  # the generator's config names its fields: say the flags
        field, _, rest = str(err).partition(" ")
        if field not in GENERATE_FLAGS:
            raise
        raise ValueError(f"{GENERATE_FLAGS[field]} {rest}") from None
    kind = "movie" if args.movie else "image"
    print(f"{len(paths)} labelled {kind}{'s' * (len(paths) != 1)} in {args.out}/")
    return 0


#: `GeneratorConfig` fields whose checks `generate` reports under its flags.
GENERATE_FLAGS = {"size": "--size", "pixel_size": "--pixel-size", "dose": "--dose",
                  "density": "--density", "dipole_fraction": "--dipole-fraction",
                  "basal_fraction": "--basal-fraction", "perfect_fraction": "--perfect-fraction",
                  "rocksalt_probability": "--rocksalt-probability"}


def _generate(args: argparse.Namespace) -> list:
    """`generate_dataset` with the options of ``dislotrack generate``."""
    from dislotrack.data_gen.export import generate_dataset

    return generate_dataset(out=args.out, n=args.n, size=args.size, mode=args.mode,
                             movie_frames=args.movie or 0, seed=args.seed, variants=args.variants,
                             frame_interval=1.0 if args.frame_interval is None else args.frame_interval,
                             dose=args.dose,
                             pixel_size=args.pixel_size, material=args.material,
                             density=args.density, dipole_fraction=args.dipole_fraction,
                             basal_fraction=args.basal_fraction,
                             perfect_fraction=args.perfect_fraction,
                             rocksalt_probability=args.rocksalt_probability)


def _int_or_text(value: str) -> int | str:
    """``--signal``: an index if it is a whole number, else a title or dataset path."""
    return int(value) if value.lstrip("-").isdigit() else value


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="detect and track dislocations in movies")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TIFF/OME-TIFF, DM3/DM4, EMD, SER, MRC, HSPY, HDF5/H5, NPY, MP4/AVI, PNG/JPG or a "
                        "folder of frames")
    p.add_argument("--out", required=True, help="output folder (one subfolder per input)")
    p.add_argument("--model", default=None,
                   help="model <stem>, or a bundled one: default (0.1 nm/px), fine (0.05 nm/px)")
    p.add_argument("--pixel-size", type=_pixel_size, default=None, metavar="NM",
                   help="pixel size [nm/px; or with a unit: 1.2A, 0.12nm/px] (overrides the file)")
    p.add_argument("--frame-interval", type=_frame_interval, default=None, metavar="S",
                   help="time between frames [s; or with a unit: 40ms, 25fps] (overrides the file)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    _add_precision(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="core score threshold (0-1; default: the model card's calibrated one)")
    p.add_argument("--signal", type=_int_or_text, default=None, metavar="NAME",
                   help="for files holding several images (multi-detector EMD, DM, HDF5): the "
                        "title, dataset path or index of the one to analyse (default: the first; "
                        "HDF5: the largest)")
    p.add_argument("--frames", default=None, metavar="START:STOP",
                   help="analyse only frames START to STOP-1 (from 0; either end may be left "
                        "out), e.g. 100:250 of a long movie; written to <stem>_framesSTART-STOP/, "
                        "numbered from 0 there (summary.json options.frames says which)")
    p.add_argument("--region", default=None, metavar="X0:X1,Y0:Y1",
                   help="analyse only pixel columns X0 to X1-1 and rows Y0 to Y1-1 of each frame "
                        "(from 0; any end may be left out), e.g. the particle in a large frame or "
                        "a domain interface; written to <stem>_xX0-X1_yY0-Y1/, positions in the "
                        "region's pixels (summary.json options.region says which)")
    p.add_argument("--d-spacing", type=float, default=D003_LINIO2_NM, metavar="NM",
                   help=f"(003) spacing of the material [nm] (default LiNiO2, {D003_LINIO2_NM})")
    p.add_argument("--max-speed", type=float, default=2.0, metavar="NM_S",
                   help="largest plausible dislocation speed for linking [nm/s] (default 2; "
                        "at an assumed 1 s per frame where the frame interval is unknown)")
    p.add_argument("--memory", type=int, default=5, metavar="FRAMES",
                   help="frames a core may be missed and still be linked (default 5)")
    p.add_argument("--min-length", type=int, default=6, metavar="FRAMES",
                   help="shortest track kept (default 6)")
    p.add_argument("--max-gap", type=int, default=12, metavar="FRAMES",
                   help="longest gap that gap closing bridges (default 12; 0 = none)")
    p.add_argument("--weak-fraction", type=float, default=0.5, metavar="F",
                   help="peaks above F x threshold may extend track ends (default 0.5; 1 = off)")
    p.add_argument("--network-h", action="store_true",
                   help="keep the network's h for glide/climb even where the lattice gives the "
                        "Burgers vectors (default: snap each track's h to the lattice's)")
    p.add_argument("--detector", choices=["unet", "gpa"], default="unet",
                   help="the network (default) or the classical GPA phase-singularity baseline")
    from dislotrack.infer.options import TTA_VIEWS

    p.add_argument("--tta", nargs="?", type=int, const=8, default=None, choices=TTA_VIEWS, metavar="N",
                   help="test-time augmentation: average the network over N views of each frame "
                   "(1: none; 2: the frame and its 180° turn; 4: the quarter turns; 8, or --tta "
                   "alone: all flips and transposes), N times the network's time; 2 removes most "
                   "false cores on real perfect lattices (README: Detection accuracy). Default: 2 "
                   "for a single image, 1 for a movie")
    p.add_argument("--strain", action="store_true",
                   help="also write GPA strain maps (TIFF stacks) and a strain figure")
    p.add_argument("--strain-resolution", type=float, default=1.0, metavar="NM",
                   help="real-space resolution of the strain maps [nm] (default 1; 2 smooths "
                        "lattice-scale ripples)")
    p.add_argument("--strain-reference", metavar="X0:X1,Y0:Y1",
                   help="strain and rotation relative to this region's mean lattice [px of the "
                        "frames analysed], e.g. perfect bulk beside an interface (default: the "
                        "frame's mean lattice)")
    p.add_argument("--no-movie", action="store_true",
                   help="skip the overlay (overlay.mp4; a single image's overlay.png)")
    p.add_argument("--parquet", action="store_true", help="also write Parquet tables")
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.inputs if not Path(p).exists()]
    if missing:  # say so before the slow imports, not after analysing the inputs before it
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    if args.parquet:  # before, not after, analysing
        from dislotrack.infer.outputs import check_parquet

        check_parquet()
    if args.frames is not None:  # its syntax, before any input is opened
        from dislotrack.infer.options import frame_window

        frame_window(args.frames, sys.maxsize)
    if args.region is not None:  # likewise
        from dislotrack.infer.options import region_bounds

        region_bounds(args.region)
    if args.strain_resolution != 1.0 and not args.strain:
        raise ValueError("--strain-resolution applies to strain maps (--strain)")
    if args.strain_reference is not None and not args.strain:
        raise ValueError("--strain-reference applies to strain maps (--strain)")
    if not (math.isfinite(args.strain_resolution) and args.strain_resolution > 0):
        raise ValueError(f"--strain-resolution must be a positive width [nm], got {args.strain_resolution}")
    from dislotrack.infer.options import (
        check_calibration_options,
        check_detector_options,
        check_linking_options,
    )

    # Once, before any input is read (analyze checks again, for the Python API), and before
    # the slow imports (torch, scikit-image, trackpy: seconds), so a typo fails at once.
    check_detector_options(args.detector, model=args.model, threshold=args.threshold, tta=args.tta,
                           weak_fraction=args.weak_fraction, precision=args.precision)
    check_linking_options(max_speed_nm_s=args.max_speed, memory=args.memory,
                          min_length=args.min_length, max_gap=args.max_gap)
    check_calibration_options(pixel_size_nm=args.pixel_size, frame_interval_s=args.frame_interval,
                              d_spacing_nm=args.d_spacing)
    if len(args.inputs) == 1:  # (of several, the others would still run: checked per input)
        from dislotrack.infer.readers import check_readable

        check_readable(Path(args.inputs[0]))
    from dislotrack.data_gen.annotations import mask_sidecar
    from dislotrack.infer.predict import network_dtype, pick_device
    from dislotrack.infer.run import output_dir

    # An unknown or unavailable device: one line, not one per input.
    dev = pick_device(args.device)
    if args.detector == "unet":
        network_dtype(args.precision, dev)
    masks = {p: side for p in args.inputs if (side := mask_sidecar(p))}  # e.g. `infer lab/*.tif`
    for p, side in masks.items():
        print(f"{p}: skipped (the rock-salt mask of annotation {side.name})", file=sys.stderr)
    args.inputs = [p for p in args.inputs if p not in masks]
    if not args.inputs:
        raise ValueError("no input left to analyse")
    _check_out_folder(args.out)
    folders = [output_dir(args.out, p, args.signal) for p in args.inputs]
    if len(set(folders)) < len(folders):  # one would overwrite the other's outputs
        twice = sorted({str(f) for f in folders if folders.count(f) > 1})
        raise ValueError(f"several inputs would write to {', '.join(twice)}; "
                         "analyse them in separate runs (--out)")
    done = {"written": 0, "failed": 0, "current": None}  # the current input: not yet written
    with _interruptible() as stopped:
        for path in args.inputs:
            done["current"] = path
            _infer_input(path, args, done)
    failed = done["failed"]
    if stopped:
        now = done["current"]
        while_ = (f" while analysing {now}: its results folder is as it was before (nothing "
                  "half-written)") if now else ""
        print(f"dislotrack infer: {stopped[0]}{while_}; {done['written']} of {len(args.inputs)} "
              "inputs were finished and written" + (f", {failed} failed" if failed else ""),
              file=sys.stderr)
        return stopped[1]
    if failed and len(args.inputs) > 1:
        print(f"{failed} of {len(args.inputs)} inputs failed (see above)", file=sys.stderr)
    return 1 if failed else 0


class _Terminated(BaseException):
    """SIGTERM, raised where the process is (as Ctrl-C raises KeyboardInterrupt), so that
    the run's clean-up (its staging folder) happens."""


@contextlib.contextmanager
def _interruptible() -> Iterator[list]:
    """Ctrl-C and SIGTERM end the loop inside with one line instead of a traceback: yields a
    list that then holds (what stopped it, the exit status)."""
    stopped: list = []

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        yield stopped
    except KeyboardInterrupt:
        stopped[:] = ["interrupted (Ctrl-C)", 128 + signal.SIGINT]
    except _Terminated:
        stopped[:] = ["stopped by SIGTERM", 128 + signal.SIGTERM]
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _infer_input(path: str, args: argparse.Namespace, done: dict) -> None:
    """Analyse one input of ``dislotrack infer`` and print its line; ``done`` counts it
    (``written`` or ``failed``) as soon as that is so, and clears ``current``."""
    from dislotrack.infer.pipeline import AnalysisWarning
    from dislotrack.infer.run import infer_one

    try:
        with warnings.catch_warnings():  # printed below, after the input's result line
            warnings.simplefilter("ignore", AnalysisWarning)
            res = infer_one(path, args.out, movie=not args.no_movie, parquet=args.parquet,
                            strain=args.strain, strain_resolution_nm=args.strain_resolution,
                            strain_reference=args.strain_reference,
                            detector=args.detector,
                            model=args.model, pixel_size_nm=args.pixel_size,
                            frame_interval_s=args.frame_interval, device=args.device,
                            precision=args.precision,
                            threshold=args.threshold, d_spacing_nm=args.d_spacing,
                            max_speed_nm_s=args.max_speed, memory=args.memory,
                            weak_fraction=args.weak_fraction, lattice_h=not args.network_h,
                            min_length=args.min_length, max_gap=args.max_gap, tta=args.tta,
                            signal=args.signal, frames=args.frames, region=args.region)
    except USER_ERRORS as err:  # one unreadable movie does not stop the others
        done["failed"], done["current"] = done["failed"] + 1, None
        if len(args.inputs) == 1 or os.environ.get("DISLOTRACK_DEBUG"):
            raise
        msg = str(err)  # name the input once: most messages already start with it
        print(msg if str(path) in msg else f"{path}: error: {msg}", file=sys.stderr)
        return
    done["written"], done["current"] = done["written"] + 1, None
    n = len(res.detections)
    from dislotrack.infer.options import part_label

    name = f"{path}{part_label(res.options)}"  # which part of it, where not the whole
    if res.shape[0] == 1:  # a single image: cores, no tracks or events to speak of
        print(f"{name}: {n} core{'s' * (n != 1)}")
    else:
        counts = {"detection": n, "track": len(res.track_summary), "event": len(res.events)}
        print(f"{name}: " + ", ".join(f"{k} {noun}{'s' * (k != 1)}" for noun, k in counts.items()))
    from dislotrack.infer.calibration import is_provenance_note

    for w in res.warnings:
        print(f"  {'note' if is_provenance_note(w) else 'warning'}: {w}", file=sys.stderr)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="analyse a synthetic movie with known motion (bundled model)",
                       description="Generate a 30-frame movie like Wang et al.'s (one dislocation "
                                   "gliding at 0.38 nm/s, one climbing at -0.18 nm/s, away from its "
                                   "extra half-plane, a dipole that nucleates and annihilates; "
                                   "1 frame/s), analyse it with the "
                                   "bundled model and print measured against true velocities and "
                                   "events. About 15 s on 2 CPU cores.")
    p.add_argument("--out", default="dislotrack_demo", help="output folder")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    _add_precision(p)
    p.set_defaults(func=lambda a: _demo(a))


#: Inference names its arithmetic by dtype, training by Lightning's precision; each
#: command's --precision takes the other's name for the same arithmetic too.
_DTYPE_OF_LIGHTNING = {"32-true": "float32", "bf16-mixed": "bfloat16", "16-mixed": "float16"}
_LIGHTNING_OF_DTYPE = {dtype: name for name, dtype in _DTYPE_OF_LIGHTNING.items()}


def _add_precision(p: argparse.ArgumentParser) -> None:
    # Kept in step with dislotrack.infer.predict.PRECISIONS (a test checks), which is not
    # imported here: torch would make every command's --help slow.
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   type=lambda name: _DTYPE_OF_LIGHTNING.get(name, name), metavar="PRECISION",
                   help="auto, float32, bfloat16 or float16: the network's arithmetic; auto "
                        "(default) is float16 on CUDA, bfloat16 on "
                        "CPUs with AMX matrix units (about twice as fast, same accuracy on our "
                        "benchmarks), float32 elsewhere; float32 forces full precision "
                        "(training's names 32-true, bf16-mixed, 16-mixed are taken too)")


def _demo(args: argparse.Namespace) -> int:
    from dislotrack.infer.demo import run_demo
    from dislotrack.infer.predict import network_dtype, pick_device

    _check_out_folder(args.out)
    network_dtype(args.precision, pick_device(args.device))  # before the movie is rendered
    run_demo(args.out, device=args.device, precision=args.precision)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score infer outputs against annotations",
        description="Score infer's outputs (--pred, one subfolder per input) against annotations "
                    "(--truth): per frame, predicted and annotated cores are matched one to one "
                    "within 0.5 nm (Hungarian), events within 1 frame and 0.5 nm. Prints a table "
                    "per item and pooled; writes <pred>/evaluation.json and "
                    "<pred>/<stem>/figures/evaluation.png (found, missed and false cores).")
    p.add_argument("--pred", required=True, help="infer output folder")
    p.add_argument("--truth", required=True, help="folder of annotations (<stem>.json ...)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from dislotrack.infer.evaluate import evaluate_folders, report_text
    from dislotrack.models.metrics import MATCH_RADIUS_NM

    report = evaluate_folders(args.pred, args.truth)
    print(report_text(report))  # errors: stderr, below
    errors = {stem: r["error"] for stem, r in report.items() if "error" in r}
    for stem, r in report.items():
        if "note" in r:
            print(f"{stem}: {r['note']}", file=sys.stderr)
    made_by = [m for r in report.values() if (m := r.get("predicted_by"))]
    models = {(m["model"], m["sha256"]) for m in made_by}
    if len(models) == 1:  # two runs' printouts (base vs fine-tuned) tell themselves apart
        ((name, sha),) = models
        settings = {f"{k} {', '.join(sorted({str(m.get(k)) for m in made_by}))}"
                    for k in ("tta", "threshold") if any(m.get(k) is not None for m in made_by)}
        print(f"predictions by: {name}" + (f" (sha256 {sha[:12]}…)" if sha else "")
              + (f", infer {'; '.join(sorted(settings))}" if settings else ""))
    print(f"cores match within {MATCH_RADIUS_NM:g} nm (one to one), events also within 1 frame")
    if len(models) > 1:  # e.g. a folder holding runs of the bundled and a fine-tuned model
        print(f"note: the predictions were made by {len(models)} different models "
              f"({', '.join(sorted(str(m) for m, _ in models))}); see predicted_by in evaluation.json",
              file=sys.stderr)
    print(f"report: {Path(args.pred) / 'evaluation.json'}; found, missed and false cores: "
          f"{Path(args.pred)}/<stem>/figures/evaluation.png")
    for stem, msg in errors.items():
        print(f"{stem}: not scored: {msg}", file=sys.stderr)
    return 1 if errors else 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on annotated lab data")
    p.add_argument("--data", required=True, help="folder of annotations (<stem>.json + .tif + _cores.csv)")
    p.add_argument("--out", required=True, help="output model <stem> (.safetensors + .json)")
    p.add_argument("--model", default=None, help="start from this model (default: bundled)")
    p.add_argument("--epochs", type=int, default=10, help="(default 10)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    p.add_argument("--size", type=int, default=128,
                   help="training crop side [px, canonical] (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="(default 8)")
    p.add_argument("--crops-per-epoch", type=int, default=256, help="(default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction held out for validation, in [0, 1): whole annotated items when "
                        "there are two or more, else frames (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default auto)")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"],
                   type=lambda name: _LIGHTNING_OF_DTYPE.get(name, name), metavar="PRECISION",
                   help="32-true, bf16-mixed or 16-mixed: Lightning's training precision (default "
                        "32-true; bf16-mixed is about twice as fast on CPUs with AMX, 16-mixed for "
                        "GPUs; infer's names "
                        "float32, bfloat16, float16 are taken too)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model at --out")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from dislotrack.infer.options import check_folder

    check_folder(args.data, "--data (the annotation folder)")  # before the slow imports (5 s)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from dislotrack.models.io import model_paths
    from dislotrack.train.errors import without_gpu_hint
    from dislotrack.train.finetune import finetune

    if args.out.endswith(("/", os.sep)) or Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: a model's path without suffix, e.g. models/mine "
                         "(writes models/mine.safetensors and models/mine.json), not a folder")
    weights, card = model_paths(args.out)
    if not args.overwrite and (weights.exists() or card.exists()):
        raise ValueError(f"--out {args.out}: {weights if weights.exists() else card} exists; "
                         "choose another --out or add --overwrite")
    check_annotated_images(args.data)
    try:
        metrics = finetune(data=args.data, out=args.out, model=args.model, epochs=args.epochs,
                           lr=args.lr, size=args.size, batch_size=args.batch_size,
                           crops_per_epoch=args.crops_per_epoch, val_fraction=args.val_fraction,
                           seed=args.seed, accelerator=args.accelerator,
                           precision=args.precision, verbose=True,
                           command=args.command_line, overwrite=args.overwrite)
    except MisconfigurationException as err:  # e.g. --accelerator gpu on a machine without one
        raise ValueError(without_gpu_hint(f"--accelerator {args.accelerator}: {err}",
                                          "--accelerator cpu (or auto)")) from err
    written = json.loads(card.read_text())
    held_out = bool(written["training"]["finetune"]["val_frames"])
    if not held_out:
        n = written["training"]["finetune"]["frames"]
        why = ("--val-fraction 0" if args.val_fraction == 0 else
               "only 1 frame: nothing left to validate on; add items or annotate more frames"
               if n == 1 else f"--val-fraction {args.val_fraction:g} of {n} frames rounds to "
               "none; raise it, or add items")
        print(f"no frames were held out ({why}): the last training losses")
    print(finetune_report(metrics, written["metrics"]))
    stem = weights.with_suffix("")
    print(f"model written to {weights} / {card.name} (use: dislotrack infer --model {stem})")
    logs = stem.with_name(stem.name + "_logs") / "metrics.csv"
    if logs.is_file():
        print(f"scores per epoch: {logs} " + ("(validation rows; the base model's is the first, "
                                              "model 'base')" if held_out else "(training losses)"))
    return 0


def check_annotated_images(folder: str | Path) -> list[str]:
    """Check each annotated image against its annotation's pixel size, opening it once.

    Refuses an annotation whose pixel size disagrees with the image file's own
    calibration as infer reads it (FEI, OME, DM-saved TIFFs, beyond the ImageJ ones
    `read_annotation` checks): fine-tuning at one scale and inferring at the other is
    silently wrong. Then warns about (and returns) the images whose first frame shows no
    (003) fringes at the annotated pixel size, as infer warns about its input: a slipped
    pixel size in an uncalibrated lab TIFF (which nothing else can check) would train at
    the wrong scale. Fringe-free negatives (another material, vacuum) are allowed.

    Raises
    ------
    ValueError
        Naming every conflicting annotation and both values.
    """
    import logging

    from dislotrack.data_gen.annotations import annotation_image, is_sidecar
    from dislotrack.data_gen.text import first_few
    from dislotrack.infer.lattice import measure_lattice
    from dislotrack.infer.overlays import shows_nothing
    from dislotrack.infer.readers import annotation_pixel_size_conflict, open_movie

    conflicts, missing = [], []
    # Every .json (others are skipped, and unreadable files named once, by finetune's own
    # reading, which these checks precede).
    for side in sorted(Path(folder).glob("*.json")):
        try:
            if not is_sidecar(side):
                continue
            with open_movie(annotation_image(side)) as movie:
                if conflict := annotation_pixel_size_conflict(side, movie.calibration):
                    conflicts.append(conflict)
                frame = movie[0]
            px = float(json.loads(side.read_text())["pixel_size_nm"])
        except (ValueError, OSError, KeyError, TypeError):
            continue
        if (px > 0 and not shows_nothing(frame)  # blank (a scale bar aside): nothing to check
                and measure_lattice([frame], pixel_size_nm=px, d_spacing_nm=D003_LINIO2_NM) is None):
            missing.append(f"{annotation_image(side).name} ({px:g} nm/px)")
    if conflicts:
        raise ValueError(f"{len(conflicts)} annotation(s) disagree with their image's own "
                         "calibration: " + "; ".join(conflicts))
    if missing:
        logging.getLogger(__name__).warning(
            "no %g nm (003) lattice fringes stand out in %s at the annotated pixel size: check "
            "pixel_size_nm in their <stem>.json (a wrong one trains at the wrong scale), unless "
            "they show no layered lattice on purpose (or are too noisy to show it)",
            D003_LINIO2_NM, first_few(missing, 5))
    return missing


def finetune_report(metrics: dict[str, float], card_metrics: dict) -> str:
    """The fine-tuned model's validation scores beside the base model's on the same
    held-out frames (a fine-tuned card's ``metrics``), and how they were scored."""
    before = card_metrics.get("base_on_finetune_validation") or {}
    lines = []
    if before:
        thr = card_metrics.get("validation_threshold")
        lines += [f"held-out frames, scored as infer --tta 1 scores them (threshold {thr:g}; "
                  "as infer scores movies; single images it views twice by default):",
                  f"{'':20} {'base':>8} {'fine-tuned':>10}"]
    for k in sorted(metrics, key=_report_order):
        if not before:
            lines.append(f"{k}: {metrics[k]:.4g}")
        elif k.startswith("val/"):  # the training loss of the last batch says little here
            was = f"{before[k]:8.4g}" if k in before else " " * 8
            lines.append(f"{k:20} {was} {metrics[k]:10.4g}")
    return "\n".join(lines)


#: finetune's scores in evaluate's column order; others (losses, rock salt) follow.
_SCORE_ORDER = ("tp", "fp", "fn", "true_cores", "precision", "recall", "f1", "rmse_nm", "h_accuracy")


def _report_order(key: str) -> tuple[int, str]:
    name = key.removeprefix("val/")
    return (_SCORE_ORDER.index(name) if name in _SCORE_ORDER else len(_SCORE_ORDER), key)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser."""
    parser = argparse.ArgumentParser(
        prog="dislotrack",
        description="Find and track dislocations in electron-microscopy movies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_infer(sub)
    _add_demo(sub)
    _add_evaluate(sub)
    _add_finetune(sub)
    sub.add_parser("train", help="train a model (LightningCLI: fit / validate / test; "
                   "see `dislotrack train --help`)", add_help=False)
    return parser


#: Errors that mean the input or an option is wrong, not dislotrack: reported in one
#: line without a traceback (set DISLOTRACK_DEBUG=1 to see it).
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, ImportError)

#: Subcommands whose arguments belong to LightningCLI (parsed there, not here).
_LIGHTNING_COMMANDS = {"train"}


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {message}\n"


def _bare_tta(argv: list[str]) -> list[str]:
    """``argv`` with ``--tta`` followed by a word that is no number given its default of 8
    views: argparse would take ``infer --tta movie.tif`` as 'movie.tif views' (``--tta``
    alone meant 8 views before it took a count)."""
    out: list[str] = []
    for i, word in enumerate(argv):
        out.append(word)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if word == "--tta" and nxt is not None and not nxt.startswith("-") and not nxt.isdigit():
            out.append("8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dislotrack`` console script."""
    # Figures are written, never shown: no GUI backend (one the user chose still wins).
    os.environ.setdefault("MPLBACKEND", "Agg")
    if sys.stderr is None or not sys.stderr.isatty():  # a log: a progress line every 30 s
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    # Warnings read as one line, not as the source line that raised them (unless debugging).
    formatwarning = warnings.formatwarning
    if not os.environ.get("DISLOTRACK_DEBUG"):
        warnings.formatwarning = _one_line_warning
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        warnings.formatwarning = formatwarning


def _stopped_by_sigterm(command: str, then: str) -> int:
    """Say that ``dislotrack command`` was stopped before it finished; its exit status."""
    print(f"dislotrack {command}: stopped by SIGTERM (scancel, preemption, a time limit) before "
          f"it finished, so nothing was exported; {then}", file=sys.stderr)
    return 128 + signal.SIGTERM


def _main(argv: list[str]) -> int:
    if argv[:2] == ["train", "export"]:  # no LightningCLI: a checkpoint written as a model
        from dislotrack.train.cli import export_main

        try:
            export_main(argv[2:])
        except USER_ERRORS as err:
            if os.environ.get("DISLOTRACK_DEBUG"):
                raise
            print(f"dislotrack train export: error: {err}", file=sys.stderr)
            return 2
        return 0
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
        from lightning.pytorch.utilities.exceptions import SIGTERMException
        from omegaconf.errors import OmegaConfBaseException

        from dislotrack.train.cli import train_main
        from dislotrack.train.errors import TrainConfigError, without_gpu_hint

        try:
            train_main(argv[1:])
        except SIGTERMException:  # a SystemExit without a code: the shell would see success
            fitting = len(argv) > 1 and argv[1] == "fit"
            return _stopped_by_sigterm("train", "run the same command with --ckpt_path last to "
                                       "resume from the last finished epoch (or again, if none "
                                       "finished)" if fitting else "run it again")
        # Ours (no last.ckpt, an unset root, a changed schedule, argument errors in one line:
        # `DislotrackCLI.parse_arguments`) and ${...} that do not resolve.
        except (FileNotFoundError, TrainConfigError, OmegaConfBaseException,
                MisconfigurationException) as err:
            if os.environ.get("DISLOTRACK_DEBUG"):
                raise
            first = str(err).strip().splitlines()[0]  # omegaconf adds full_key/object_type lines
            if isinstance(err, MisconfigurationException):  # e.g. gpu.yaml on a laptop
                first = without_gpu_hint(first, "--trainer.accelerator cpu")
            print(f"dislotrack train: error: {first}", file=sys.stderr)
            return 2
        return 0
    parser = build_parser()
    args, unknown = parser.parse_known_args(_bare_tta(argv))
    if unknown:  # argparse's own message, with the nearest option of the subcommand
        from dislotrack.train.errors import with_suggestion

        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        options = [o for action in command._actions for o in action.option_strings]
        command.error(with_suggestion(f"unrecognized arguments: {' '.join(unknown)}", options))
    args.command_line = shlex.join(["dislotrack", *argv])  # for model cards
    try:
        with command_line():  # messages name --flags, not analyze's keywords
            return int(args.func(args) or 0)
    except SystemExit as stop:  # Lightning's SIGTERMException (finetune) has no exit code
        # Matched by name: importing Lightning for the check would slow every subcommand.
        if stop.code is None and type(stop).__name__ == "SIGTERMException":
            return _stopped_by_sigterm(args.command, "run the same command again")
        raise
    except USER_ERRORS as err:
        if os.environ.get("DISLOTRACK_DEBUG"):
            raise
        print(f"dislotrack {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
