"""Save and load trained networks: safetensors weights plus a JSON model card.

A model is two files with the same stem: ``<stem>.safetensors`` (the state dict,
no pickled code) and ``<stem>.json`` (the model card: architecture, input
recipe, output meanings, how it was trained and how well it did). The bundled
model is ``dislotrack/models/weights/default.*``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dislotrack.data_gen.version import package_version
from dislotrack.models.normalise import NORMALISATION
from dislotrack.models.unet import OUTPUTS, UNet, UNetConfig

#: Keys every model card must have.
REQUIRED_CARD_KEYS = (
    "architecture",
    "canonical_pixel_size_nm",
    "input_normalisation",
    "outputs",
    "generator",
    "training",
    "metrics",
    "dislotrack_version",
    "created",
)

#: Keys added by `load_model` (describe one file on disk, never saved in a card).
LOAD_TIME_KEYS = ("sha256", "model_id")

#: Stem of the bundled model inside the ``dislotrack.models`` package.
DEFAULT_MODEL = "weights/default.safetensors"

#: Attribute names under which a LightningModule may hold the network.
_CHECKPOINT_PREFIXES = ("net.", "model.")


class ModelFileError(ValueError):
    """A model's weights file or card exists but cannot be read as a model (truncated,
    corrupt, not JSON, or the weights of another architecture than the card's); the message
    names the file and what is wrong, in one line."""


def validate_card(card: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``card`` lacks a required key or has a bad value.

    Parameters
    ----------
    card : dict
        Model card, as written by `save_model`.
    """
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"model card lacks required keys {missing}")
    UNetConfig.from_dict(card["architecture"])
    size = card["canonical_pixel_size_nm"]
    if not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"canonical_pixel_size_nm must be a number > 0 [nm/px], got {size!r}")
    norm = card["input_normalisation"]
    if not isinstance(norm, dict) or "method" not in norm:
        raise ValueError(f"input_normalisation must be a dict with a 'method', got {norm!r}")


def save_model(model: UNet, path: str | Path, *, card: dict[str, Any]) -> None:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (model card).

    Parameters
    ----------
    model : UNet
        Network to save (on any device).
    path : str or Path
        ``<stem>``, ``<stem>.safetensors`` or ``<stem>.json``; parent folders are made.
    card : dict
        Must hold ``canonical_pixel_size_nm`` [nm/px], ``generator``, ``training`` and
        ``metrics`` (JSON-serialisable; numpy scalars and arrays are converted).
        ``architecture`` is taken from ``model.config`` (a different one in ``card``
        is an error); ``input_normalisation``, ``outputs``, ``dislotrack_version``
        and ``created`` are filled in unless given. Load-time keys (``sha256``,
        ``model_id``) are dropped.
    """
    weights, card_path = model_paths(path)
    full = _complete_card(model, card)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    # safetensors writes owner-only (0600): give the weights the card's permissions, so
    # that a lab can share a model folder.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)
    card_path.write_text(json.dumps(full, indent=2, default=_json_default) + "\n")


def bundled_models() -> list[str]:
    """Names of the models shipped in ``dislotrack/models/weights/``."""
    root = Path(str(importlib.resources.files("dislotrack.models").joinpath("weights")))
    return sorted(p.stem for p in root.glob("*.safetensors"))


def _bundled(name: str) -> Path | None:
    """The bundled model called ``name`` (a bare name, no folder or suffix), if any."""
    if Path(name).name != name or Path(name).suffix or name not in bundled_models():
        return None
    return Path(str(importlib.resources.files("dislotrack.models").joinpath("weights", name)))


def checkpoint_not_model(path: str | Path) -> str:
    """What to use instead of a Lightning training checkpoint where a model is wanted."""
    run = Path(path).resolve().parent.parent  # <run>/checkpoints/<name>.ckpt
    exported = run / "model.safetensors"
    use = (f"use the model its run exported ({exported.with_suffix('')})" if exported.is_file()
           else "use the model its run exported (<run folder>/model)")
    return (f"{path} is a Lightning training checkpoint, not a model: {use}, or export it: "
            f"dislotrack train export {path} --out <stem>")


def load_model(
    path: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Load a network and its model card.

    Parameters
    ----------
    path : str or Path, optional
        ``<stem>``, ``<stem>.safetensors`` or ``<stem>.json``; ``None`` loads the
        bundled model ``dislotrack/models/weights/default.safetensors``; a bare name
        that is no file here (e.g. ``"fine"``) loads that bundled model.
    device : str or torch.device, optional
        Where to put the network.

    Returns
    -------
    model : UNet
        In eval mode, on ``device``.
    card : dict
        The model card plus ``sha256`` (of the weights file) and ``model_id`` (its stem,
        `model_id`).

    Raises
    ------
    FileNotFoundError
        If the weights or the card are missing.
    ModelFileError
        A ValueError, naming the file and what is wrong, where either cannot be read as a
        model (`read_card`; weights empty, truncated, corrupt or of another architecture).
    """
    if path is None:
        path = Path(str(importlib.resources.files("dislotrack.models").joinpath(DEFAULT_MODEL)))
        if not path.is_file():
            raise FileNotFoundError(
                f"no bundled model at {path}; train one (dislotrack train) or pass a model path"
            )
    if str(path).endswith(".ckpt"):  # a training checkpoint, not a model: say where the model is
        raise ValueError(checkpoint_not_model(path))
    weights, card_path = model_paths(path)
    bundled = _bundled(str(path))
    if not weights.is_file() and bundled is not None:
        weights, card_path = model_paths(bundled)
    for p in (weights, card_path):
        if not p.is_file():
            inside = Path(path) / "model.safetensors"  # a training run's folder
            hint = f"did you mean {inside.with_suffix('')}? " if inside.is_file() else ""
            raise FileNotFoundError(
                f"model file {p} does not exist ({hint}a model is a <stem> with .safetensors and "
                f".json files, or a bundled name: {', '.join(bundled_models())})")
    card = read_card(card_path)
    try:
        model = UNet(UNetConfig.from_dict(card["architecture"]))
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. a hand-edited depth of -1
        raise ModelFileError(f"{card_path}: its architecture {card['architecture']} cannot be "
                             f"built ({err})") from None
    state = _read_weights(weights)
    _check_fit(state, model, weights, card_path)
    model.load_state_dict(state)
    card.update(sha256=file_sha256(weights), model_id=model_id(weights))
    return model.to(device).eval(), card


def model_id(weights: str | Path) -> str:
    """How reports name the model of ``weights``: its stem, or ``<folder>/model`` for the
    ``model`` that every training run exports into its own folder (``runs/cpu/model``:
    ``cpu/model``), which its stem alone would not tell apart."""
    weights = Path(weights)
    stem = weights.with_suffix("").name if weights.suffix == ".safetensors" else weights.name
    parent = weights.resolve().parent.name
    return f"{parent}/{stem}" if stem == "model" and parent else stem


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card ``path`` (``<stem>.json``), validated (`validate_card`).

    Raises
    ------
    ModelFileError
        Naming the file: not readable text, not JSON (with the line and column of the
        error), no JSON object, or no valid card.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Notepad saves
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{path} is not a model card: not a text file ({err.reason} at byte "
                             f"{err.start}); re-copy it from the model") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as err:
        where = "the file is empty" if not text.strip() else (
            f"{err.msg} at line {err.lineno} column {err.colno} (char {err.pos})")
        raise ModelFileError(f"{path} is not valid JSON ({where}): a model card is JSON; "
                             "fix it or re-copy it from the model") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{path} is not a model card: it holds a JSON {type(card).__name__}, "
                             "not an object of keys")
    try:
        validate_card(card)
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"{path}: {err}") from None
    return card


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; `ModelFileError` (one line, naming it) where
    it is empty, truncated or no safetensors file."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelFileError(f"{path} is not a readable model (an empty file): re-copy or "
                                 "re-export it")
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        what = str(err).removeprefix("Error while deserializing header: ")
        raise ModelFileError(f"{path} is not a readable model (truncated or corrupt: {what}; "
                             f"{size} bytes): re-copy or re-export it") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot be read ({err.strerror or err})") from None


def _check_fit(state: dict[str, torch.Tensor], model: UNet, weights: Path, card_path: Path) -> None:
    """`ModelFileError` (one line) where the tensors of ``weights`` do not fit ``model``,
    the network its card ``card_path`` describes: another architecture, or another model's
    card."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k}: {list(state[k].shape)} in the file, {list(v.shape)} by the card"
              for k, v in want.items() if k in state and state[k].shape != v.shape]
    if not (missing or extra or shapes):
        return
    found = [f"{len(shapes)} tensor(s) of another shape (e.g. {shapes[0]})" if shapes else "",
             f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else ""]
    raise ModelFileError(
        f"{weights} does not fit the architecture in {card_path.name} "
        f"({'; '.join(f for f in found if f)}): the weights and the card are of different "
        "models; re-copy both files of one model")


def load_lightning_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the network's state dict from a Lightning ``.ckpt`` file.

    The checkpoint is read with ``torch.load(..., weights_only=True)``, so it must
    hold only tensors and plain Python containers. Keys of the LightningModule's
    ``net`` attribute (or, failing that, ``model``) are returned without the prefix;
    other entries (losses, metrics) are dropped.

    Parameters
    ----------
    path : str or Path
        Lightning checkpoint.

    Returns
    -------
    dict of str to torch.Tensor
        State dict for `UNet.load_state_dict`.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers and cannot be "
            f"loaded with weights_only=True; save hyperparameters as plain types ({err})"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    state = ckpt["state_dict"]
    for prefix in _CHECKPOINT_PREFIXES:
        net = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if net:
            return net
    raise ValueError(
        f"{path}: no state-dict keys start with {_CHECKPOINT_PREFIXES}; "
        f"first keys are {list(state)[:5]}"
    )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem or either file name."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def refuse_existing_model(path: str | Path, *, overwrite: bool) -> None:
    """Raises FileExistsError where a model (either file) exists at ``path`` and
    ``overwrite`` is False: an earlier model, perhaps calibrated, is not replaced unasked."""
    if overwrite:
        return
    if found := [p for p in model_paths(path) if p.exists()]:
        raise FileExistsError(f"{found[0]} exists: choose another output or pass overwrite=True")


def _complete_card(model: UNet, card: dict[str, Any]) -> dict[str, Any]:
    """Card with the automatic keys filled in, validated."""
    arch = model.config.to_dict()
    if "architecture" in card and UNetConfig.from_dict(card["architecture"]).to_dict() != arch:
        raise ValueError(
            f"card architecture {card['architecture']} differs from the model's config {arch}"
        )
    full = {k: v for k, v in card.items() if k not in LOAD_TIME_KEYS}
    full["architecture"] = arch
    full.setdefault("input_normalisation", dict(NORMALISATION))
    full.setdefault("outputs", dict(OUTPUTS))
    full.setdefault("dislotrack_version", package_version())
    full.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    validate_card(full)
    return {k: full[k] for k in (*REQUIRED_CARD_KEYS, *sorted(set(full) - set(REQUIRED_CARD_KEYS)))}


def _json_default(obj: Any) -> Any:
    """JSON encoder fallback for numpy values and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"model card value {obj!r} ({type(obj).__name__}) is not JSON-serialisable")
