"""Datasets drawn from the synthetic generator, seeded for DDP and workers.

* `SyntheticStream` -- an endless ``IterableDataset``; each (seed, epoch, rank,
  worker) gets its own ``np.random.SeedSequence`` stream, so ranks and workers
  draw different samples and a given combination repeats exactly.
* `FixedSynthetic` -- a map-style set whose item ``i`` is drawn from
  ``SeedSequence([seed, i])``: the validation and test sets (DDP shards it).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dislotrack.data_gen.labels import dense_targets
from dislotrack.data_gen.sample import GeneratorConfig, Sample, make_samples
from dislotrack.models.normalise import normalise_image
from dislotrack.train.augment import augment, build_transform, to_unit_range

MAX_CORES = 64  # true cores per sample carried to validation (padded with NaN)


def sample_to_item(s: Sample, *, transform=None) -> dict[str, torch.Tensor]:
    """Network input and targets (tensors) of one sample, optionally augmented."""
    image, cores, rs = s.image, s.cores, s.rs_mask
    if transform is not None:
        image, cores, rs = augment(transform, to_unit_range(image), cores, rs)
    t = dense_targets(cores, rs, pixel_size=s.meta["pixel_size"])
    truth = np.full((MAX_CORES, 4), np.nan, np.float32)
    arr = cores[["x", "y", "hx", "hy"]].to_numpy(np.float32)[:MAX_CORES]
    truth[: len(arr)] = arr
    return {
        "image": torch.from_numpy(normalise_image(image)[None].astype(np.float32)),
        "heatmap": torch.from_numpy(t["heatmap"][None]),
        "hvec": torch.from_numpy(t["hvec"]),
        "hmask": torch.from_numpy(t["hmask"][None]),
        "rs": torch.from_numpy(t["rs"][None]),
        "cores": torch.from_numpy(truth),
        "dose": torch.tensor(s.meta["detector"]["dose"], dtype=torch.float32),
        "stem": torch.tensor(s.meta["mode"] == "stem"),
        "pixel_size": torch.tensor(s.meta["pixel_size"], dtype=torch.float32),
    }


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> np.random.SeedSequence:
    """The seed sequence of one (seed, epoch, rank, worker) stream."""
    return np.random.SeedSequence([seed, epoch, rank, worker])


class SyntheticStream(IterableDataset):
    """Endless on-the-fly synthetic training samples (augmented).

    Parameters
    ----------
    config : GeneratorConfig
    seed : int
    n_variants : int
        Images drawn per generated structure (cheap lens/dose variants of HRTEM).
    augment : bool
    samples_per_epoch : int
        Length of one epoch per rank (the stream is infinite; this bounds the loop).
    """

    def __init__(self, config: GeneratorConfig, *, seed: int = 0, n_variants: int = 2,
                 augment: bool = True, samples_per_epoch: int = 1024) -> None:
        self.config = config
        self.seed = seed
        self.n_variants = n_variants
        self.augment = augment
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0
        self.rank = 0
        self.world_size = 1

    def __len__(self) -> int:
        # Lets Lightning size the epoch (progress bar, LR schedule).
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        ss = stream_seed(self.seed, self.epoch, self.rank, worker)
        rng = np.random.default_rng(ss)
        transform = (build_transform(seed=int(ss.generate_state(1)[0]))
                     if self.augment else None)
        n = self.samples_per_epoch // n_workers
        produced = 0
        while produced < n:
            for s in make_samples(rng, self.config, n_variants=self.n_variants):
                if produced >= n:
                    break
                yield sample_to_item(s, transform=transform)
                produced += 1


class FixedSynthetic(Dataset):
    """A fixed, seeded synthetic set (validation / test); item i is reproducible alone.

    ``doses`` (optional) cycles the dose of item i through a list, so that every
    dose bin is equally represented.
    """

    def __init__(self, config: GeneratorConfig, *, n: int, seed: int = 12345,
                 doses: list[float] | None = None) -> None:
        self.config, self.n, self.seed, self.doses = config, n, seed, doses

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        cfg = self.config
        if self.doses:
            d = float(self.doses[i % len(self.doses)])
            cfg = replace(cfg, dose=(d, d))
        return make_samples(np.random.default_rng([self.seed, i]), cfg)[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return sample_to_item(self.sample(i))


def cores_from_batch(cores: torch.Tensor) -> list[pd.DataFrame]:
    """Unpad the ``cores`` tensor of a batch into one DataFrame per sample."""
    out = []
    for c in cores.cpu().numpy():
        c = c[~np.isnan(c[:, 0])]
        out.append(pd.DataFrame(c, columns=["x", "y", "hx", "hy"]))
    return out
