"""Training progress for logs: one line per epoch where stdout is not a terminal.

A tqdm bar redrawn with carriage returns is one ever-growing line in a SLURM log,
``nohup`` output or a notebook's captured stderr (1.9 MB for the bundled model's hour);
`EpochLines` writes what the bar would end each epoch with, once, instead.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

#: Validation scores the epoch line adds to the bar's own metrics (training losses).
VALIDATION_KEYS = ("val/loss", "val/f1", "val/rmse_nm", "val/h_accuracy", "val/rs_iou")


def bar_is_seen() -> bool:
    """Whether a redrawn progress bar would be seen as one: stdout, where Lightning's bar
    writes, is a terminal (not ``| tee train.log``, a log file or a pipe), or this runs in
    a notebook (tqdm draws a widget there)."""
    terminal = sys.stdout is not None and hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
    return terminal or "ipykernel" in sys.modules


class EpochLines(ProgressBar):
    """A progress "bar" for logs: after each training epoch, one line on stderr with
    the epoch, its wall time, the bar's metrics and the validation scores (global rank
    0 only); validation, test and sanity-check loops print nothing of their own."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled, self._t0, self._validated = True, time.monotonic(), False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._validated = time.monotonic(), False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only this epoch's scores: with check_val_every_n_epoch > 1 the last ones linger.
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            # An epoch cut short (--trainer.max_time, max_steps) says so: it looked whole.
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            of = trainer.num_training_batches
            short = (done, int(of)) if math.isfinite(of) and done < of else None
            print(epoch_line(trainer.current_epoch, trainer.max_epochs, time.monotonic() - self._t0,
                             {**self.get_metrics(trainer, pl_module),
                              **{k: v for k in VALIDATION_KEYS
                                 if self._validated
                                 and (v := trainer.callback_metrics.get(k)) is not None
                                 and v.isfinite()}},  # no h accuracy without cores
                             batches=short),
                  file=sys.stderr, flush=True)


def epoch_line(epoch: int, max_epochs: int | None, seconds: float, metrics: dict[str, Any], *,
               batches: tuple[int, int] | None = None) -> str:
    """``epoch 3/48 (81 s): train/loss=0.339, val/f1=0.61`` (epochs counted from 1 as the
    bar counts them from 0: the last is ``48/48``; ``v_num`` left out); ``batches`` (done,
    of the epoch's) for an epoch stopped before its end.

    Examples
    --------
    >>> epoch_line(2, 6, 0.31, {"train/loss": 1.2612}, batches=(5, 32))
    'epoch 3/6 stopped after 5/32 batches (0.3 s): train/loss=1.261'
    """
    of = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    stopped = f" stopped after {batches[0]}/{batches[1]} batches" if batches else ""
    shown = [f"{k}={_fmt(v)}" for k, v in metrics.items() if k != "v_num"]
    took = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    return f"epoch {epoch + 1}{of}{stopped} ({took} s)" + (": " + ", ".join(shown) if shown else "")


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)
