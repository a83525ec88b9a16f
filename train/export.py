"""A callback that writes the trained network as safetensors + model card."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM
from dislotrack.models.io import load_lightning_checkpoint, save_model


class ExportModel(L.Callback):
    """At the end of ``fit``, save the best (or last) network to ``path``.

    Parameters
    ----------
    path : str
        ``<stem>`` of the output, e.g. ``models/weights/default``.
    recipe : str
        The command that trained it (goes into the model card).
    """

    def __init__(self, path: str, recipe: str = "") -> None:
        self.path, self.recipe = path, recipe
        self._t0 = time.time()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.time()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        net = pl_module.net
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            net.load_state_dict(load_lightning_checkpoint(best))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, torch.Tensor) and v.numel() == 1}
        dm = trainer.datamodule
        card = {
            "canonical_pixel_size_nm": float(dm.hparams.get("pixel_size", CANONICAL_PIXEL_SIZE_NM))
            if dm is not None else CANONICAL_PIXEL_SIZE_NM,
            "generator": dict(dm.hparams) if dm is not None else {},
            "training": {"recipe": self.recipe, "epochs": trainer.current_epoch,
                         "steps": trainer.global_step, "wall_time_s": time.time() - self._t0,
                         "best_checkpoint": best, "module": dict(pl_module.hparams)},
            "metrics": {"last_validation": metrics},
        }
        save_model(net.cpu(), self.path, card=card)
