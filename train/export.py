"""A callback that writes the trained network as safetensors + model card."""

from __future__ import annotations

import copy
import pickle
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM
from dislotrack.models.io import load_lightning_checkpoint, model_paths, refuse_existing_model, save_model
from dislotrack.models.unet import UNet, UNetConfig
from dislotrack.train.errors import is_unsafe_pickle, unpickling_refusal
from dislotrack.train.module import ARCHITECTURE_KEY, INIT_FROM_KEY, INIT_FROM_TRAINING_KEY

#: Appended to the export's path under ``--trainer.fast_dev_run``.
FAST_DEV_RUN_SUFFIX = "_fast_dev_run"


#: Said where a model is exported: its card has no decode threshold yet (infer takes 0.5).
CALIBRATE_FIRST = ("its decode threshold is 0.5 until calibrated: "
                   "python -m dislotrack.train.calibrate {}")


class ExportModel(L.Callback):
    """At the end of ``fit``, save the best (or last) network to ``path`` (from a copy:
    the module keeps its last weights).

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
        self._earlier_s = 0.0  # wall time of the runs this one resumed (from the checkpoint)
        # Each validated epoch's scores, to give those of the exported (best) epoch.
        self._history: dict[int, dict[str, float]] = {}

    def state_dict(self) -> dict[str, float]:
        """Kept in each checkpoint: the training wall time so far, so that a resumed run's
        card gives the whole run's time, as its epochs and steps do."""
        return {"wall_time_s": self._earlier_s + time.time() - self._t0}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._earlier_s = float(state_dict.get("wall_time_s", 0.0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._first_step = time.time(), None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = trainer.global_step  # after a resume has restored it

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._history[trainer.current_epoch] = {  # this validation's scores only
                k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        if self._first_step is None or trainer.global_step == self._first_step:
            # e.g. `--ckpt_path last` of a finished run: keep the export it made
            rank_zero_info(f"nothing was trained; {self.path}.* left as it was")
            return
        # A copy: the module keeps its last weights and device (a `test` after `fit` in
        # Python, or on the other DDP ranks, scores what was trained last).
        net = copy.deepcopy(pl_module.net).cpu()
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        best_epoch = None
        if best and Path(best).is_file():
            net.load_state_dict(load_lightning_checkpoint(best))
            best_epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"])
        logged = _scalars(trainer.callback_metrics)
        # Without validation (limit_val_batches 0) the last scores are training losses.
        metrics = {k: v for k, v in logged.items() if k.startswith("val/")}
        losses = {k: v for k, v in logged.items() if not k.startswith("val/")}
        dm = trainer.datamodule
        card = model_card(
            generator=dict(dm.hparams) if dm is not None else {}, module=dict(pl_module.hparams),
            training={"recipe": self.recipe, "command": self.command, "epochs": trainer.current_epoch,
                      "steps": trainer.global_step,
                      # DDP processes: the global batch is world_size x data batch_size
                      "world_size": trainer.world_size,
                      "wall_time_s": self._earlier_s + time.time() - self._t0,  # resumed runs too
                      **({"init_from_sha256": pl_module.init_from_sha256}
                         if getattr(pl_module, "init_from_sha256", None) else {}),
                      # the init_from model's own record (its rounds of fine-tuning, which
                      # evaluate knows the trained-on items by), as finetune keeps its base's
                      **({"base": pl_module.init_from_training}
                         if getattr(pl_module, "init_from_training", None) else {}),
                      "best_checkpoint": best,
                      "best_epoch": best_epoch},  # the exported weights' (0-based)
            # last: the final epoch's; best: the exported weights' epoch (if this run validated it)
            metrics={**({"last_validation": metrics} if metrics else {}),
                     **({"last_training": losses} if losses else {}),
                     **({"best_validation": self._history[best_epoch]}
                        if best_epoch in self._history else {})})
        # A smoke test of the recipe exports beside, never over, the model of a real run.
        path = f"{self.path}{FAST_DEV_RUN_SUFFIX}" if trainer.fast_dev_run else self.path
        save_model(net, path, card=card)
        rank_zero_info(f"model exported to {path}.safetensors / .json "
                       f"(use: dislotrack infer --model {path}; {CALIBRATE_FIRST.format(path)})")


def model_card(*, generator: dict, module: dict, training: dict, metrics: dict) -> dict:
    """The card of a network trained by `DislocationModule` (for `save_model`).

    ``generator`` and ``module`` are the data module's and the module's hyperparameters
    (Lightning's private ``_...`` entries are left out); the canonical pixel size is the
    generator's ``pixel_size``. ``training`` gains ``module``.
    """
    public = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    return {"canonical_pixel_size_nm": float(generator.get("pixel_size") or CANONICAL_PIXEL_SIZE_NM),
            "generator": public(generator), "training": {**training, "module": public(module)},
            "metrics": metrics}


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, config: str | Path | None = None,
                      command: str = "", overwrite: bool = False) -> Path:
    """Write a Lightning checkpoint of `DislocationModule` as a model (safetensors + card),
    e.g. an epoch's checkpoint, or the last one of a run stopped before its end.

    Parameters
    ----------
    checkpoint : str or Path
        The ``.ckpt`` file (read with ``weights_only=True``).
    out : str or Path
        ``<stem>`` of the model to write.
    config : str or Path, optional
        The run's saved config (``lightning_logs/version_N/config.yaml``), whose
        ``model.net.init_args.config`` gives the architecture: needed only for a checkpoint
        written before dislotrack 0.1.20, which does not hold it.
    command : str
        The command line, for the card.
    overwrite : bool
        Replace a model that exists at ``out`` (else FileExistsError).

    Returns
    -------
    Path
        The weights file written.

    Raises
    ------
    ValueError
        If the file is no readable checkpoint or its architecture is unknown.
    FileExistsError
        If a model exists at ``out`` and ``overwrite`` is False.
    """
    refuse_existing_model(out, overwrite=overwrite)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # pickled objects: name them, never advise unpickling
        if is_unsafe_pickle(err):
            raise ValueError(unpickling_refusal(str(path), err)) from None
        raise ValueError(f"{path} is not a checkpoint that loads with weights_only=True: {err}") from None
    except Exception as err:  # not a torch file
        raise ValueError(f"{path} is not a checkpoint that loads with weights_only=True: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    architecture = _config_architecture(config) if config else ckpt.get(ARCHITECTURE_KEY)
    if architecture is None:
        raise ValueError(f"{path} holds no network architecture (written before dislotrack 0.1.20): "
                         "pass the run's saved config with --config (its lightning_logs/"
                         "version_N/config.yaml)")
    net = UNet(UNetConfig.from_dict(architecture))
    try:
        net.load_state_dict(load_lightning_checkpoint(path))
    except RuntimeError as err:  # another width or depth than the architecture given
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
        raise ValueError(f"{path}: its weights do not fit the architecture {architecture} "
                         f"({lines[0]})") from None
    card = model_card(
        generator=dict(ckpt.get("datamodule_hyper_parameters") or {}),
        module=dict(ckpt.get("hyper_parameters") or {}),
        training={"command": command, "checkpoint": str(path.resolve()),
                  "checkpoint_epoch": ckpt.get("epoch"),  # 0-based
                  "steps": ckpt.get("global_step"),
                  **({"init_from_sha256": ckpt[INIT_FROM_KEY]} if INIT_FROM_KEY in ckpt else {}),
                  **({"base": ckpt[INIT_FROM_TRAINING_KEY]} if ckpt.get(INIT_FROM_TRAINING_KEY) else {})},
        metrics={"checkpoint": _checkpoint_scores(ckpt)})
    save_model(net.eval(), out, card=card)
    return model_paths(out)[0]


def _config_architecture(config: str | Path) -> dict:
    """``model.net.init_args.config`` of a LightningCLI config file."""
    import yaml

    try:
        node = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--config {config}: cannot be read ({err})") from None
    for key in ("model", "net", "init_args", "config"):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"--config {config}: no model.net.init_args.config (the network's "
                             "architecture); pass the config that run saved")
        node = node[key]
    return node or {}  # null: the default UNetConfig


def _checkpoint_scores(ckpt: dict) -> dict[str, float]:
    """The monitored score(s) that ModelCheckpoint kept in a checkpoint."""
    scores = {}
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor"):
            for key in ("current_score", "best_model_score"):
                value = state.get(key)
                if value is not None and bool(torch.isfinite(torch.as_tensor(value))):
                    scores[f"{state['monitor']} ({key.replace('_', ' ')})"] = float(value)
    return scores


def _scalars(metrics: dict) -> dict[str, float]:
    """Lightning's logged metrics as plain floats: finite scalars only (a score that is
    undefined, e.g. RMSE without a matched core, is left out, and the card stays strict JSON)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v)}
