"""The LightningModule: losses, optimisation and DESIGN.md's validation metrics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from dislotrack.models.decode import decode_cores, outputs_to_maps, with_direction
from dislotrack.models.io import load_model
from dislotrack.models.metrics import DetectionTally
from dislotrack.models.unet import HEATMAP_CH, HVEC_CH, RS_CH
from dislotrack.train.data import cores_from_batch
from dislotrack.train.errors import TrainConfigError
from dislotrack.train.losses import bce_dice_loss, h_cosine_loss, heatmap_loss

#: Dose bins of the validation report [e/A^2]: low, medium, high.
DOSE_BINS = {"dose_lt100": (0, 100), "dose_100_500": (100, 500), "dose_ge500": (500, np.inf)}
#: Every tally a validation step may fill, in one order on every DDP rank.
TALLY_KEYS = ("all", "hrtem", "stem", *DOSE_BINS)


def init_weights(net: nn.Module, path: str) -> str | None:
    """Copy the weights of the saved model ``path`` into ``net`` (same architecture);
    returns the model's sha256 (its card's).

    Raises
    ------
    TrainConfigError
        If ``path`` is no model or its architecture differs from ``net``'s.
    """
    saved, card = _read_init_model(path)
    _copy_weights(net, saved, path)
    return card.get("sha256")


def _read_init_model(path: str) -> tuple[nn.Module, dict]:
    """The saved model ``path`` and its card; `TrainConfigError` (one line) if unreadable."""
    try:
        return load_model(path)
    except (ValueError, OSError) as err:  # e.g. a .ckpt, or no such model: one line
        raise TrainConfigError(f"--model.init_from {path}: {err}") from None


def _copy_weights(net: nn.Module, saved: nn.Module, path: str) -> None:
    """Copy ``saved``'s weights (the model ``path``) into ``net``; `TrainConfigError` if
    their architectures differ."""
    mine = getattr(net, "config", None)  # UNetConfig: a frozen dataclass, compared by value
    if mine is not None and mine != saved.config:
        theirs, ours = saved.config.to_dict(), mine.to_dict()
        differ = ", ".join(f"{k} {theirs.get(k)} in the model, {v} here" for k, v in ours.items()
                           if theirs.get(k) != v)
        raise TrainConfigError(f"--model.init_from {path}: its architecture differs from the "
                               f"configured network ({differ}): pass its settings "
                               "(--model.net.init_args.config.<name> <value>) or its config")
    net.load_state_dict(saved.state_dict())


#: A checkpoint's entry holding the network's `UNetConfig` as a dict.
ARCHITECTURE_KEY = "dislotrack_architecture"
#: A checkpoint's entry holding the sha256 of the ``init_from`` model.
INIT_FROM_KEY = "dislotrack_init_from_sha256"
#: A checkpoint's entry holding the ``training`` record of the ``init_from`` model's card
#: (its lineage: the rounds of fine-tuning it had, which evaluate must know).
INIT_FROM_TRAINING_KEY = "dislotrack_init_from_training"
#: A checkpoint's entry holding the settings that set the learning-rate schedule's length
#: (`DislocationModule.schedule_settings`): a resume that changed one names it.
SCHEDULE_KEY = "dislotrack_schedule_settings"
#: The `SCHEDULE_KEY` entry of the number of DDP processes.
PROCESSES = "the number of processes (--trainer.devices x --trainer.num_nodes)"
#: State-dict prefix under which checkpoints up to 0.1.24 hold the network a second time
#: (``_forward.*``, compiled: ``_forward._orig_mod.*``): the same tensors as ``net.*``.
DUPLICATE_NET_PREFIX = "_forward."


def _drop_duplicate_net(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: drop the ``_forward.*`` copies of ``net.*`` that older
    checkpoints hold, so that they load with or without ``compile``."""
    for key in [k for k in state_dict if k.startswith(prefix + DUPLICATE_NET_PREFIX)]:
        del state_dict[key]


class DislocationModule(L.LightningModule):
    """Trains an injected network on heatmap, h-vector and rock-salt targets.

    Parameters
    ----------
    net : nn.Module
        Maps (B, 1, H, W) images to (B, 4, H, W) outputs (see `dislotrack.models.unet`).
    lr, weight_decay : float
        AdamW settings; the learning rate follows a one-cycle schedule over training (5 % warm-up to
        ``lr``, then cosine annealing; momentum cycled inversely).
    w_heatmap, w_h, w_rs : float
        Loss weights.
    threshold : float
        Heatmap threshold used by the validation decoding.
    compile : bool
        Wrap the network in ``torch.compile`` (opt-in, for GPUs); checkpoints hold the
        same keys either way, so a run may be resumed or tested with the other setting.
    init_from : str, optional
        A saved model (``<stem>`` or a bundled name, see `load_model`) whose weights
        start the training (continued training); its architecture must match ``net``.
        Where it cannot be read, the error is raised only if no checkpoint is restored
        (`require_init_from`): resuming or testing a run does not need its base model.
    """

    def __init__(self, net: nn.Module, *, lr: float = 2e-3, weight_decay: float = 1e-4,
                 w_heatmap: float = 1.0, w_h: float = 0.5, w_rs: float = 0.5,
                 threshold: float = 0.5, compile: bool = False,
                 init_from: str | None = None) -> None:
        super().__init__()
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("w_heatmap", w_heatmap),
                            ("w_h", w_h), ("w_rs", w_rs)):
            positive = name == "lr"
            if not (np.isfinite(value) and (value > 0 if positive else value >= 0)):
                raise TrainConfigError(f"--model.{name} must be a finite number "
                                       f"{'> 0' if positive else '>= 0'}, got {value!r}")
        if not 0 < threshold < 1:
            raise TrainConfigError(f"--model.threshold is a core score in (0, 1), got {threshold!r}")
        #: The hash of the model this run started from (kept in checkpoints: a resume
        #: reports the one it started from, even where the file has since been replaced).
        self.init_from_sha256: str | None = None
        #: The card of the ``init_from`` model (None without one, or where it is unreadable).
        self.init_from_card: dict | None = None
        #: The ``training`` record of the ``init_from`` model's card (kept in checkpoints,
        #: as the hash is: the exported card keeps it as ``training.base``).
        self.init_from_training: dict | None = None
        #: Why ``init_from`` could not be read: a checkpoint that replaces all weights does
        #: not need it (a resumed or tested run whose base model was moved since), so it is
        #: raised only where none is restored (`require_init_from`).
        self.init_from_error: TrainConfigError | None = None
        self._restored = False  # set by on_load_checkpoint
        self._saved_schedule: dict = {}  # a resumed checkpoint's `schedule_settings`
        if init_from:
            try:
                saved, card = _read_init_model(init_from)
            except TrainConfigError as err:
                self.init_from_error = err
            else:  # eager, so that a module built with init_from holds its weights at once
                _copy_weights(net, saved, init_from)
                self.init_from_card, self.init_from_sha256 = card, card.get("sha256")
                self.init_from_training = card.get("training")
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        # torch.compile is opt-in (GPU configs). The compiled wrapper shares the network's
        # parameters; set past nn.Module's registry, it adds no `_orig_mod` keys to the
        # state dict, so checkpoints load with or without compile.
        object.__setattr__(self, "_compiled_net", torch.compile(net) if compile else None)
        self.register_load_state_dict_pre_hook(_drop_duplicate_net)
        self._tallies: dict[str, DetectionTally] = {}
        self._rs = np.zeros(3)  # intersection, union, annotated samples
        # The same per mode and dose bin (TALLY_KEYS after "all"), reported as the others.
        self._rs_by_key = np.zeros((len(TALLY_KEYS) - 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net if self._compiled_net is None else self._compiled_net)(x)

    def require_init_from(self) -> None:
        """Raises the `TrainConfigError` of an unreadable ``init_from`` (a run that starts
        from it, or scores it, needs it; a restored checkpoint replaces its weights)."""
        if self.init_from_error is not None and not self._restored:
            raise self.init_from_error

    def on_fit_start(self) -> None:
        # After Lightning restored any checkpoint: a fresh fit needs its init_from model.
        self.require_init_from()

    def on_test_start(self) -> None:
        self.require_init_from()

    #: Settings that the optimizer and its schedule carry in a checkpoint: a resumed fit
    #: restores those, so another value on the command line would be silently ignored.
    OPTIMIZER_SETTINGS = ("lr", "weight_decay")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a resumed fit whose optimizer settings differ from the checkpoint's, and
        warn where the data settings do (the card records this run's)."""
        self._restored = True  # its weights replace init_from's
        if self._trainer is None or self.trainer.state.fn != "fit":
            return  # validate/test read the weights only
        self.init_from_sha256 = checkpoint.get(INIT_FROM_KEY, self.init_from_sha256)
        self.init_from_training = checkpoint.get(INIT_FROM_TRAINING_KEY, self.init_from_training)
        self._saved_schedule = checkpoint.get(SCHEDULE_KEY) or {}
        saved = checkpoint.get("hyper_parameters", {})
        changed = [f"--model.{k} {saved[k]:g} -> {self.hparams[k]:g}" for k in self.OPTIMIZER_SETTINGS
                   if k in saved and saved[k] != self.hparams[k]]
        if changed:
            raise TrainConfigError(
                f"resuming restores the optimizer and its learning-rate schedule as saved, so "
                f"{', '.join(changed)} would be ignored: resume with the checkpoint's values, or "
                "start a new run from its exported weights with --model.init_from <model>")
        data = checkpoint.get("datamodule_hyper_parameters", {})
        now = getattr(self.trainer.datamodule, "hparams", {})
        moved = [f"{k} {data[k]!r} -> {now[k]!r}" for k in sorted(set(data) & set(now))
                 if data[k] != now[k] and k not in ("num_workers", "main_threads")]  # no effect on data
        was, now = self._saved_schedule.get(PROCESSES), self.trainer.world_size
        if was is not None and was != now:
            # Samples per epoch and the global batch scale with it; the per-rank step count,
            # and so the schedule, may not (`_check_resumed_schedule` refuses where it does).
            rank_zero_warn(f"resumed on {now} process{'es' * (now != 1)} but the checkpoint's run used "
                           f"{was} (--trainer.devices x --trainer.num_nodes): the epochs from here draw "
                           f"{now} x --data.samples_per_epoch samples at a global batch of {now} x "
                           "--data.batch_size; the exported model card records this run's world_size")
        if moved:
            rank_zero_warn(f"resumed with other data settings ({', '.join(moved)}): the epochs "
                           "before used the checkpoint's; the exported model card records these")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the network's architecture in every checkpoint, so that
        `dislotrack.train.export.export_checkpoint` rebuilds it from the file alone."""
        config = getattr(self.net, "config", None)
        if config is not None:
            checkpoint[ARCHITECTURE_KEY] = config.to_dict()
        if self.init_from_sha256:
            checkpoint[INIT_FROM_KEY] = self.init_from_sha256
        if self.init_from_training:
            checkpoint[INIT_FROM_TRAINING_KEY] = self.init_from_training
        if settings := self.schedule_settings():
            checkpoint[SCHEDULE_KEY] = settings

    def schedule_settings(self) -> dict[str, int | float | None]:
        """The settings that fix how many steps the one-cycle schedule spans, as the command
        line names them (empty without a trainer)."""
        if self._trainer is None:
            return {}
        t = self.trainer
        out = {f"--trainer.{k}": getattr(t, k, None)
               for k in ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches")}
        out[PROCESSES] = t.world_size
        data = getattr(t.datamodule, "hparams", None) or {}
        out.update({f"--data.{k}": data[k] for k in ("samples_per_epoch", "batch_size") if k in data})
        return {k: v for k, v in out.items()
                if v is None or (isinstance(v, int | float) and not isinstance(v, bool))}

    def losses(self, out: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        lh = heatmap_loss(out[:, HEATMAP_CH:HEATMAP_CH + 1], batch["heatmap"],
                          weight=batch.get("heatmap_weight"))
        lv = h_cosine_loss(out[:, HVEC_CH], batch["hvec"], batch["hmask"])
        lr = bce_dice_loss(out[:, RS_CH:RS_CH + 1], batch["rs"], known=batch.get("rs_known"))
        hp = self.hparams
        total = hp.w_heatmap * lh + hp.w_h * lv + hp.w_rs * lr
        return {"loss": total, "heatmap": lh, "h": lv, "rs": lr}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ls = self.losses(self(batch["image"]), batch)
        # No rock-salt mask in the batch (lab data without _rs.tif): no rock-salt loss to
        # report (it is 0, as if a real one).
        unmasked = "rs_known" in batch and not bool(torch.as_tensor(batch["rs_known"]).any())
        self.log_dict({f"train/{k}": v for k, v in ls.items() if not (unmasked and k == "rs")},
                      prog_bar=True, batch_size=len(batch["image"]))
        return ls["loss"]

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self(batch["image"])
        ls = self.losses(out, batch)
        self.log(f"{stage}/loss", ls["loss"], batch_size=len(batch["image"]), sync_dist=True)
        maps = outputs_to_maps(out)
        truth = cores_from_batch(batch["cores"])
        rs_true = batch["rs"][:, 0].cpu().numpy() > 0.5
        for i, t in enumerate(truth):
            pred = decode_cores(maps["heatmap"][i], maps["hfield"][i],
                                threshold=self.hparams.threshold)
            pred = with_direction(pred)  # as infer: no h, no core
            ps = float(batch["pixel_size"][i])
            keys = ["all"]
            if "mode_known" not in batch or batch["mode_known"][i]:  # lab frames have no mode
                keys.append("stem" if bool(batch["stem"][i]) else "hrtem")
            dose = float(batch["dose"][i])
            keys += [k for k, (lo, hi) in DOSE_BINS.items() if lo <= dose < hi]
            for k in keys:
                self._tallies.setdefault(k, DetectionTally()).add(
                    pred[["x", "y"]].to_numpy(), pred[["hx", "hy"]].to_numpy(),
                    t[["x", "y"]].to_numpy(), t[["hx", "hy"]].to_numpy(), pixel_size=ps)
            if "rs_known" in batch and not batch["rs_known"][i]:
                continue  # no rock-salt annotation: no IoU to add
            rp = maps["rocksalt"][i] > 0.5
            pixels = [np.logical_and(rp, rs_true[i]).sum(), np.logical_or(rp, rs_true[i]).sum(), 1]
            self._rs += pixels
            self._rs_by_key[[TALLY_KEYS.index(k) - 1 for k in keys if k != "all"]] += pixels

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _pooled_over_ranks(self) -> tuple[dict[str, DetectionTally], np.ndarray]:
        """The tallies and rock-salt counts summed over DDP ranks: F1 over all frames
        (DESIGN.md), not the mean of each rank's F1 that ``log_dict(sync_dist=True)`` gives.
        Lightning's distributed sampler pads the ranks to equal length, so up to
        world size - 1 validation images count twice."""
        keys = TALLY_KEYS  # the same array shape on every rank, whatever frames it saw
        fields = ("tp", "fp", "fn", "sq_err_nm2", "h_ok", "h_scored")
        # The last column says where a key saw frames (even frames without any core).
        counts = np.array([[*(getattr(self._tallies.get(k, DetectionTally()), f) for f in fields),
                            float(k in self._tallies)] for k in keys], dtype=np.float64)
        flat = self._sum_over_ranks(np.concatenate([counts.ravel(), self._rs]))
        counts, rs = flat[:counts.size].reshape(counts.shape), flat[counts.size:]
        tallies = {}
        for k, row in zip(keys, counts, strict=True):
            if row[-1]:  # a key with frames on some rank: the same keys on every rank
                tallies[k] = DetectionTally(int(row[0]), int(row[1]), int(row[2]), float(row[3]),
                                            int(row[4]), int(row[5]))
        return tallies, rs

    def _sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """The tallies and rock-salt counts (`_pooled_over_ranks`) summed over the ranks of
        a distributed run (unchanged in one process)."""
        return self._all_reduce_sum(values)

    def _all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """``values`` summed over the ranks of a distributed run (unchanged in one process)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        t = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").cpu().numpy()

    def _epoch_end(self, stage: str) -> None:
        metrics = {}
        self._tallies, self._rs = self._pooled_over_ranks()
        rs_by_key = self._all_reduce_sum(self._rs_by_key.ravel()).reshape(self._rs_by_key.shape)
        for k, tally in self._tallies.items():
            for name, v in tally.summary().items():
                if name in ("f1", "rmse_nm", "h_accuracy", "precision", "recall"):
                    # F1 without cores is 0 (val/f1 picks checkpoints); the others are NaN
                    # where undefined (precision: nothing found; recall: no true core; RMSE
                    # and h accuracy: no match), not made-up scores.
                    metrics[f"{stage}/{name}" if k == "all" else f"{stage}/{k}/{name}"] = (
                        float(np.nan_to_num(v, nan=0.0)) if name == "f1" else float(v))
            if k == "all":  # how many cores matched (and falsely found): says why a score is NaN
                metrics[f"{stage}/tp"], metrics[f"{stage}/fp"] = float(tally.tp), float(tally.fp)
                metrics[f"{stage}/true_cores"] = float(tally.tp + tally.fn)  # in the logs too
        # NaN without any rock-salt annotation (lab data), or where neither the masks nor
        # the predictions hold any (0 / 0: undefined, not perfect): no score, and the same
        # keys on every DDP rank (log_dict syncs them key by key).
        metrics[f"{stage}/rs_iou"] = (float(self._rs[0] / self._rs[1])
                                      if self._rs[2] and self._rs[1] else float("nan"))
        # Per mode and dose bin as the other scores (README): for the keys with frames.
        for k, (inter, union, annotated) in zip(TALLY_KEYS[1:], rs_by_key, strict=True):
            if k in self._tallies:
                metrics[f"{stage}/{k}/rs_iou"] = float(inter / union) if annotated and union else float("nan")
        # Already pooled: the same values on every rank, so syncing (a mean) changes nothing
        # but keeps Lightning from warning about epoch-level logging without it.
        self.log_dict(metrics, sync_dist=True)
        self._tallies, self._rs = {}, np.zeros(3)
        self._rs_by_key = np.zeros_like(self._rs_by_key)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        total = self._trainer.estimated_stepping_batches if self._trainer is not None else 1000
        total = int(total) if np.isfinite(total) else 100_000
        self._planned_steps = max(total, 2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr,
                                                    total_steps=self._planned_steps, pct_start=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_validation_start(self) -> None:
        # The sanity check runs after the checkpoint's schedule is restored: refuse a
        # schedule that does not fit before spending time on validation.
        if self._trainer is not None and self.trainer.sanity_checking:
            self._check_resumed_schedule()
        self.require_init_from()  # validate: scores the init_from model without a checkpoint

    def on_train_start(self) -> None:
        self._check_resumed_schedule()

    def _check_resumed_schedule(self) -> None:
        """Raises `TrainConfigError` if a resumed schedule does not fit this run.

        A checkpoint restores the one-cycle schedule with its own length: with more
        epochs (or samples per epoch) than it was planned for, it would fail mid-run.
        """
        schedulers = self.lr_schedulers()
        sched = schedulers[0] if isinstance(schedulers, list) else schedulers
        planned = getattr(self, "_planned_steps", None)
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and planned \
                and sched.total_steps != planned:
            saved, now = self._saved_schedule, self.schedule_settings()
            changed = [f"{k} {saved[k]} -> {v}" for k, v in now.items() if k in saved and saved[k] != v]
            # An older checkpoint does not record them: the settings that may have changed.
            why = ", ".join(changed) if changed else (
                "max_epochs, max_steps, samples_per_epoch, batch_size, limit_train_batches or "
                "accumulate_grad_batches changed")
            # A run that max_steps stopped has annealed its learning rate to ~0: it is done.
            stopped = saved.get("--trainer.max_steps", -1) not in (-1, None) and any(
                c.startswith("--trainer.max_steps") for c in changed)
            raise TrainConfigError(
                f"the checkpoint's learning-rate schedule spans {sched.total_steps} steps but this "
                f"run plans {planned} ({why}); "
                + ("--trainer.max_steps ends the schedule, so the run it stopped is finished (not "
                   "paused): " if stopped else "")
                + "resume with the settings it was trained with, or start a new run from its "
                "exported weights with --model.init_from <model>")
