"""``dislotrack generate``: write labelled synthetic images or movies to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dislotrack.data_gen.annotations import Annotation, write_annotation
from dislotrack.data_gen.movie import make_movie
from dislotrack.data_gen.sample import GeneratorConfig, make_samples


def generate_dataset(*, out: str | Path, n: int, size: int = 256, mode: str = "mixed",
                     movie_frames: int = 0, seed: int = 0, frame_interval: float = 1.0,
                     variants: int = 1, progress: bool = True) -> list[Path]:
    """Write ``n`` labelled images (or movies of ``movie_frames`` frames) to ``out``.

    Images come in groups of ``variants``: one structure imaged under that many
    lens/probe and detector draws (same dose), the cheap recipe for large sets.
    Group ``g`` (item ``g`` when ``variants`` = 1) is drawn from its own stream
    ``SeedSequence(seed).spawn(...)[g]``, so a file does not depend on how many
    others are written.

    Returns
    -------
    list of Path
        The sidecar JSON of every item.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if movie_frames < 0 or movie_frames == 1:  # a one-frame movie has no motion to label
        raise ValueError(f"movie_frames must be 0 (single images) or >= 2, got {movie_frames}")
    if variants < 1:
        raise ValueError(f"--variants must be >= 1, got {variants}")
    if movie_frames and variants > 1:
        raise ValueError("--variants applies to single images, not to movies")
    cfg = GeneratorConfig(size=size, mode=mode)
    out = Path(out)
    n_groups = -(-n // variants)
    seeds = np.random.SeedSequence(seed).spawn(n_groups)
    paths: list[Path] = []
    kind = "movie" if movie_frames else "image"
    with tqdm(total=n, desc=f"generating {kind}s", disable=not progress or n < 5) as bar:
        for g in range(n_groups):
            rng = np.random.default_rng(seeds[g])
            source = {"generator": "dislotrack generate", "seed": seed, "index": g,
                      "config": cfg.to_dict()}
            if movie_frames:
                paths.append(_write_movie(out, f"movie_{g:05d}", rng, cfg, movie_frames,
                                          frame_interval, source))
                bar.update()
                continue
            for j, s in enumerate(make_samples(rng, cfg, n_variants=min(variants, n - g * variants))):
                i = g * variants + j
                meta = {**source, "index": i, "structure": g, "variant": j, **s.meta}
                ann = Annotation(s.image[None], s.cores.assign(frame=0), s.rs_mask[None],
                                 s.meta["pixel_size"], None, meta)
                paths.append(write_annotation(out, f"image_{i:05d}", ann))
                bar.update()
    return paths


def _write_movie(out: Path, stem: str, rng: np.random.Generator, cfg: GeneratorConfig,
                 n_frames: int, frame_interval: float, source: dict) -> Path:
    """One labelled movie with its truth tables; returns the sidecar path."""
    m = make_movie(rng, cfg, n_frames=n_frames, frame_interval=frame_interval)
    ann = Annotation(m.frames, m.cores, m.rs_masks, m.meta["pixel_size"], frame_interval,
                     {**source, **m.meta})
    path = write_annotation(out, stem, ann)
    m.drift.to_csv(out / f"{stem}_drift.csv", index=False)
    m.truth.to_csv(out / f"{stem}_tracks.csv", index=False)
    m.events.to_csv(out / f"{stem}_events.csv", index=False)
    return path
