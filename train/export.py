"""A callback that writes the trained network as safetensors + model card."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM
from dislotrack.models.io import load_lightning_checkpoint, save_model

#: Appended to the export's path under ``--trainer.fast_dev_run``.
FAST_DEV_RUN_SUFFIX = "_fast_dev_run"


class ExportModel(L.Callback):
    """At the end of ``fit``, save the best (or last) network to ``path``.

    Parameters
    ----------
    path : str
        ``<stem>`` of the output, e.g. ``models/weights/default``.
    recipe : str
        The config's command (goes into the model card, with `command`: the full
        command line when run by ``dislotrack train``).
    """

    def __init__(self, path: str, recipe: str = "") -> None:
        self.path, self.recipe = path, recipe
        self.command = ""  # the full command line, set by `dislotrack train`
        self._first_step: int | None = None  # global step when training started (resumes too)
        self._t0 = time.time()
        # Each validated epoch's scores, to give those of the exported (best) epoch.
        self._history: dict[int, dict[str, float]] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._first_step = time.time(), None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = trainer.global_step  # after a resume has restored it

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._history[trainer.current_epoch] = _scalars(trainer.callback_metrics)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        if self._first_step is None or trainer.global_step == self._first_step:
            # e.g. `--ckpt_path last` of a finished run: keep the export it made
            rank_zero_info(f"nothing was trained; {self.path}.* left as it was")
            return
        net = pl_module.net
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        best_epoch = None
        if best and Path(best).is_file():
            net.load_state_dict(load_lightning_checkpoint(best))
            best_epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"])
        metrics = _scalars(trainer.callback_metrics)
        dm = trainer.datamodule
        card = {
            "canonical_pixel_size_nm": float(dm.hparams.get("pixel_size", CANONICAL_PIXEL_SIZE_NM))
            if dm is not None else CANONICAL_PIXEL_SIZE_NM,
            "generator": {k: v for k, v in dm.hparams.items() if not k.startswith("_")}
            if dm is not None else {},
            "training": {"recipe": self.recipe, "command": self.command, "epochs": trainer.current_epoch,
                         "steps": trainer.global_step, "wall_time_s": time.time() - self._t0,
                         "best_checkpoint": best,
                         "best_epoch": best_epoch,  # the exported weights' (0-based)
                         "module": {k: v for k, v in pl_module.hparams.items() if not k.startswith("_")}},
            # last: the final epoch's; best: the exported weights' epoch (if this run validated it)
            "metrics": {"last_validation": metrics,
                        **({"best_validation": self._history[best_epoch]}
                           if best_epoch in self._history else {})},
        }
        # A smoke test of the recipe exports beside, never over, the model of a real run.
        path = f"{self.path}{FAST_DEV_RUN_SUFFIX}" if trainer.fast_dev_run else self.path
        save_model(net.cpu(), path, card=card)
        rank_zero_info(f"model exported to {path}.safetensors / .json "
                       f"(use: dislotrack infer --model {path})")


def _scalars(metrics: dict) -> dict[str, float]:
    """Lightning's logged metrics as plain floats: finite scalars only (a score that is
    undefined, e.g. RMSE without a matched core, is left out, and the card stays strict JSON)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v)}
