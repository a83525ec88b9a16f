"""``dislotrack generate``: write labelled synthetic images or movies to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dislotrack.data_gen.annotations import Annotation, write_annotation
from dislotrack.data_gen.movie import make_movie
from dislotrack.data_gen.sample import GeneratorConfig, make_sample


def generate_dataset(*, out: str | Path, n: int, size: int = 256, mode: str = "mixed",
                     movie_frames: int = 0, seed: int = 0, frame_interval: float = 1.0,
                     progress: bool = True) -> list[Path]:
    """Write ``n`` labelled images (or movies of ``movie_frames`` frames) to ``out``.

    Item ``i`` is drawn from its own stream ``SeedSequence(seed).spawn(n)[i]``, so
    a file does not depend on how many others are written.

    Returns
    -------
    list of Path
        The sidecar JSON of every item.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if movie_frames < 0:
        raise ValueError(f"--movie must be >= 0 frames, got {movie_frames}")
    cfg = GeneratorConfig(size=size, mode=mode)
    out = Path(out)
    seeds = np.random.SeedSequence(seed).spawn(n)
    paths = []
    kind = "movie" if movie_frames else "image"
    for i in tqdm(range(n), desc=f"generating {kind}s", disable=not progress or n < 5):
        rng = np.random.default_rng(seeds[i])
        source = {"generator": "dislotrack generate", "seed": seed, "index": i,
                  "config": cfg.to_dict()}
        if movie_frames:
            m = make_movie(rng, cfg, n_frames=movie_frames, frame_interval=frame_interval)
            ann = Annotation(m.frames, m.cores, m.rs_masks, m.meta["pixel_size"], frame_interval,
                             {**source, **m.meta})
            stem = f"movie_{i:05d}"
            paths.append(write_annotation(out, stem, ann))
            m.drift.to_csv(out / f"{stem}_drift.csv", index=False)
            m.truth.to_csv(out / f"{stem}_tracks.csv", index=False)
            m.events.to_csv(out / f"{stem}_events.csv", index=False)
        else:
            s = make_sample(rng, cfg)
            ann = Annotation(s.image[None], s.cores.assign(frame=0), s.rs_mask[None],
                             s.meta["pixel_size"], None, {**source, **s.meta})
            paths.append(write_annotation(out, f"image_{i:05d}", ann))
    return paths
