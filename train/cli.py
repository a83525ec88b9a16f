"""``dislotrack train``: LightningCLI (fit / validate / test) over YAML configs.

Examples
--------
    dislotrack train fit --config train/configs/cpu.yaml
    dislotrack train fit --config cpu        # the bundled config, from any folder
    dislotrack train fit --config train/configs/cpu.yaml --ckpt_path last
    dislotrack train test --config train/configs/cpu.yaml --ckpt_path last
    dislotrack train export runs/cpu/checkpoints/last.ckpt --out models/mine
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dislotrack.train.datamodule import SyntheticDataModule
from dislotrack.train.errors import TrainConfigError, is_unsafe_pickle, unpickling_refusal, with_suggestion
from dislotrack.train.export import CALIBRATE_FIRST, ExportModel, export_checkpoint
from dislotrack.train.module import DislocationModule
from dislotrack.train.progress import EpochLines, bar_is_seen


def config_path(name: str) -> str:
    """Path of a bundled config (``cpu``, ``gpu`` or ``cluster``)."""
    return str(files("dislotrack.train").joinpath("configs", f"{name}.yaml"))


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``--config X`` (``-c X``) where X is not a file but names a bundled config (``cpu``
    or ``train/configs/cpu.yaml`` outside the repository) -> that config's installed path."""
    out = list(argv)
    for i, value in _option_values(out, "--config") + _option_values(out, "-c"):
        stem = Path(value).stem
        bundled = Path(config_path(stem))
        # Only the bundled names themselves: a typo in the user's own path (mycfg/cpu.yaml,
        # cpu.yml) must not silently train the bundled recipe instead.
        named = Path(value).as_posix() in (stem, f"{stem}.yaml", f"train/configs/{stem}.yaml")
        if named and not Path(value).is_file() and bundled.is_file():  # a folder "cpu" too
            key, eq, _ = out[i].partition("=")
            out[i] = f"{key}={bundled}" if eq and key in ("--config", "-c") else str(bundled)
    return out


def _option_values(argv: Sequence[str], option: str) -> list[tuple[int, str]]:
    """(index of the value, value) of each ``option VALUE`` or ``option=VALUE`` in ``argv``
    (for ``option=VALUE`` the index is that argument's)."""
    found = []
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key == option and eq:
            found.append((i, value))
        elif key == option and i + 1 < len(argv):
            found.append((i + 1, argv[i + 1]))
    return found


#: Values that jsonargparse reads as None.
_NULLS = {"null", "none", "~", ""}


def check_root_argument(argv: Sequence[str]) -> None:
    """Refuse ``--trainer.default_root_dir`` given as null on the command line.

    Logs, checkpoints and the export live under that folder; jsonargparse would
    otherwise reject the logger's missing ``save_dir`` in a dozen lines.

    Parameters
    ----------
    argv : sequence of str
        The arguments of ``dislotrack train``.

    Raises
    ------
    TrainConfigError
        If the root is ``null``, ``None``, ``~`` or empty.
    """
    for _, value in _option_values(argv, "--trainer.default_root_dir"):
        if value.strip().lower() in _NULLS:
            raise TrainConfigError(f"--trainer.default_root_dir {value or repr(value)}: give a "
                                   "folder; logs, checkpoints and the export go under it")


def check_config_first(argv: Sequence[str]) -> None:
    """Refuse an option given before a ``--config`` (``-c``) that sets it: the config read
    after it would silently put back its own value (a smoke test's ``--trainer.max_epochs
    1`` before ``--config cpu.yaml`` ran the 48-epoch recipe).

    Parameters
    ----------
    argv : sequence of str
        The arguments of ``dislotrack train`` (bundled config names already resolved to
        paths: `resolve_configs`).

    Raises
    ------
    TrainConfigError
        Naming each such option and the config that sets it.

    Examples
    --------
    >>> check_config_first(["fit", "--config", "cpu.yaml", "--trainer.max_epochs", "1"])
    """
    configs = _option_values(argv, "--config") + _option_values(argv, "-c")  # (position, path)
    clashes = {}
    for i, arg in enumerate(argv):
        key = arg.split("=", 1)[0]
        if not key.startswith("--") or key == "--config":
            continue
        for j, path in configs:
            if j > i and _config_sets(path, key[2:]):
                clashes.setdefault(key, Path(path).name)
    if clashes:
        named = ", ".join(f"{k} (set by {c})" for k, c in clashes.items())
        one = len(clashes) == 1
        raise TrainConfigError(f"{named} come{'s' if one else ''} before the config that sets "
                               f"{'it' if one else 'them'}, which would put back the config's value: "
                               "give --config first, then the options that change it")


def _config_sets(path: str, dotted: str) -> bool:
    """Whether the YAML config at ``path`` sets the key ``dotted`` (e.g.
    ``trainer.max_epochs``); False for a file that cannot be read (LightningCLI says why)."""
    import yaml

    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def checkpoint_mismatch(path: Path, config: Any) -> str | None:
    """Why the checkpoint ``path`` does not fit the configured network's `UNetConfig`
    ``config`` (its recorded architecture differs), else None (also where either is
    unknown: checkpoints before 0.1.20 record none)."""
    import torch

    from dislotrack.train.module import ARCHITECTURE_KEY

    if config is None:
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(ARCHITECTURE_KEY)
    except Exception:  # unreadable: Lightning says why when it loads it
        return None
    if not isinstance(saved, dict):
        return None
    # Fields added to UNetConfig since the checkpoint was written take their defaults.
    known = {k: v for k, v in saved.items() if k in config.to_dict()}
    try:
        saved = type(config)(**known).to_dict()
    except (TypeError, ValueError):
        return None
    if saved == config.to_dict():
        return None
    differ = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
    return ("its network differs from the configured one ("
            + ", ".join(f"{k} {a} in the checkpoint, {b} here" for k, (a, b) in differ.items())
            + "): pass the options or config that run used")


def requeued_checkpoint(ckpt_path: str | None, root: str | Path, dirpath: str | Path | None, *,
                        slurm: bool) -> str | None:
    """``"hpc"`` where a job SLURM requeued (README: the sbatch example's
    ``--signal=SIGUSR1``) left Lightning's ``hpc_ckpt_N.ckpt`` in ``root``, newer than the
    ``last.ckpt`` that ``--ckpt_path last`` names (Lightning takes the HPC checkpoint only
    without a ``--ckpt_path``: the part of the epoch before the signal would be lost, or,
    in the first epoch, the whole run); else None.

    Examples
    --------
    >>> requeued_checkpoint("last", "runs/none", None, slurm=False) is None
    True
    """
    if not slurm or ckpt_path != "last":
        return None
    saved = sorted(Path(root).glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = Path(dirpath) / "last.ckpt" if dirpath else None
    if saved and (last is None or not last.is_file() or saved[-1].stat().st_mtime >= last.stat().st_mtime):
        return "hpc"
    return None


def slurm_mismatch(message: str) -> str | None:
    """One line, naming dislotrack's options, for Lightning's error where the SLURM job
    does not match the config's devices or nodes (its hint names Python arguments); None
    for other errors.

    Examples
    --------
    >>> print(slurm_mismatch("You set `num_nodes=2` in Lightning, but the number of nodes configured "
    ...                      "in SLURM `--nodes=1` does not match. HINT: Set `num_nodes=1`."))
    the SLURM job has 1 node (#SBATCH --nodes=1) but --trainer.num_nodes is 2: pass --trainer.num_nodes 1, ...
    """
    if found := re.search(r"`devices=(\d+)`.*`--ntasks-per-node=(\d+)`", message):
        asked, tasks = found.groups()
        return (f"the SLURM job runs {tasks} task{'s' * (tasks != '1')} per node (#SBATCH "
                f"--ntasks-per-node={tasks}) but --trainer.devices is {asked}: pass --trainer.devices "
                f"{tasks}, or change the sbatch script (--ntasks-per-node and --gpus-per-node)")
    if found := re.search(r"`num_nodes=(\d+)`.*`--nodes=(\d+)`", message):
        asked, nodes = found.groups()
        return (f"the SLURM job has {nodes} node{'s' * (nodes != '1')} (#SBATCH --nodes={nodes}) but "
                f"--trainer.num_nodes is {asked}: pass --trainer.num_nodes {nodes}, or change the "
                "sbatch script")
    if found := re.search(r"`--ntasks=(\d+)` in your SLURM", message):
        return (f"#SBATCH --ntasks={found[1]}: Lightning needs --nodes and --ntasks-per-node instead "
                "(README: Training, the sbatch script), with --trainer.num_nodes and "
                "--trainer.devices equal to them")
    return None


def missing_last_checkpoint(ckpt_path: str | None, dirpath: str | None) -> str | None:
    """Why ``--ckpt_path last`` cannot be honoured, else None.

    Parameters
    ----------
    ckpt_path : str or None
        The run's ``--ckpt_path``; only ``"last"`` needs a file.
    dirpath : str or None
        The checkpoint folder (``ModelCheckpoint.dirpath``), which must hold ``last.ckpt``.

    Returns
    -------
    str or None
        A one-line message naming the missing file, or None.
    """
    if ckpt_path != "last" or not dirpath:
        return None
    last = Path(dirpath) / "last.ckpt"
    if last.is_file():
        return None
    return (f"--ckpt_path last: no {last}; train first, pass the --trainer.default_root_dir "
            "training used, or pass a checkpoint file")


def outputs_outside_root(root: str | None, outputs: dict[str, str]) -> list[str]:
    """The ``outputs`` that are not under ``root``.

    Parameters
    ----------
    root : str or None
        ``trainer.default_root_dir``.
    outputs : dict
        Name (checkpoints, logs, export) -> folder or file stem.

    Returns
    -------
    list of str
        ``"name (path)"`` of each output outside ``root`` (none when ``root`` is None).

    Raises
    ------
    TrainConfigError
        If ``root`` is None while an output refers to it (``${trainer.default_root_dir}``
        resolves to the text ``None``).
    """
    if root is None:
        unset = [f"{k} ({v})" for k, v in outputs.items() if "None" in Path(v).parts]
        if unset:
            raise TrainConfigError("trainer.default_root_dir is not set but the config puts "
                                   f"{', '.join(unset)} under it; set it")
        return []
    base = Path(root).resolve()
    return [f"{k} ({v})" for k, v in outputs.items() if not Path(v).resolve().is_relative_to(base)]


#: How far (relative) the (003) period at ``--data.pixel_size`` may lie from the network's
#: ``fringe_period_px``: the fringe channels search a band of +-15 % around it
#: (`dislotrack.models.fringes.FringeChannels`), and the pixel-size jitter adds 5 %.
FRINGE_PERIOD_TOLERANCE = 0.10

#: Environment variables that a multi-node launcher sets (SLURM, torchrun, LSF).
_LAUNCHER_VARIABLES = ("SLURM_JOB_ID", "SLURM_NTASKS", "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "LSB_JOBID")


class SaveConfigForRuns(SaveConfigCallback):
    """LightningCLI's config saving, remembering the log folders it created (global rank
    0), so that a run refused before it logged anything leaves no config of settings that
    never ran (`remove_unrun_logs`). A folder that existed before (the root itself, where
    there is no logger) is never recorded: it may hold the user's own files."""

    created: list[Path] = []  # noqa: RUF012 (one list for the process: train_main clears it)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        fresh = not self.already_saved and self.save_to_log_dir
        log_dir = trainer.log_dir if fresh else None  # on every rank: it broadcasts
        if log_dir and trainer.is_global_zero and _new_log_folder(Path(log_dir), trainer.default_root_dir):
            type(self).created.append(Path(log_dir))
        super().setup(trainer, pl_module, stage)


def _new_log_folder(folder: Path, root: str) -> bool:
    """Whether ``folder`` is a logger's new run folder: below the root, and empty or not
    yet made (loggers make theirs just before the callbacks' setup)."""
    inside = folder.resolve() != Path(root).resolve() and folder.resolve().is_relative_to(
        Path(root).resolve())
    return inside and (not folder.exists() or (folder.is_dir() and not any(folder.iterdir())))


#: What a run's log folder holds before anything was logged (LightningCLI's config, the
#: CSV logger's hyperparameters).
_UNRUN_LOG_FILES = {"config.yaml", "hparams.yaml"}


def remove_unrun_logs(folders: Sequence[Path]) -> None:
    """Remove the log folders, created by this run, that hold only a saved config and
    hyperparameters (a run refused after its config was saved: a changed schedule, a
    missing checkpoint): README points to the newest ``version_N/config.yaml`` as the
    run's settings."""
    for folder in folders:
        if folder.is_dir() and {p.name for p in folder.iterdir()} <= _UNRUN_LOG_FILES:
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


class DislotrackCLI(LightningCLI):
    """LightningCLI that checks where a run writes before it starts.

    ``validate`` / ``test --ckpt_path last`` need the config's ``last.ckpt`` (Lightning
    would only log that there is none and score an untrained network), and logs,
    checkpoints and export should live under ``trainer.default_root_dir`` (a config
    saved by an earlier run has them fixed, so a new root would not move them).
    """

    def __init__(self, *args: Any, typed: Sequence[str] | None = None, **kwargs: Any) -> None:
        """LightningCLI's arguments; ``typed``: the command line as the user typed it (before
        `resolve_configs` put in the installed configs' paths), for the model card."""
        argv = kwargs.get("args") if typed is None else typed
        self.command = shlex.join(["dislotrack", "train", *(sys.argv[1:] if argv is None else argv)])
        super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with one line per epoch for its progress where no bar would be seen
        (a SLURM or nohup log: `dislotrack.train.progress`), unless the config chose a
        progress bar or none."""
        config = self._get(self.config_init, "trainer", default={})
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if (not bar_is_seen() and config.get("enable_progress_bar") is not False
                and not any(isinstance(cb, ProgressBar) for cb in given)):
            kwargs["callbacks"] = [*given, EpochLines()]
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, RuntimeError) as err:  # SLURM's job does not fit the config
            why = slurm_mismatch(str(err))
            if why is None:
                raise
            raise TrainConfigError(why) from None
        except ModuleNotFoundError as err:  # an accelerator's package (TPU: torch_xla) missing
            if "torch_xla" not in str(err):
                raise
            raise TrainConfigError(f"--trainer.accelerator {config.get('accelerator')}: "
                                   f"{str(err).splitlines()[0]}; on this machine pass "
                                   "--trainer.accelerator cpu (or gpu)") from None

    def _outputs(self) -> dict[str, str]:
        out = {}
        if (cb := self.trainer.checkpoint_callback) is not None and cb.dirpath:
            out["checkpoints"] = str(cb.dirpath)
        for i, lg in enumerate(self.trainer.loggers):
            if getattr(lg, "save_dir", None):
                out[f"logs{i or ''}"] = str(lg.save_dir)
        for cb in self.trainer.callbacks:
            if isinstance(cb, ExportModel):
                out["export"] = str(cb.path)
        return out

    def _check_outputs(self) -> None:
        """Raises `TrainConfigError` if an output refers to an unset root; warns if one
        lies outside it."""
        root = self.config[self.subcommand].trainer.get("default_root_dir")
        outside = outputs_outside_root(root, self._outputs())
        if outside:
            rank_zero_warn(f"{', '.join(outside)} outside trainer.default_root_dir ({root}): "
                           "a config saved by an earlier run or written by --print_config fixes "
                           "these paths; edit them, or start from a copy of the bundled YAML "
                           "(dislotrack.train.cli.config_path('cpu') names it)")

    def _check_nodes(self) -> None:
        """Raises `TrainConfigError` for several nodes without a launcher: each process would
        wait for the other nodes' processes forever (e.g. cluster.yaml run by hand)."""
        nodes = self.trainer.num_nodes
        launched = any(k in os.environ for k in _LAUNCHER_VARIABLES)
        if nodes > 1 and not launched:
            raise TrainConfigError(
                f"trainer.num_nodes is {nodes} but no cluster launcher (SLURM, torchrun) started "
                "this run, so it would wait for the other nodes forever: submit it with sbatch "
                "(README: Training) or pass --trainer.num_nodes 1")

    def _check_sync_batchnorm(self) -> None:
        """Raises `TrainConfigError` for synchronised batch norm in a CPU fit (cluster.yaml
        smoke-tested on a laptop): torch supports it on GPUs only, and each DDP process
        would fail with its own traceback (evaluation does not synchronise)."""
        from lightning.pytorch.accelerators import CPUAccelerator

        if self.config[self.subcommand].trainer.get("sync_batchnorm") and isinstance(
                self.trainer.accelerator, CPUAccelerator):
            raise TrainConfigError("trainer.sync_batchnorm works on GPUs only: on the CPU pass "
                                   "--trainer.sync_batchnorm false")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's parsing, its errors raised as one `TrainConfigError` line (with a
        close option name for a mistyped one) instead of 80 lines of usage."""
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            if "required" in str(err) and "model.net" in str(err):  # dislotrack train fit
                names = sorted(p.name.removesuffix(".yaml") for p in files("dislotrack.train")
                               .joinpath("configs").iterdir() if p.name.endswith(".yaml"))
                raise TrainConfigError(f"{err}: give a config, e.g. dislotrack train fit --config "
                                       f"cpu (bundled: {', '.join(names)})") from None
            if "before subcommand" in str(err):  # dislotrack train --config cpu fit
                raise TrainConfigError(f"{err}: give the subcommand first, then the config and "
                                       "options (dislotrack train fit --config cpu ...)") from None
            raise TrainConfigError(_nested_setting(str(err)) or _unknown_class(str(err))
                                   or with_suggestion(str(err), _options(parser, args))) from None

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's reading of ``--ckpt_path``'s hyperparameters (with
        ``weights_only=True``), a checkpoint holding other objects refused in one line."""
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise TrainConfigError(unpickling_refusal(f"--ckpt_path {path}", err)) from None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """LightningCLI's arguments of ``trainer.fit`` (validate, test), with
        ``weights_only=True`` always: Lightning passes None for ``last`` and ``hpc``, which
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns into an unpickling load (code in a
        checkpoint would run)."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        kwargs["weights_only"] = True
        return kwargs

    def _check_weights_only(self) -> None:
        """Raises `TrainConfigError` for ``--weights_only false`` (LightningCLI offers it, as
        an argument of ``trainer.fit``): dislotrack never unpickles a checkpoint."""
        if self.config[self.subcommand].get("weights_only") is False:
            raise TrainConfigError("--weights_only false: dislotrack reads checkpoints with "
                                   "weights_only=True only (unpickling one can run any code); "
                                   "leave the option out and use a checkpoint saved by dislotrack train")

    def fit(self, **kwargs: Any) -> None:
        """``trainer.fit``, in one line where a checkpoint that ``weights_only=True`` refuses
        (``last``, a requeued job's ``hpc_ckpt_N.ckpt``: files Lightning picks) or a SLURM
        job that does not fit the config stops it (`_run_trainer`)."""
        with warnings.catch_warnings():
            if self._restores_checkpoint():  # README's resume: the run's own checkpoints are there
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            self._run_trainer(self.trainer.fit, **kwargs)

    def validate(self, **kwargs: Any) -> None:
        """``trainer.validate``, its set-up errors in one line (`fit`)."""
        self._run_trainer(self.trainer.validate, **kwargs)

    def test(self, **kwargs: Any) -> None:
        """``trainer.test``, its set-up errors in one line (`fit`)."""
        self._run_trainer(self.trainer.test, **kwargs)

    def _run_trainer(self, run: Any, **kwargs: Any) -> None:
        """``run(**kwargs)`` (``trainer.fit``, ...), raising `TrainConfigError` (one line)
        for a SLURM job that does not fit the config, and for a checkpoint that holds
        pickled objects, named as given and as Lightning resolved it."""
        try:
            run(**kwargs)
        except (ValueError, RuntimeError) as err:  # DDP's launcher checks the SLURM job
            why = slurm_mismatch(str(err))
            if why is None:
                raise
            raise TrainConfigError(why) from None
        except pickle.UnpicklingError as err:
            if not is_unsafe_pickle(err):
                raise
            asked = kwargs.get("ckpt_path")
            loaded = self.trainer.ckpt_path  # the file Lightning resolved "last" or "hpc" to
            what = f"--ckpt_path {asked}" + (f" ({loaded})" if loaded and str(loaded) != str(asked) else "")
            raise TrainConfigError(unpickling_refusal(what, err)) from None

    def _check_checkpoint(self) -> None:
        """Raises `TrainConfigError` for an exported model given as ``--ckpt_path`` (torch
        would refuse to unpickle it with a long traceback); warns where ``validate`` or
        ``test`` would score an untrained network."""
        config = self.config[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt and Path(ckpt).suffix in (".safetensors", ".json"):
            raise TrainConfigError(
                f"--ckpt_path {ckpt} is an exported model, not a Lightning checkpoint (.ckpt): "
                f"start from it with --model.init_from {Path(ckpt).with_suffix('')}")
        if ckpt == "best":  # Lightning knows "best" only inside the fit that found it
            folder = getattr(self.trainer.checkpoint_callback, "dirpath", None) or "checkpoints"
            raise TrainConfigError(f"--ckpt_path best: a new run does not know which checkpoint was "
                                   f"best; pass the file (the epochNN-f1_*.ckpt in {folder}) or last")
        folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        path = ((Path(folder) / "last.ckpt" if folder else None) if ckpt == "last"
                else Path(ckpt) if ckpt else None)
        why = path and path.is_file() and checkpoint_mismatch(path, getattr(self.model.net, "config", None))
        if why:
            raise TrainConfigError(f"--ckpt_path {ckpt}: {why}")
        if self.subcommand != "fit" and not ckpt and not config.model.get("init_from"):
            rank_zero_warn("no --ckpt_path and no --model.init_from: this scores an untrained "
                           "network (--ckpt_path last: this config's last checkpoint; "
                           "--model.init_from default: the bundled model)")

    def _check_sizes(self) -> None:
        """Raises `TrainConfigError` for image sizes the network cannot take (found at once,
        not after the sanity check, with the sizes that work)."""
        from dislotrack.models.unet import required_multiple

        config = getattr(self.model.net, "config", None)
        if config is None:
            return
        multiple = required_multiple(config)
        data = self.config[self.subcommand].data
        for key in ("size", "eval_size"):
            value = data.get(key)
            if isinstance(value, int) and value % multiple:
                low = max(multiple, value // multiple * multiple)
                raise TrainConfigError(f"--data.{key} {value}: the network (depth {config.depth}) takes "
                                       f"multiples of {multiple} px, e.g. {low} or {low + multiple}")
        # A 1 x 1 bottleneck of one training image: batch or instance norm has one value
        # per channel to normalise (torch fails in the first step).
        size, batch = data.get("size"), data.get("batch_size")
        if (self.subcommand == "fit" and config.norm in ("batch", "instance") and batch == 1
                and isinstance(size, int) and size // 2**config.depth <= 1):
            raise TrainConfigError(f"--data.size {size} with --data.batch_size 1: the network's "
                                   f"{config.norm} norm has one value per channel at its 1 x 1 px "
                                   f"bottleneck (depth {config.depth}); use --data.size "
                                   f"{2 * multiple} or more, or --data.batch_size 2")

    def _check_fresh_root(self) -> None:
        """Raises `TrainConfigError` where a fit that starts fresh (no checkpoint to restore:
        no ``--ckpt_path``, or ``last`` without a ``last.ckpt``) would replace an earlier
        run's exported model or last checkpoint: resuming it is ``--ckpt_path last``."""
        # A restored checkpoint (also a job SLURM requeued) continues the run that wrote them.
        if self._restores_checkpoint() or self.trainer.fast_dev_run:
            return
        root = Path(self.trainer.default_root_dir)
        from dislotrack.models.io import model_paths

        found = [model_paths(cb.path)[0] for cb in self.trainer.callbacks if isinstance(cb, ExportModel)]
        if (folder := getattr(self.trainer.checkpoint_callback, "dirpath", None)) is not None:
            found.append(Path(folder) / "last.ckpt")
        found = [p for p in found if p.is_file()]
        if found:
            resume = "resume it with --ckpt_path last, or " if found[-1].name == "last.ckpt" else ""
            fresh = "a new fit"
            if self.config[self.subcommand].get("ckpt_path"):  # last, but no last.ckpt
                fresh = "this fit (--ckpt_path last found no last.ckpt, so it starts fresh)"
            if all(p.resolve().is_relative_to(root.resolve()) for p in found):
                names = ", ".join(str(p.resolve().relative_to(root.resolve())) for p in found)
                raise TrainConfigError(
                    f"{root} holds an earlier run ({names}) that {fresh} would replace: "
                    f"{resume}give another --trainer.default_root_dir (or remove the folder)")
            # A saved config fixes its paths outside the root: another root does not help.
            raise TrainConfigError(
                f"an earlier run's {' and '.join(map(str, found))} "
                f"exist{'s' * (len(found) == 1)}, which {fresh} would replace (the config fixes "
                f"these paths): {resume}remove them, or edit the config's checkpoint and export paths")

    def _check_pixel_size(self) -> None:
        """Raises `TrainConfigError` where the network's fringe channels, or the model it
        starts from, were made for another pixel size than ``--data.pixel_size``: the (003)
        fringes would fall outside the channels' band, or the weights see another scale."""
        from dislotrack.data_gen.conventions import D003_LINIO2_NM

        ps = float(self.config[self.subcommand].data.get("pixel_size"))
        config = getattr(self.model.net, "config", None)
        period = getattr(config, "fringe_period_px", 0.0) or 0.0
        if period > 0 and abs(period * ps / D003_LINIO2_NM - 1) > FRINGE_PERIOD_TOLERANCE:
            raise TrainConfigError(
                f"--data.pixel_size {ps:g}: the network's (003) fringe channels look for "
                f"{period:g} px fringes, {period * ps:.3g} nm at this pixel size, not "
                f"{D003_LINIO2_NM} nm; pass --model.net.init_args.config.fringe_period_px "
                f"{D003_LINIO2_NM / ps:.3g} (a new network) or the pixel size it was made for")
        start = self.config[self.subcommand].model.get("init_from")
        if start:
            # The module read the model already; where it could not (moved since the run
            # began), a restored checkpoint does not need it, a fresh start does.
            card = getattr(self.model, "init_from_card", None)
            if card is None:
                if not self._restores_checkpoint():
                    self.model.require_init_from()
                return
            canonical = float(card.get("canonical_pixel_size_nm", ps))
            if abs(canonical / ps - 1) > 0.01:
                raise TrainConfigError(
                    f"--model.init_from {start} works at {canonical:g} nm/px but --data.pixel_size "
                    f"is {ps:g}: pass --data.pixel_size {canonical:g} (its scale), or train a new "
                    "network at this one")

    def _restores_checkpoint(self) -> bool:
        """Whether this run will restore a checkpoint (``--ckpt_path`` that exists, or a
        SLURM-requeued job's), whose weights replace ``--model.init_from``'s."""
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt:
            return not missing_last_checkpoint(ckpt, getattr(self.trainer.checkpoint_callback,
                                                             "dirpath", None))
        from lightning.fabric.plugins.environments import SLURMEnvironment

        return (self.subcommand == "fit" and SLURMEnvironment.detect()
                and any(Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")))

    def before_fit(self) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        hpc = requeued_checkpoint(self.config[self.subcommand].get("ckpt_path"),
                                  self.trainer.default_root_dir,
                                  getattr(self.trainer.checkpoint_callback, "dirpath", None),
                                  slurm=SLURMEnvironment.detect())
        if hpc:  # what fit receives (config_init) and what the checks read (config)
            rank_zero_info("resuming from the checkpoint saved when SLURM signalled the time "
                           "limit (hpc_ckpt_N.ckpt), newer than last.ckpt")
            self.config_init[self.subcommand]["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = hpc
        self._check_weights_only()
        self._check_sizes()
        self._check_pixel_size()
        self._check_checkpoint()
        self._check_fresh_root()
        if missing_last_checkpoint(self.config[self.subcommand].get("ckpt_path"),
                                   getattr(self.trainer.checkpoint_callback, "dirpath", None)):
            # A first submission of a requeued job (README: SLURM); Lightning's own warning
            # (filtered in `train_main`) would advise a save_last the configs already have.
            fresh = f"--ckpt_path last: no last.ckpt yet under {self.trainer.checkpoint_callback.dirpath}, "
            if SLURMEnvironment.detect():
                rank_zero_info(fresh + "so training starts fresh")
            else:  # by hand, most likely a mistyped root: say it before a whole run goes
                rank_zero_warn(fresh + "so a new run starts from scratch (outside a SLURM job: "
                               "check --trainer.default_root_dir if you meant to resume one)")
        self._check_nodes()
        self._check_sync_batchnorm()
        self._check_outputs()
        for cb in self.trainer.callbacks:  # the model card records the command as typed
            if isinstance(cb, ExportModel):
                cb.command = self.command

    def before_validate(self) -> None:
        """Raises FileNotFoundError if ``--ckpt_path last`` finds no ``last.ckpt``."""
        self._check_weights_only()
        self._check_sizes()
        self._check_pixel_size()
        self._check_checkpoint()
        self._check_nodes()
        self._check_outputs()
        why = missing_last_checkpoint(self.config[self.subcommand].get("ckpt_path"),
                                      getattr(self.trainer.checkpoint_callback, "dirpath", None))
        if why:
            raise FileNotFoundError(why)

    before_test = before_validate

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (no ``predict``: the module has no prediction step)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}


def _nested_setting(message: str) -> str | None:
    """One line for a mistyped setting of a class given by ``class_path`` (the network's
    `UNetConfig`, say), with the nearest of its settings; None for other errors (jsonargparse
    nests the reason in a Union error of several hundred characters)."""
    import dataclasses
    import difflib
    import importlib

    bad = re.findall(r"Option '(\w+)' is not accepted", message)
    owner = re.findall(r"class_path '([\w.]+)'", message)
    if not bad or not owner:
        return None
    module, _, name = owner[-1].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    if not dataclasses.is_dataclass(cls):
        return None
    known = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(bad[-1], known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{name} has no setting {bad[-1]!r}: {hint}(its settings: {', '.join(known)})"


def _unknown_class(message: str) -> str | None:
    """One line for a mistyped ``class_path`` (a callback's in a user's YAML, say), with
    the nearest name its module has; None for other errors (jsonargparse nests the reason
    in a Union error of over a thousand characters)."""
    import difflib
    import importlib

    found = re.search(r"class_path '([\w.]+)':\s+module '([\w.]+)' has no attribute '(\w+)'", message)
    if not found:
        return None
    path, module, name = found.groups()
    key = re.search(r'Parser key "([\w.]+)"', message)
    try:
        names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except ImportError:
        names = []
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f": did you mean {module}.{close[0]}?" if close else ""
    return f"{key[1] + ': ' if key else ''}no class {name} in {module} (class_path {path}){hint}"


def _options(parser: LightningArgumentParser, args: Any) -> list[str]:
    """The option strings of the subcommand ``args`` names (all the parser's otherwise)."""
    subcommands = getattr(parser, "_subcommands_action", None)
    name = next((a for a in args or [] if not a.startswith("-")), None) if isinstance(args, list) else None
    sub = subcommands._name_parser_map.get(name, parser) if subcommands is not None else parser
    return [o for action in sub._actions for o in action.option_strings]


def _drop_tips(log: logging.Logger) -> None:
    """Leave out Lightning's advertising tips (once per logger)."""
    if not any(isinstance(f, _NoTips) for f in log.filters):
        log.addFilter(_NoTips())


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def export_main(argv: Sequence[str]) -> Path:
    """``dislotrack train export CKPT --out STEM``: a checkpoint written as a model.

    Returns the weights file written; raises ValueError or FileNotFoundError (one line).
    """
    parser = argparse.ArgumentParser(
        prog="dislotrack train export",
        description="Write a training checkpoint (.ckpt) as a model (.safetensors + .json card) "
                    "for infer, evaluate and finetune: e.g. an epoch's checkpoint, or the last "
                    "one of a run stopped before the end of fit (which exports by itself).")
    parser.add_argument("checkpoint", help="the .ckpt file, e.g. runs/cpu/checkpoints/last.ckpt")
    parser.add_argument("--out", required=True, help="model path stem, e.g. models/mine")
    parser.add_argument("--config", default=None,
                        help="the run's saved config.yaml: only for checkpoints written before "
                             "dislotrack 0.1.20, which do not record the architecture")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model at --out")
    args = parser.parse_args(argv)
    from dislotrack.models.io import model_paths

    weights, card = model_paths(args.out)
    if not args.overwrite and (weights.exists() or card.exists()):
        raise ValueError(f"--out {args.out}: {weights if weights.exists() else card} exists; "
                         "choose another --out or add --overwrite")
    written = export_checkpoint(args.checkpoint, args.out, config=args.config,
                                command=shlex.join(["dislotrack", "train", "export", *argv]),
                                overwrite=args.overwrite)
    stem = written.with_suffix("")
    print(f"model written to {written} / {card.name} (use: dislotrack infer --model {stem}; "
          f"{CALIBRATE_FIRST.format(stem)})")
    return written


def train_main(argv: Sequence[str] | None = None) -> None:
    """Run LightningCLI with dislotrack's module and data module."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # `dislotrack train` hands its own arguments on: not the mix the warning is about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    # Each worker of SyntheticStream yields its share, so its __len__ holds.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's use of a torch API
    warnings.filterwarnings("ignore", message=r".*\(ckpt_path=\"last\"\) is set, but there is no last")
    _drop_tips(logging.getLogger("lightning.pytorch.utilities.rank_zero"))
    typed = list(argv) if argv is not None else None
    argv = resolve_configs(argv) if argv is not None else None  # [] stays []: not sys.argv
    check_root_argument(sys.argv[1:] if argv is None else argv)
    check_config_first(sys.argv[1:] if argv is None else argv)
    # omegaconf+: the configs' ${trainer.default_root_dir} is resolved after the command
    # line, so --trainer.default_root_dir moves logs, checkpoints and export together.
    # Absolute keys are read relative to the subcommand (the config of `fit` is `fit.*`).
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    SaveConfigForRuns.created = []
    try:
        try:
            _run_cli(argv, typed)
        except ValueError as err:  # a logger's package missing: 60 lines of union subtypes
            if isinstance(err, TrainConfigError) or (missing := missing_package(err)) is None:
                raise
            raise TrainConfigError(missing) from None
    except (TrainConfigError, FileNotFoundError):
        remove_unrun_logs(SaveConfigForRuns.created)
        raise


def missing_package(err: BaseException) -> str | None:
    """One line for a class the config names whose package is not installed (e.g.
    ``--trainer.logger TensorBoardLogger`` without tensorboard), from the exceptions that
    caused ``err``; None where none is a missing module."""
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ModuleNotFoundError):
            first = str(cause).splitlines()[0]
            extra = ' (pip install -e ".[tensorboard]")' if "tensorboard" in first else ""
            return f"a class the config names needs a package that is not installed: {first}{extra}"
        cause = cause.__cause__ or cause.__context__
    return None


def _run_cli(argv: Sequence[str] | None, typed: Sequence[str] | None) -> None:
    DislotrackCLI(DislocationModule, SyntheticDataModule, args=argv, typed=typed,
                  save_config_callback=SaveConfigForRuns,
                  save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                  parser_kwargs={"prog": "dislotrack train", "parser_mode": "omegaconf+",
                                 "exit_on_error": False,  # `parse_arguments` says it in one line
                                 "allow_abbrev": False,  # --trainer.max_epoch is a typo, not max_epochs
                                 "description": "Train, validate or test the U-Net on synthetic "
                                                "data drawn on the fly (LightningCLI over the "
                                                "YAML configs in train/configs: cpu, gpu, "
                                                "cluster, ...). `dislotrack train export CKPT "
                                                "--out STEM` writes a checkpoint as a model."})
