"""LightningDataModule over the synthetic generator."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM
from dislotrack.data_gen.sample import GeneratorConfig
from dislotrack.train.data import FixedSynthetic, SyntheticStream
from dislotrack.train.errors import TrainConfigError


def _single_threaded_worker(worker_id: int) -> None:
    """Data workers generate with one thread each (numpy, torch, OpenCV)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(0)


class EpochLoader(DataLoader):
    """A DataLoader that calls ``before_iter`` each time an epoch's iterator is made, and
    that Lightning resumes in mid-epoch (a loader with ``state_dict`` / ``load_state_dict``).

    Lightning makes the training loader once unless ``reload_dataloaders_every_n_epochs``
    is set, and an ``IterableDataset`` has no sampler for it to ``set_epoch``: the hook
    brings the stream up to the current epoch (seeds, curriculum) whatever the trainer's
    settings. Loader workers start at each ``iter`` (``persistent_workers`` False), so
    they copy the updated stream.

    Each checkpoint keeps ``state()``; a resumed fit hands it to ``load_state`` before it
    makes the iterator (a job SLURM requeued had drawn its part-epoch's samples again).
    """

    def __init__(self, *args, before_iter: Callable[[], None],
                 state: Callable[[], dict[str, int]] | None = None,
                 load_state: Callable[[dict[str, int]], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.before_iter = before_iter
        self._state, self._load_state = state, load_state

    def __iter__(self) -> Iterator:
        self.before_iter()
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """Saved by Lightning in each checkpoint (its fit loop's ``combined_loader``)."""
        return self._state() if self._state is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Called by Lightning when a fit resumes, before it makes the epoch's iterator."""
        if self._load_state is not None:
            self._load_state(state_dict)


def batches_done(trainer: L.Trainer | None) -> int:
    """The batches of the current training epoch that a fit restarted from a checkpoint
    saved now counts as trained: Lightning's fit loop goes on with the next one.

    Parameters
    ----------
    trainer : lightning.Trainer or None

    Returns
    -------
    int
        0 without a trainer.
    """
    if trainer is None:
        return 0
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done, total = progress.current.completed, progress.total
    # Saved in on_train_batch_end (a callback, or SLURM's signal then): that batch was
    # trained, and the restart counts it (Lightning's RESTARTED_ON_TRAIN_BATCH_END).
    if (total.started == total.ready and total.processed == total.started
            and total.completed == total.processed - 1):
        done += 1
    return done


#: Doses [e/A^2] cycled through the fixed validation/test sets.
EVAL_DOSES = [50.0, 100.0, 500.0, 1000.0, 5000.0]


class SyntheticDataModule(L.LightningDataModule):
    """On-the-fly training stream plus fixed, seeded validation and test sets.

    Parameters
    ----------
    size : int
        Training crop side [px] (at the canonical pixel size).
    batch_size, num_workers : int
    samples_per_epoch : int
        Training samples per epoch and rank.
    n_val, n_test : int
        Sizes of the fixed sets.
    seed, val_seed, test_seed : int
    mode : {"hrtem", "stem", "mixed"}
    density, dipole_fraction, perfect_fraction, pixel_size_jitter : float
        Passed to `GeneratorConfig`.
    n_variants : int
        Images per generated structure in the training stream.
    eval_size : int
        Image side of the fixed sets [px].
    main_threads : int
        Torch threads of the training process (0 = torch's default).
    basal_fraction, rocksalt_probability : float, optional
        Override the generator's fractions of basal-b dislocations and of structures
        with rock salt, in the training stream only (oversampling the hard cases);
        the fixed validation and test sets keep the generator defaults so that
        recipes stay comparable. ``None`` keeps the default.
    curriculum_epochs : int
        Epochs over which the training data ramp from easy to the full distribution.
    pixel_size : float
        Pixel size of the training data [nm/px]: the trained model's canonical pixel size.
    ignore_hidden_cores : bool
        Training stream only: the heatmap loss ignores the surroundings of cores whose
        noise-free image shows no (003) half-plane end (`dislotrack.train.data.hidden_cores`).
        Validation and test keep every core.
    """

    def __init__(self, *, size: int = 128, batch_size: int = 16, num_workers: int = 1,
                 samples_per_epoch: int = 2048, n_val: int = 100, n_test: int = 500,
                 seed: int = 0, val_seed: int = 12345, test_seed: int = 777,
                 mode: str = "mixed", density: float = 1.5, dipole_fraction: float = 0.35,
                 perfect_fraction: float = 0.1, pixel_size_jitter: float = 0.05,
                 n_variants: int = 2, eval_size: int = 128, main_threads: int = 0,
                 curriculum_epochs: int = 0, pixel_size: float = CANONICAL_PIXEL_SIZE_NM,
                 basal_fraction: float | None = None,
                 rocksalt_probability: float | None = None,
                 ignore_hidden_cores: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check()

    def _check(self) -> None:
        """Raises `TrainConfigError` (one line, naming the setting) for settings that cannot
        run: found here, not deep in a data worker (``n_variants`` 0 had hung)."""
        hp = self.hparams
        counts = {"size": 1, "batch_size": 1, "samples_per_epoch": 1, "n_variants": 1, "eval_size": 1,
                  "n_val": 0, "n_test": 0, "num_workers": 0, "main_threads": 0, "curriculum_epochs": 0}
        for key, least in counts.items():
            value = hp[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise TrainConfigError(f"--data.{key} must be a whole number >= {least}, got {value!r}")
        for key in ("seed", "val_seed", "test_seed"):
            value = hp[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise TrainConfigError(f"--data.{key} must be a whole number >= 0, got {value!r}")
        # numpy's seed sequences ignore trailing zeros: the training stream of (seed, epoch
        # e, rank 0, worker 0) would draw validation (test) sample e.
        for key in ("val_seed", "test_seed"):
            if hp.seed == hp[key]:
                raise TrainConfigError(f"--data.seed {hp.seed} equals --data.{key}: the training "
                                       "stream would repeat those samples; choose another seed")
        if hp.val_seed == hp.test_seed:
            raise TrainConfigError(f"--data.val_seed equals --data.test_seed ({hp.val_seed}): the "
                                   "test set would be the validation set; choose another")
        for key in ("size", "eval_size"):  # the generator's checks (mode, density, sizes, ...)
            try:
                self.generator_config(hp[key], hp.pixel_size_jitter, train=True)
            except ValueError as err:
                what = f"--data.{key} {hp[key]}" if str(err).startswith("size ") else "--data"
                raise TrainConfigError(f"{what}: {err}") from None

    def generator_config(self, size: int, jitter: float, epoch: int | None = None, *,
                         train: bool = False) -> GeneratorConfig:
        """The generator settings; during the curriculum (``epoch`` < curriculum_epochs)
        the data start easy (high dose, ideal crystal, misfit singles) and ramp to the full
        distribution: each setting from 1 / (curriculum_epochs + 1) of the way at epoch 0,
        linearly (the lower dose bound geometrically, from 1000 e/Å²). ``train`` applies
        the training-stream overrides."""
        hp = self.hparams
        cfg = GeneratorConfig(size=size, pixel_size=hp.pixel_size,
                              pixel_size_jitter=jitter, mode=hp.mode, density=hp.density,
                              dipole_fraction=hp.dipole_fraction,
                              perfect_fraction=hp.perfect_fraction)
        if train:
            over = {k: hp.get(k) for k in ("basal_fraction", "rocksalt_probability")}
            cfg = replace(cfg, **{k: float(v) for k, v in over.items() if v is not None})
        if epoch is None or epoch >= hp.curriculum_epochs:
            return cfg
        a = (epoch + 1) / (hp.curriculum_epochs + 1)  # 0 -> easy, 1 -> full
        lo = float(np.exp(np.log(1000.0) * (1 - a) + np.log(cfg.dose[0]) * a))
        return replace(cfg, dose=(lo, cfg.dose[1]), realism=a, basal_fraction=a * cfg.basal_fraction,
                       dipole_fraction=a * cfg.dipole_fraction,
                       rocksalt_probability=a * cfg.rocksalt_probability)

    def setup(self, stage: str) -> None:
        if self.hparams.main_threads:
            # On a small CPU the main process' OpenMP threads would spin while
            # waiting for data and starve the generator workers.
            torch.set_num_threads(self.hparams.main_threads)

    def _loader(self, ds, loader: type[DataLoader] = DataLoader, **kw) -> DataLoader:
        hp = self.hparams
        # Not persistent: workers copy the dataset anew at each epoch (`EpochLoader`).
        return loader(ds, batch_size=hp.batch_size, num_workers=hp.num_workers,
                      persistent_workers=False, worker_init_fn=_single_threaded_worker, **kw)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        ds = SyntheticStream(self.generator_config(hp.size, hp.pixel_size_jitter, 0, train=True),
                             seed=hp.seed, n_variants=hp.n_variants,
                             samples_per_epoch=hp.samples_per_epoch,
                             ignore_hidden=hp.get("ignore_hidden_cores", False),
                             batch_size=hp.batch_size)
        self._to_current_epoch(ds)
        # Read again at each epoch's start, so that a loader made once (no
        # reload_dataloaders_every_n_epochs: a custom config, the Python API) still
        # draws new samples each epoch and advances the curriculum.
        return self._loader(ds, loader=EpochLoader, before_iter=partial(self._to_current_epoch, ds),
                            state=partial(self._stream_state, ds),
                            load_state=partial(self._resume_stream, ds))

    def _to_current_epoch(self, ds: SyntheticStream) -> None:
        """Set ``ds`` to the trainer's current epoch and rank (epoch 0 without a trainer):
        each epoch and rank draws its own stream, at that epoch's curriculum stage; a
        resumed epoch goes on where its checkpoint was saved (`_resume_stream`)."""
        hp = self.hparams
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        ds.config = self.generator_config(hp.size, hp.pixel_size_jitter, epoch, train=True)
        ds.set_epoch(epoch)
        if trainer is not None:
            ds.set_rank(trainer.global_rank, trainer.world_size)
        resume, ds.resume_at = ds.resume_at, None  # once: the next epoch starts at 0
        n_batches = -(-hp.samples_per_epoch // hp.batch_size)
        ds.start_batch = resume[1] if resume and resume[0] == epoch and 0 < resume[1] < n_batches else 0

    def _stream_state(self, ds: SyntheticStream) -> dict[str, int]:
        """What a checkpoint keeps of the training stream: its epoch, and how many of that
        epoch's batches a restart counts as trained (`batches_done`)."""
        return {"epoch": ds.epoch, "batches_done": batches_done(self.trainer)}

    def _resume_stream(self, ds: SyntheticStream, state: dict[str, int]) -> None:
        """A checkpoint's `_stream_state`: where its epoch goes on (applied when the
        iterator is made, as the epoch is then known)."""
        ds.resume_at = (int(state.get("epoch", -1)), int(state.get("batches_done", 0)))

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self._loader(FixedSynthetic(self.generator_config(hp.eval_size, 0.0), n=hp.n_val,
                                           seed=hp.val_seed, doses=EVAL_DOSES))

    def test_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self._loader(FixedSynthetic(self.generator_config(hp.eval_size, 0.0), n=hp.n_test,
                                           seed=hp.test_seed, doses=EVAL_DOSES))
