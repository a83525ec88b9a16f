"""``dislotrack generate``: write labelled synthetic images or movies to disk."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import TqdmWarning

from dislotrack.data_gen.annotations import FORMAT, Annotation, write_annotation
from dislotrack.data_gen.movie import make_movie
from dislotrack.data_gen.sample import GeneratorConfig, make_samples
from dislotrack.data_gen.text import first_few
from dislotrack.data_gen.version import package_version

with warnings.catch_warnings():  # a Jupyter kernel without ipywidgets: text bars, silently
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

#: ``source["generator"]`` of every sidecar this command writes: how a later run knows its files.
GENERATOR = "dislotrack generate"
#: The files of one item ``<stem>``: `write_annotation`'s, plus a movie's truth tables.
_IMAGE_FILES = (".json", ".tif", "_cores.csv", "_rs.tif")
_MOVIE_FILES = (*_IMAGE_FILES, "_drift.csv", "_tracks.csv", "_events.csv")
_STEM = re.compile(r"(image|movie)_\d{5,}")


def generate_dataset(*, out: str | Path, n: int, size: int = 256, mode: str = "mixed",
                     movie_frames: int = 0, seed: int = 0, frame_interval: float = 1.0,
                     variants: int = 1, dose: tuple[float, float] | None = None,
                     pixel_size: float | None = None, material: str | None = None,
                     density: float | None = None, dipole_fraction: float | None = None,
                     basal_fraction: float | None = None, perfect_fraction: float | None = None,
                     rocksalt_probability: float | None = None,
                     progress: bool = True) -> list[Path]:
    """Write ``n`` labelled images (or movies of ``movie_frames`` frames) to ``out``.

    Images come in groups of ``variants``: one structure imaged under that many
    lens/probe and detector draws (same dose), the cheap recipe for large sets.
    Group ``g`` (item ``g`` when ``variants`` = 1) is drawn from its own stream
    ``SeedSequence(seed).spawn(...)[g]``, so a file does not depend on how many
    others are written.

    Items of an earlier run that this one rewrites (same names) are overwritten;
    a folder that holds any other generated item, or a file of someone else's
    under a name this run writes, is refused before anything is written.

    Parameters
    ----------
    out : str or Path
        Output folder.
    n : int
        Number of images (or movies).
    size, mode
        Image side [px] and imaging mode (`GeneratorConfig`).
    movie_frames : int
        Frames per movie (>= 2), or 0 for single images.
    seed : int
        Seed of the whole set (>= 0).
    frame_interval : float
        Time between movie frames [s] (> 0).
    variants : int
        Images per structure (single images only).
    dose : (float, float), optional
        Dose range [e/A^2], drawn log-uniformly (``(d, d)``: one dose); default
        `GeneratorConfig`'s.
    pixel_size : float, optional
        [nm/px]; default `GeneratorConfig`'s (the bundled model's 0.1).
    material : str, optional
        One of `dislotrack.data_gen.crystal.MATERIALS`; default: drawn per structure.
    density, dipole_fraction, basal_fraction, perfect_fraction, rocksalt_probability : float, optional
        How many dislocations, and of which kinds (`GeneratorConfig`, which says what
        they mean for movies); default `GeneratorConfig`'s.
    progress : bool
        Show a progress bar on stderr (over frames for movies); False is silent.

    Returns
    -------
    list of Path
        The sidecar JSON of every item.

    Raises
    ------
    ValueError
        For an option out of range, or an ``out`` that would mix runs (see above).
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if movie_frames < 0 or movie_frames == 1:  # a one-frame movie has no motion to label
        raise ValueError(f"movie_frames must be 0 (single images) or >= 2, got {movie_frames}")
    if variants < 1:
        raise ValueError(f"--variants must be >= 1, got {variants}")
    if movie_frames and variants > 1:
        raise ValueError("--variants applies to single images, not to movies")
    if movie_frames and not (np.isfinite(frame_interval) and frame_interval > 0):
        raise ValueError(f"--frame-interval must be a positive number of seconds, got {frame_interval}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    given = {"dose": None if dose is None else tuple(dose), "pixel_size": pixel_size, "material": material,
             "density": density, "dipole_fraction": dipole_fraction, "basal_fraction": basal_fraction,
             "perfect_fraction": perfect_fraction, "rocksalt_probability": rocksalt_probability}
    cfg = GeneratorConfig(size=size, mode=mode, **{k: v for k, v in given.items() if v is not None})
    out = Path(out)
    kind = "movie" if movie_frames else "image"
    suffixes = _MOVIE_FILES if movie_frames else _IMAGE_FILES
    _check_out(out, [f"{kind}_{i:05d}" for i in range(n)], suffixes)
    n_groups = -(-n // variants)
    seeds = np.random.SeedSequence(seed).spawn(n_groups)
    paths: list[Path] = []
    # A movie takes seconds to minutes, so its bar counts frames (and names the movie at work).
    total, unit = (n * movie_frames, "frame") if movie_frames else (n, "image")
    with tqdm(total=total, unit=unit, desc=f"generating {kind}s", disable=not progress) as bar:
        for g in range(n_groups):
            rng = np.random.default_rng(seeds[g])
            source = {"generator": GENERATOR, "version": package_version(), "seed": seed, "index": g,
                      "config": _recorded_config(cfg, movie=bool(movie_frames))}
            if movie_frames:
                bar.set_postfix_str(f"movie {g + 1}/{n}")
                paths.append(_write_movie(out, f"movie_{g:05d}", rng, cfg, movie_frames,
                                          frame_interval, source, on_frame=lambda _: bar.update()))
                continue
            for j, s in enumerate(make_samples(rng, cfg, n_variants=min(variants, n - g * variants))):
                i = g * variants + j
                meta = {**source, "index": i, "structure": g, "variant": j, **s.meta}
                ann = Annotation(s.image[None], s.cores.assign(frame=0), s.rs_mask[None],
                                 s.meta["pixel_size"], None, meta)
                with _whole_item(out, f"image_{i:05d}", suffixes):
                    paths.append(write_annotation(out, f"image_{i:05d}", ann))
                bar.update()
    return paths


def _recorded_config(cfg: GeneratorConfig, *, movie: bool) -> dict:
    """The configuration a sidecar records: what drew the item. Movies never use
    ``perfect_fraction`` (a movie always has its cores), so theirs leave it out."""
    out = cfg.to_dict()
    if movie:
        del out["perfect_fraction"]
    return out


def _write_movie(out: Path, stem: str, rng: np.random.Generator, cfg: GeneratorConfig,
                 n_frames: int, frame_interval: float, source: dict, *,
                 on_frame: Callable[[int], object] | None = None) -> Path:
    """One labelled movie with its truth tables; returns the sidecar path."""
    m = make_movie(rng, cfg, n_frames=n_frames, frame_interval=frame_interval, on_frame=on_frame)
    ann = Annotation(m.frames, m.cores, m.rs_masks, m.meta["pixel_size"], frame_interval,
                     {**source, **m.meta})
    with _whole_item(out, stem, _MOVIE_FILES):
        path = write_annotation(out, stem, ann)
        m.drift.to_csv(out / f"{stem}_drift.csv", index=False)
        m.truth.to_csv(out / f"{stem}_tracks.csv", index=False)
        m.events.to_csv(out / f"{stem}_events.csv", index=False)
    return path


def _check_out(out: Path, stems: list[str], suffixes: tuple[str, ...]) -> None:
    """Refuse an ``out`` where this run would leave other runs' items beside its own
    (evaluate and finetune read every sidecar in the folder) or overwrite files that
    ``generate`` did not write. Nothing is deleted: which to keep is the user's call.

    Raises
    ------
    ValueError
        One line naming a few of the files and what to do.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()}
    ours = {s for s in (name[:-5] for name in names if name.endswith(".json"))
            if _STEM.fullmatch(s) and _is_generated(out / f"{s}.json")}
    stale = sorted(ours - set(stems))
    if stale:
        raise ValueError(f"--out {out} already holds {_count(stale, 'generated item')} that this run "
                         f"would not overwrite ({first_few(stale)}); choose a new --out or delete them first")
    # Without a sidecar of ours, a file under our names is someone else's (a half-written item
    # of ours is removed when its write fails, see `_whole_item`).
    theirs = sorted(f for s in set(stems) - ours for x in suffixes if (f := s + x) in names)
    if theirs:
        raise ValueError(f"--out {out} holds {_count(theirs, 'file')} that this run would overwrite "
                         f"but dislotrack generate did not write ({first_few(theirs)}); choose a new --out "
                         "or move them")


def _is_generated(sidecar: Path) -> bool:
    """Whether ``sidecar`` is an annotation written by this command."""
    try:
        side = json.loads(sidecar.read_text())
    except (OSError, ValueError):  # unreadable or not JSON: not ours
        return False
    if not isinstance(side, dict):  # e.g. a list: JSON, but no annotation
        return False
    source = side.get("source")
    return (side.get("format") == FORMAT and isinstance(source, dict)
            and source.get("generator") == GENERATOR)


@contextmanager
def _whole_item(out: Path, stem: str, suffixes: tuple[str, ...]) -> Iterator[None]:
    """Write an item whole or not at all: if writing fails (Ctrl-C, a full disk), remove
    its files so that a re-run does not take them for someone else's. They are ours to
    remove: `_check_out` let this run write under ``stem``."""
    try:
        yield
    except BaseException:
        for x in suffixes:
            (out / f"{stem}{x}").unlink(missing_ok=True)
        raise


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


