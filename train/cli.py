"""``dislotrack train``: LightningCLI (fit / validate / test) over YAML configs.

Examples
--------
    dislotrack train fit --config train/configs/cpu.yaml
    dislotrack train fit --config train/configs/cpu.yaml --ckpt_path last
    dislotrack train test --config train/configs/cpu.yaml --ckpt_path last
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.resources import files

from lightning.pytorch.cli import LightningCLI

from dislotrack.train.datamodule import SyntheticDataModule
from dislotrack.train.module import DislocationModule


def config_path(name: str) -> str:
    """Path of a bundled config (``cpu``, ``gpu`` or ``cluster``)."""
    return str(files("dislotrack.train").joinpath("configs", f"{name}.yaml"))


def train_main(argv: Sequence[str] | None = None) -> None:
    """Run LightningCLI with dislotrack's module and data module."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    LightningCLI(DislocationModule, SyntheticDataModule, args=list(argv) if argv else None,
                 save_config_kwargs={"overwrite": True}, seed_everything_default=0)
