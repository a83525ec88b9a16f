"""Datasets drawn from the synthetic generator, seeded for DDP and workers.

* `SyntheticStream` -- an endless ``IterableDataset``; each (seed, epoch, rank,
  worker) gets its own ``np.random.SeedSequence`` stream, so ranks and workers
  draw different samples and a given combination repeats exactly.
* `FixedSynthetic` -- a map-style set whose item ``i`` is drawn from
  ``SeedSequence([seed, i])``: the validation and test sets (DDP shards it).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.data_gen.labels import HEATMAP_SIGMA_NM, dense_targets
from dislotrack.data_gen.sample import GeneratorConfig, Sample, make_samples
from dislotrack.models.normalise import normalise_image
from dislotrack.models.visibility import shows_half_plane_end
from dislotrack.train.augment import augment, build_transform, to_unit_range

#: True cores per sample carried to validation (padded with NaN): enough for a whole
#: 2048 px lab frame at a core per 6 nm^2; beyond it, validation would score the
#: surplus as false cores (a warning says so).
MAX_CORES = 1024


#: Around a core the image does not show, the heatmap loss is ignored within this radius
#: (3 sigma of the target Gaussian) unless a shown core is as close.
IGNORE_RADIUS_NM = 3 * HEATMAP_SIGMA_NM


def hidden_cores(s: Sample) -> np.ndarray:
    """Per core of ``s``: True where its noise-free image shows no (003) half-plane end
    (`dislotrack.models.visibility.shows_half_plane_end`); all False without ``s.clean``."""
    if s.clean is None or not len(s.cores):
        return np.zeros(len(s.cores), bool)
    return ~shows_half_plane_end(s.clean, s.cores[["x", "y"]].to_numpy(float),
                                 pixel_size_nm=s.meta["pixel_size"], d_spacing_nm=D003_LINIO2_NM)


def ignore_weight(cores: pd.DataFrame, shape: tuple[int, int], *, pixel_size: float) -> np.ndarray:
    """Heatmap loss weight: 0 near cores flagged ``hidden`` (and no shown core as near), else 1."""
    weight = np.ones(shape, np.float32)
    if "hidden" not in cores or not cores["hidden"].any():
        return weight
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    r = IGNORE_RADIUS_NM / pixel_size

    def near(c: pd.DataFrame) -> np.ndarray:
        d = np.full(shape, np.inf)
        for x, y in c[["x", "y"]].to_numpy(float):
            d = np.minimum(d, np.hypot(xx - x, yy - y))
        return d

    hidden = cores["hidden"].astype(bool).to_numpy()
    d_hidden, d_shown = near(cores[hidden]), near(cores[~hidden])
    weight[(d_hidden <= r) & (d_hidden < d_shown)] = 0.0
    return weight


def sample_to_item(s: Sample, *, transform=None, ignore_hidden: bool = False) -> dict[str, torch.Tensor]:
    """Network input and targets (tensors) of one sample, optionally augmented.

    ``ignore_hidden``: the heatmap loss ignores the surroundings of cores the image does
    not show (`hidden_cores`; item ``heatmap_weight``), rather than training the network
    to mark cores it cannot see. Item ``rs_known`` is 0 where ``s.meta["rs_annotated"]``
    is False (lab data without a rock-salt mask): no rock-salt loss or score there.
    """
    image, cores, rs = s.image, s.cores, s.rs_mask
    if ignore_hidden:
        cores = cores.assign(hidden=hidden_cores(s))
    if transform is not None:
        image, cores, rs = augment(transform, to_unit_range(image), cores, rs)
    t = dense_targets(cores, rs, pixel_size=s.meta["pixel_size"])
    weight = ignore_weight(cores, rs.shape, pixel_size=s.meta["pixel_size"])
    truth = np.full((MAX_CORES, 4), np.nan, np.float32)
    if len(cores) > MAX_CORES:
        warnings.warn(f"{len(cores)} true cores in one sample: validation keeps the first "
                      f"{MAX_CORES} (dislotrack.train.data.MAX_CORES), so found cores beyond "
                      "them count as false", stacklevel=2)
    arr = cores[["x", "y", "hx", "hy"]].to_numpy(np.float32)[:MAX_CORES]
    truth[: len(arr)] = arr
    return {
        "image": torch.from_numpy(normalise_image(image)[None].astype(np.float32)),
        "heatmap": torch.from_numpy(t["heatmap"][None]),
        "heatmap_weight": torch.from_numpy(weight[None]),
        "hvec": torch.from_numpy(t["hvec"]),
        "hmask": torch.from_numpy(t["hmask"][None]),
        "rs": torch.from_numpy(t["rs"][None]),
        "rs_known": torch.tensor(float(s.meta.get("rs_annotated", True))),
        "cores": torch.from_numpy(truth),
        "dose": torch.tensor(s.meta["detector"]["dose"], dtype=torch.float32),
        "stem": torch.tensor(s.meta["mode"] == "stem"),
        "mode_known": torch.tensor(s.meta["mode"] in ("hrtem", "stem")),  # not lab frames
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
    ignore_hidden : bool
        Ignore the heatmap loss around cores the image does not show (`sample_to_item`).
    batch_size : int
        The loader's batch size: workers draw whole batches (`worker_quota`).
    """

    def __init__(self, config: GeneratorConfig, *, seed: int = 0, n_variants: int = 2,
                 augment: bool = True, samples_per_epoch: int = 1024,
                 ignore_hidden: bool = False, batch_size: int = 1) -> None:
        self.config = config
        self.ignore_hidden = ignore_hidden
        self.seed = seed
        self.n_variants = n_variants
        self.augment = augment
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.epoch = 0
        self.rank = 0
        self.world_size = 1
        #: The epoch's first batch to yield: > 0 where a run resumes in mid-epoch.
        self.start_batch = 0
        #: (epoch, batches trained) of a checkpoint a fit resumes from, until applied.
        self.resume_at: tuple[int, int] | None = None

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
        # A resumed epoch (start_batch k) goes on with batch k: the loader takes batch j
        # from worker j % n_workers, so worker w plays the stream of worker (w + k) % n.
        role = (worker + self.start_batch) % n_workers
        ss = stream_seed(self.seed, self.epoch, self.rank, role)
        rng = np.random.default_rng(ss)
        transform = (build_transform(seed=int(ss.generate_state(1)[0]))
                     if self.augment else None)
        n = worker_quota(self.samples_per_epoch, self.batch_size, role, n_workers)
        # The batches this stream gave before start_batch: drawn again (their generator and
        # augmentation draws) but not returned, so the rest is the uninterrupted epoch's.
        skip = len(range(role, self.start_batch, n_workers)) * self.batch_size
        produced = 0
        while produced < n:
            for s in make_samples(rng, self.config, n_variants=self.n_variants):
                if produced >= n:
                    break
                if produced < skip:
                    if transform is not None:  # its random draws, in order
                        augment(transform, to_unit_range(s.image), s.cores, s.rs_mask)
                else:
                    yield sample_to_item(s, transform=transform, ignore_hidden=self.ignore_hidden)
                produced += 1


def worker_quota(samples: int, batch_size: int, worker: int, n_workers: int) -> int:
    """Samples that loader worker ``worker`` of ``n_workers`` draws in an epoch: its
    share of the epoch's ``ceil(samples / batch_size)`` batches, whole batches only.

    The loader collates each worker's samples into its own batches and Lightning stops
    after ``len(loader)`` of them, so an even split of samples (64 over 3 workers: 21
    each) gave partial batches and trained fewer samples than asked.

    Examples
    --------
    >>> [worker_quota(64, 8, w, 3) for w in range(3)]
    [24, 24, 16]
    >>> [worker_quota(32, 32, w, 4) for w in range(4)]
    [32, 0, 0, 0]
    """
    n_batches = -(-samples // batch_size)
    return len(range(worker, n_batches, n_workers)) * batch_size


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
