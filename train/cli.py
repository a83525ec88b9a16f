"""``dislotrack train``: LightningCLI (fit / validate / test) over YAML configs.

Examples
--------
    dislotrack train fit --config train/configs/cpu.yaml
    dislotrack train fit --config cpu        # the bundled config, from any folder
    dislotrack train fit --config train/configs/cpu.yaml --ckpt_path last
    dislotrack train test --config train/configs/cpu.yaml --ckpt_path last
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from dislotrack.train.datamodule import SyntheticDataModule
from dislotrack.train.module import DislocationModule


def config_path(name: str) -> str:
    """Path of a bundled config (``cpu``, ``gpu`` or ``cluster``)."""
    return str(files("dislotrack.train").joinpath("configs", f"{name}.yaml"))


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``--config X`` where X is not a file but names a bundled config (``cpu`` or
    ``train/configs/cpu.yaml`` outside the repository) -> that config's installed path."""
    out = list(argv)
    for i, arg in enumerate(out):
        key, eq, value = arg.partition("=")
        if key != "--config" or (not eq and i + 1 >= len(out)):
            continue
        value = value if eq else out[i + 1]
        bundled = Path(config_path(Path(value).stem))
        if not Path(value).exists() and bundled.is_file():
            if eq:
                out[i] = f"--config={bundled}"
            else:
                out[i + 1] = str(bundled)
    return out


def _option(argv: Sequence[str], name: str) -> str | None:
    """The last value given to ``--name`` (``--name V`` or ``--name=V``)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def check_last_checkpoint(argv: Sequence[str]) -> None:
    """``validate`` / ``test --ckpt_path last`` need the config's last.ckpt: Lightning
    would only log that there is none and score an untrained network.

    Raises
    ------
    FileNotFoundError
        If the config's checkpoint folder holds no ``last.ckpt``.
    """
    if not argv or argv[0] not in ("validate", "test") or _option(argv, "--ckpt_path") != "last":
        return
    config = _option(argv, "--config")
    if config is None or not Path(config).is_file():
        return
    callbacks = (yaml.safe_load(Path(config).read_text()) or {}).get("trainer", {}).get("callbacks") or []
    for cb in callbacks:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            folder = Path((cb.get("init_args") or {}).get("dirpath") or "")
            if str(folder) and not (folder / "last.ckpt").is_file():
                raise FileNotFoundError(
                    f"--ckpt_path last: no {folder / 'last.ckpt'} (relative to {Path.cwd()}); "
                    "train first, run from the folder training ran in, or pass a checkpoint file")


def train_main(argv: Sequence[str] | None = None) -> None:
    """Run LightningCLI with dislotrack's module and data module."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # `dislotrack train` hands its own arguments on: not the mix the warning is about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    argv = resolve_configs(argv) if argv else None
    if argv:
        check_last_checkpoint(argv)
    LightningCLI(DislocationModule, SyntheticDataModule, args=argv,
                 save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                 parser_kwargs={"prog": "dislotrack train"})
