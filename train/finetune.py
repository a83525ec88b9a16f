"""``dislotrack finetune``: adapt a model to annotated lab data.

Annotations use the project's one format (`dislotrack.data_gen.annotations`).
Frames are resampled to the model's canonical pixel size; training draws random
crops (with the same augmentation as synthetic training), validation uses a
held-out fraction of the frames, whole.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger
from skimage.transform import rescale, resize
from torch.utils.data import DataLoader, Dataset

from dislotrack.data_gen.annotations import (
    IMAGE_SUFFIXES,
    annotation_image,
    find_annotations,
    positions_look_like_nm,
    read_annotation,
    units_checkable,
)
from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM, D003_LINIO2_NM
from dislotrack.data_gen.sample import Sample
from dislotrack.data_gen.text import first_few
from dislotrack.infer.lattice import fringes_twice_apart, measure_lattice
from dislotrack.infer.pipeline import UPSAMPLE_WARN
from dislotrack.models.io import file_sha256, load_model, model_paths, refuse_existing_model, save_model
from dislotrack.models.unet import required_multiple
from dislotrack.train.augment import build_transform
from dislotrack.train.data import sample_to_item
from dislotrack.train.module import DislocationModule
from dislotrack.train.progress import EpochLines, bar_is_seen

logger = logging.getLogger(__name__)


def is_mirror_view(frame: np.ndarray, pixel_size_nm: float) -> bool:
    """Whether infer shows ``frame``'s item to the network flipped: its lattice is the
    mirror image of the handedness the networks know
    (`dislotrack.infer.lattice.Lattice.is_mirror_view`)."""
    lattice = measure_lattice([frame], pixel_size_nm=pixel_size_nm, d_spacing_nm=D003_LINIO2_NM)
    return lattice is not None and lattice.is_mirror_view


def annotated_frames(folder: str | Path, canonical_nm: float) -> list[Sample]:
    """Every annotated frame of a folder as a `Sample` at the canonical pixel size; an
    item whose lattice is the mirror view (`is_mirror_view`) flipped left-right, as infer
    shows it to the network (``meta["mirrored"]``), so that fine-tuning teaches and scores
    the view infer uses."""
    out = []
    sides = find_annotations(folder)
    stems = {p.with_suffix("").name for p in sides}
    lone = sorted(p.name for p in Path(folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.stem not in stems and not (p.name.lower().endswith("_rs.tif")
                                                   and p.name[:-len("_rs.tif")] in stems))
    meant = [name for name in lone if (Path(folder) / f"{Path(name).stem}_cores.csv").exists()]
    if meant:  # annotated, but the sidecar is missing: refuse, not train without them
        raise ValueError(f"{folder}: no <stem>.json sidecar beside {first_few(meant, 5)}, which "
                         f"have a <stem>_cores.csv: write one for each (format "
                         f'"dislotrack-annotation", pixel_size_nm; README, annotation format)')
    if lone:  # a lab's image whose sidecar was forgotten would otherwise vanish unnoticed
        logger.warning("%s: %d image(s) without an annotation (<stem>.json) are not used: %s",
                       folder, len(lone), first_few(lone, 5))
    problems = []  # every unusable annotation, said at once: a lab fixes them in one pass
    doubled = []  # images whose pixel size looks twice the true one
    units = {}  # per item whose positions can be judged: do they look like nm?
    for side in sides:
        try:
            ann = read_annotation(side)
        except ValueError as err:
            problems.append(str(err))
            continue
        period_px = D003_LINIO2_NM / ann.pixel_size_nm
        if period_px <= 2:  # e.g. 5 for 0.05 nm/px: it would also upsample to gigabytes
            problems.append(
                f"{side}: pixel_size_nm {ann.pixel_size_nm:g} leaves the {D003_LINIO2_NM} nm (003) "
                f"fringes {period_px:.2g} px apart, under the 2 px that can show them: check the "
                "pixel size (nm per pixel)")
            continue
        if units_checkable(ann.cores, ann.pixel_size_nm):
            units[side.name] = positions_look_like_nm(ann)
        if fringes_twice_apart([ann.image[0]], pixel_size_nm=ann.pixel_size_nm,
                               d_spacing_nm=D003_LINIO2_NM):
            doubled.append(f"{annotation_image(side).name} ({ann.pixel_size_nm:g} nm/px)")
        s = ann.pixel_size_nm / canonical_nm
        mirror = is_mirror_view(ann.image[0], ann.pixel_size_nm)
        for f in range(ann.image.shape[0]):
            img = rescale(ann.image[f], s, order=1, anti_aliasing=s < 1, preserve_range=True)
            cores = ann.cores[ann.cores.frame == f]
            # The zoom rescale made (its size is rounded), per axis, as infer maps back with.
            zoom = np.array(img.shape[::-1], float) / ann.image[f].shape[::-1]
            xy = (cores[["x", "y"]].to_numpy(float) + 0.5) * zoom - 0.5
            table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "hx": cores.hx.to_numpy(float),
                                  "hy": cores.hy.to_numpy(float)})
            rs = (resize(ann.rs_mask[f], img.shape, order=0, anti_aliasing=False)
                  if ann.rs_mask is not None else np.zeros(img.shape, np.uint8))
            if mirror:  # as infer shows it to the network: flipped left-right (x, hx negated)
                img, rs = img[:, ::-1], rs[:, ::-1]
                table = table.assign(x=img.shape[1] - 1 - table.x, hx=-table.hx)
            # Without a mask the lab did not annotate rock salt: its loss is skipped (zeros
            # would teach the network that there is none anywhere).
            out.append(Sample(img.astype(np.float32), table, rs.astype(np.uint8),
                              {"pixel_size": canonical_nm, "mode": "lab", "mirrored": mirror,
                               "item_pixel_size_nm": ann.pixel_size_nm,
                               "detector": {"dose": np.nan}, "source": side.name, "frame": f,
                               "rs_annotated": ann.rs_mask is not None}))
    said = [f"{len(problems)} of {len(sides)} annotations cannot be used: "
            + first_few(problems, sep="; ")] if problems else []
    if len(units) >= 2 and all(units.values()):
        # Each warned of already; all of them alike is no coincidence of a few cores near
        # a corner: the model would learn the wrong places.
        said.append(
            f"{folder}: the core positions of all {len(units)} items whose units can be judged "
            f"({first_few(sorted(units), 5)}) lie within the image's size in nm: positions must be "
            "in pixels (x / pixel_size_nm, y / pixel_size_nm), from the centre of the top-left "
            "pixel (README, annotation format)")
    if said:
        raise ValueError("; ".join(said))
    if not out:
        raise FileNotFoundError(f"no annotations (<stem>.json sidecars) in {folder}")
    if doubled:
        logger.warning(
            "lattice fringes %.3g nm apart, twice the %g nm (003) spacing, stand out in %s at the "
            "annotated pixel size: pixel_size_nm in their <stem>.json is probably twice the true "
            "one (a 2x-binned acquisition's pixel size given to an unbinned image, or an image "
            "upsampled 2x?), and the model would train at the wrong scale; check it, unless "
            "the material has such a long period", 2 * D003_LINIO2_NM, D003_LINIO2_NM,
            first_few(doubled, 5))
    return out


def defined_scores(metrics: dict[str, float], n_true: int) -> dict[str, float]:
    """The validation scores that are defined for lab data, plus ``val/true_cores``.

    The training module logs F1 0 where there are no true cores (a placeholder here) and
    NaN for the other scores where undefined, and splits scores by imaging mode,
    which lab frames do not have: those are left out.

    Parameters
    ----------
    metrics : dict
        Lightning's ``callback_metrics`` as floats (``val/tp``: matched cores, ``val/fp``:
        false ones).
    n_true : int
        Annotated cores in the validation frames.

    Returns
    -------
    dict
        The defined scores and ``val/true_cores``.
    """
    undefined = set()
    if n_true == 0:
        undefined |= {"val/f1", "val/precision", "val/recall", "val/rmse_nm", "val/h_accuracy",
                      "val/tp"}
    elif metrics.get("val/tp", 1) == 0:
        undefined |= {"val/rmse_nm", "val/h_accuracy"}
        if metrics.get("val/fp", 1) == 0:  # nothing found: precision is 0 / 0
            undefined.add("val/precision")
    out = {k: v for k, v in metrics.items() if k not in undefined and np.isfinite(v)
           and not k.startswith(("val/hrtem/", "val/stem/", "val/dose_"))}
    if n_true and "val/tp" in out:  # evaluate's missed cores, beside tp and fp
        out["val/fn"] = n_true - out["val/tp"]
    return {**out, "val/true_cores": n_true}


def worse_than_base(metrics: dict[str, float], before: dict[str, float]) -> str | None:
    """A warning where the fine-tuned model's held-out F1 (``metrics``) falls below the
    base model's (``before``, both `defined_scores`), else None (also where either is
    undefined)."""
    if not metrics.get("val/f1", np.inf) < before.get("val/f1", -np.inf):
        return None
    return (f"the fine-tuned model scores below the base model on the held-out frames (F1 "
            f"{metrics['val/f1']:.3g}, base {before['val/f1']:.3g}); it is written all the same "
            "(the last epoch's weights): fewer --epochs or a lower --lr may do better, and the "
            "base model may suit such images better")


#: The base model's **h** agrees with the annotated h at fewer than this fraction of at
#: least `REVERSED_H_MIN_CORES` held-out cores: the annotations' h is probably reversed
#: (the bundled model gets 0.9-1.0 of them right on generated images; reversed, 0-0.1).
REVERSED_H_ACCURACY, REVERSED_H_MIN_CORES = 0.2, 5


def reversed_h_warning(before: dict) -> str | None:
    """A warning where the base model's held-out **h** accuracy (``before``: its logged
    validation metrics) says the annotated h points the other way, else None."""
    acc, tp = float(before.get("val/h_accuracy", np.nan)), float(before.get("val/tp", 0))
    if not (tp >= REVERSED_H_MIN_CORES and acc < REVERSED_H_ACCURACY):
        return None
    return (f"the base model's h agrees with the annotated h at only {acc:.0%} of the {tp:.0f} "
            "held-out cores it finds: is h annotated reversed? h points into the extra "
            "half-plane (README, Conventions); trained on reversed h, the model reverses every "
            "climb and glide sign")


def _scores(logged: dict, n_true: int) -> dict[str, float]:
    """`defined_scores` of logged validation metrics (an RS IoU where neither masks nor
    predictions hold rock salt is logged as NaN, undefined: left out)."""
    return defined_scores({k: float(v) for k, v in logged.items()}, n_true)


def upsampled_items(frames: list[Sample], canonical_nm: float) -> str | None:
    """A warning where items are much coarser than the model's grid (upsampled more
    than infer's `UPSAMPLE_WARN`, which adds no detail), as infer warns of its input;
    else None."""
    coarse = sorted({f"{f.meta['source']} ({f.meta['item_pixel_size_nm']:g} nm/px)" for f in frames
                     if f.meta.get("item_pixel_size_nm", canonical_nm) / canonical_nm > UPSAMPLE_WARN})
    if not coarse:
        return None
    better = (f"; the bundled default model ({CANONICAL_PIXEL_SIZE_NM:g} nm/px, --model default) "
              "suits them better" if canonical_nm < CANONICAL_PIXEL_SIZE_NM else "")
    return (f"the model works at {canonical_nm:g} nm/px, finer than {len(coarse)} item(s): "
            f"{first_few(coarse, 5)}: they are upsampled, which adds no detail{better}")


def describe_split(train: list[Sample], val: list[Sample], split: str, data: str | Path) -> str:
    """One line: what finetune read from ``data`` and how it split it.

    Parameters
    ----------
    train, val : list of Sample
        The frames of each side (`split_frames`); ``meta["source"]`` names the item.
    split : {"items", "frames"}
        How validation was held out.
    data : str or Path
        The annotation folder (named in the line).

    Returns
    -------
    str
        E.g. ``lab: training on 2 item(s), 2 frame(s), 5 core(s); validating on ...``.
    """

    def part(frames: list[Sample]) -> str:
        items = len({f.meta["source"] for f in frames})
        cores = sum(len(f.cores) for f in frames)
        return f"{items} item(s), {len(frames)} frame(s), {cores} core(s)"

    line = f"{data}: training on {part(train)}"
    held = sorted({str(f.meta["source"]) for f in val})
    line += (f"; validating on {part(val)} (held out by {split}: {first_few(held, 5)})" if val
             else "; no validation")
    sources = {f.meta["source"]: f.meta.get("rs_annotated", True) for f in [*train, *val]}
    if not all(sources.values()):  # say so: no rock-salt loss or score for those items
        line += (f"; rock salt annotated in {sum(sources.values())} of {len(sources)} item(s) "
                 "(no <stem>_rs.tif: not trained or scored there)")
    mirrored = sorted({str(f.meta["source"]) for f in [*train, *val] if f.meta.get("mirrored")})
    if mirrored:
        line += (f"; {len(mirrored)} item(s) seen from the crystal's other side, flipped left-right "
                 f"as infer shows them to the network: {first_few(mirrored, 5)}")
    return line


def split_frames(frames: list[Sample], val_fraction: float,
                 rng: np.random.Generator) -> tuple[list[Sample], list[Sample], str]:
    """Training and validation frames, and how they were split ("items" or "frames").

    With two or more annotated items (``meta["source"]``), whole items are held out
    (as close to ``val_fraction`` of the frames as whole items allow, taken in random
    order; at least one item, and at least one left to train): neighbouring frames of one
    movie are nearly the same image, so splitting them would score the model on what it
    trained on. With one item (a movie), its last frames are held out, one block, so
    that only the frame at the block's edge has a near twin in training (scores still
    somewhat optimistic). At least one frame always trains.
    """
    sizes = Counter(f.meta.get("source") for f in frames)  # frames per item
    items = sorted(sizes, key=str)
    want = val_fraction * len(frames)
    if len(items) >= 2 and want > 0:
        held: set = set()
        n = 0
        for i in rng.permutation(len(items)):  # in random order, each item that comes closer
            if len(held) == len(items) - 1:
                break
            if abs(n + sizes[items[i]] - want) < abs(n - want):
                held.add(items[i])
                n += sizes[items[i]]
        if not held:  # every item alone overshoots by more than it holds out: the smallest
            held.add(min(items, key=lambda it: (sizes[it], str(it))))
        return ([f for f in frames if f.meta.get("source") not in held],
                [f for f in frames if f.meta.get("source") in held], "items")
    n_val = min(int(round(want)), len(frames) - 1)
    order = sorted(range(len(frames)), key=lambda i: frames[i].meta.get("frame", i))
    cut = len(frames) - n_val
    return [frames[i] for i in order[:cut]], [frames[i] for i in order[cut:]], "frames"


def held_out_frames(val: list[Sample]) -> dict[str, list[int]]:
    """Per annotated item (``meta["source"]``), the frames (numbered from 0) of ``val``:
    where one item's frames were split, the model card says which were held out, so that
    they alone can be scored."""
    out: dict[str, list[int]] = {}
    for f in val:
        out.setdefault(str(f.meta["source"]), []).append(int(f.meta["frame"]))
    return {k: sorted(v) for k, v in out.items()}


def _crop(s: Sample, size: int | tuple[int, int], rng: np.random.Generator) -> Sample:
    """A ``size`` x ``size`` (or (rows, columns)) crop of ``s`` at a random place, with
    the cores inside it."""
    h, w = s.image.shape
    sy, sx = (size, size) if isinstance(size, (int, np.integer)) else size
    if h < sy or w < sx:
        raise ValueError(f"annotated frame {h}x{w} px is smaller than the crop "
                         f"{sy if sy == sx else f'{sy}x{sx}'} px")
    y0, x0 = int(rng.integers(0, h - sy + 1)), int(rng.integers(0, w - sx + 1))
    c = s.cores.assign(x=s.cores.x - x0, y=s.cores.y - y0)
    c = c[(c.x >= -0.5) & (c.x < sx - 0.5) & (c.y >= -0.5) & (c.y < sy - 0.5)]
    return Sample(s.image[y0:y0 + sy, x0:x0 + sx], c,
                  s.rs_mask[y0:y0 + sy, x0:x0 + sx], s.meta)


class CropDataset(Dataset):
    """Random augmented crops of annotated frames; ``length`` crops per epoch."""

    def __init__(self, frames: list[Sample], *, size: int, length: int, seed: int = 0):
        self.frames, self.size, self.length, self.seed = frames, size, length, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        s = _crop(self.frames[int(rng.integers(len(self.frames)))], self.size, rng)
        return sample_to_item(s, transform=build_transform(seed=int(rng.integers(2**31))))


class _NewCropsEachEpoch(L.Callback):
    """Tell the (in-process) crop dataset which epoch it is, so crops differ per epoch."""

    def __init__(self, ds: CropDataset) -> None:
        self.ds = ds

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ds.epoch = trainer.current_epoch


class WholeFrames(Dataset):
    """Validation frames, each cropped by under ``multiple`` px per side to a multiple of
    the network stride (not to a square: every core but those few px is scored; batch
    size 1, so frames of different shapes need no padding)."""

    def __init__(self, frames: list[Sample], multiple: int):
        self.frames, self.m = frames, multiple

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        s = self.frames[i]
        h, w = (np.array(s.image.shape) // self.m) * self.m
        return sample_to_item(_crop(s, (int(h), int(w)), np.random.default_rng(i)))


class _EpochBar(TQDMProgressBar):
    """One bar for training; validation (a few whole frames) runs without its own."""

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)


#: The training settings fine-tuning takes over from the base model's card.
LOSS_WEIGHTS = ("weight_decay", "w_heatmap", "w_h", "w_rs")


def base_loss_weights(card: dict) -> dict[str, float]:
    """The loss weights (and weight decay) the base model was trained with, from its
    card's ``training`` record (a fine-tuned card's: those its fine-tuning used, or, for a
    card fine-tuned before 0.1.26, which records none, its own base's), so that
    fine-tuning keeps the balance of heatmap, h and rock-salt losses (``fine`` weights the
    heatmap 4x); settings a card does not record keep `DislocationModule`'s defaults."""
    return _recorded_weights(card.get("training"))


def _recorded_weights(training: object) -> dict[str, float]:
    if not isinstance(training, dict):
        return {}
    if isinstance(training.get("finetune"), dict):  # a fine-tuned model: its run, else its base's
        used = training["finetune"].get("loss_weights")
        return _recorded_weights({"module": used}) if used else _recorded_weights(training.get("base"))
    module = training.get("module") or {}
    return {k: float(module[k]) for k in LOSS_WEIGHTS
            if isinstance(module.get(k), int | float) and not isinstance(module.get(k), bool)}


def _name_base_row(path: Path) -> None:
    """Add a ``model`` column to finetune's metrics.csv: ``base`` on its first row (the
    base model scored on the held-out frames before training, which Lightning logs as
    epoch 0 like the first trained epoch), ``fine-tuned`` on the others; and ``val/fn``
    (annotated cores missed) beside ``val/tp`` and ``val/fp``, as the card and the printed
    table have it, where cores were annotated."""
    if not path.is_file():
        return
    table = pd.read_csv(path)
    if len(table) and "model" not in table:
        table.insert(0, "model", ["base"] + ["fine-tuned"] * (len(table) - 1))
    if {"val/tp", "val/true_cores"} <= set(table) and "val/fn" not in table:
        fn = (table["val/true_cores"] - table["val/tp"]).where(table["val/true_cores"] > 0)
        table.insert(table.columns.get_loc("val/fp") + 1 if "val/fp" in table else len(table.columns),
                     "val/fn", fn)
    table.to_csv(path, index=False)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's setup chatter (tips, accelerator lines) off; its progress bar stays."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # Lightning's own use of a deprecated torch API
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            # No validation is finetune's choice (one frame), announced by describe_split.
            warnings.filterwarnings("ignore", message=".*validation_step.*no `val_dataloader`.*")
            # --overwrite replaces an earlier run's logs by choice (the CLI asked for it).
            warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def finetune(*, data: str | Path, out: str | Path, model: str | Path | None = None, epochs: int = 10,
             lr: float = 5e-4, size: int = 128, batch_size: int = 8, crops_per_epoch: int = 256,
             val_fraction: float = 0.2, seed: int = 0, accelerator: str = "auto",
             precision: str = "32-true", verbose: bool = False, command: str = "",
             overwrite: bool = False) -> dict:
    """Fine-tune ``model`` (default: bundled) on ``data``; write ``out`` (.safetensors + .json).

    ``precision`` is Lightning's (``32-true``; ``bf16-mixed`` trains about twice as fast
    on CPUs with AMX, README › Training); the saved weights are float32 either way.

    With ``verbose``, prints what was read (items, frames, cores) and how it was split.
    ``command`` (the command line, if run from one) goes into the model card with the
    settings, the held-out items and the base model's sha256. Returns the validation
    metrics of the final model. A model that exists at ``out`` is replaced only with
    ``overwrite`` (else FileExistsError, before anything is read).
    """
    t0 = time.time()
    refuse_existing_model(out, overwrite=overwrite)
    for name, value in (("epochs", epochs), ("size", size), ("batch_size", batch_size),
                        ("crops_per_epoch", crops_per_epoch)):
        if value < 1:  # Lightning reads max_epochs=-1 as "forever", 0 as "copy the base model"
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1) (some frames must train), got {val_fraction}")
    if not (np.isfinite(lr) and lr > 0):  # before the data are read
        raise ValueError(f"lr (--lr) must be a finite number > 0, got {lr}")
    net, card = load_model(model)
    canonical = float(card["canonical_pixel_size_nm"])
    frames = annotated_frames(data, canonical)
    multiple = required_multiple(net.config)
    if size % multiple:
        raise ValueError(f"size (--size) must be a multiple of {multiple} px (the network's "
                         f"stride), got {size}")
    if batch_size == 1 and net.config.norm in ("batch", "instance") and size // 2**net.config.depth <= 1:
        raise ValueError(f"size (--size) {size} with batch_size (--batch-size) 1: the network's "
                         f"{net.config.norm} norm has one value per channel at its 1 x 1 px "
                         f"bottleneck; use --size {2 * multiple} or more, or --batch-size 2")
    if coarse := upsampled_items(frames, canonical):
        logger.warning(coarse)
    train, val, split = split_frames(frames, val_fraction, np.random.default_rng(seed))
    small = [f for f in train if min(f.image.shape) < size]
    if small:
        f = min(small, key=lambda f: min(f.image.shape))
        fits = (min(f.image.shape) // multiple) * multiple
        sizes = {f"{g.meta['source']} ({g.image.shape[1]}x{g.image.shape[0]} px)": None for g in small}
        raise ValueError(
            f"frames smaller than the training crop {size} px at the model's {canonical:g} nm/px: "
            f"{first_few(list(sizes), 5)}; "
            + (f"use --size {fits} or less" if fits >= multiple else
               f"{f.meta['source']} is too small to train on"))
    if verbose:
        print(describe_split(train, val, split, data))
    held_fraction = len(val) / len(frames)
    if val_fraction > 0 and split == "items" and not 0.5 * val_fraction <= held_fraction <= 2 * val_fraction:
        logger.warning("validation holds %.0f %% of the frames (asked: %.0f %%): whole items are held "
                       "out, and their sizes allow no closer split", 100 * held_fraction,
                       100 * val_fraction)
    if not sum(len(f.cores) for f in train):
        logger.warning("the training frames hold no annotated cores: the model learns only "
                       "where there are none")
    # Infer's threshold, so that validation scores what infer will find with this model.
    threshold = float(card.get("decode_threshold", 0.5))
    weights = base_loss_weights(card)  # the base model's balance of its three losses
    module = DislocationModule(net.train(), lr=lr, threshold=threshold, **weights)
    crops = CropDataset(train, size=size, length=crops_per_epoch, seed=seed)
    loaders = [DataLoader(crops, batch_size=batch_size, shuffle=False)]
    if val:
        loaders.append(DataLoader(WholeFrames(val, multiple), batch_size=1))
    with _quiet_lightning():
        # Per-epoch scores beside the model, to see whether later epochs overfit.
        stem = model_paths(out)[0].with_suffix("")  # --out mine or mine.safetensors: mine_logs
        csv = CSVLogger(save_dir=str(stem.parent), name=f"{stem.name}_logs", version="")
        trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=csv,
                            precision=precision,
                            # every epoch's loss even when an epoch is a few batches
                            log_every_n_steps=max(1, min(50, -(-crops_per_epoch // batch_size))),
                            enable_checkpointing=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[_EpochBar() if bar_is_seen() else EpochLines(),
                                       _NewCropsEachEpoch(crops)],
                            default_root_dir=str(Path(out).parent),
                            limit_val_batches=1.0 if val else 0)
        # The base model on the same held-out frames: did fine-tuning help?
        before = trainer.validate(module, loaders[1], verbose=False)[0] if val else {}
        if reversed_h := reversed_h_warning(before):  # before training on it
            logger.warning(reversed_h)
        trainer.fit(module, *loaders)
    if val:
        _name_base_row(Path(csv.log_dir) / "metrics.csv")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if val:
        n_true = sum(len(f.cores) for f in val)
        if n_true == 0:
            logger.warning("the validation frames hold no annotated cores: no core scores")
        metrics, before = (_scores(m, n_true) for m in (metrics, before))
        if worse := worse_than_base(metrics, before):
            logger.warning(worse)
    base_sha = card.get("sha256")
    # This run's version and date (save_model fills them in), not the base model's.
    card = {k: v for k, v in card.items()
            if k not in ("sha256", "model_id", "dislotrack_version", "created")}
    # The card's `generator` block is the base model's synthetic data, not these.
    card["training_data"] = (f"fine-tuned on the lab annotations in {Path(data).resolve()} "
                             "(training.finetune); generator: the base model's synthetic data")
    card["training"] = {"base": card.get("training"), "finetune": {
        "command": command, "data": str(Path(data).resolve()), "epochs": epochs, "lr": lr,
        "size": size, "batch_size": batch_size, "crops_per_epoch": crops_per_epoch,
        "val_fraction": val_fraction, "seed": seed, "accelerator": accelerator,
        "precision": precision, "loss_weights": weights,
        "wall_time_s": time.time() - t0, "frames": len(frames), "train_frames": len(train),
        "val_frames": len(val), "split": split if val else None,
        "val_items": sorted({str(f.meta["source"]) for f in val}),
        # by name, so that evaluate tells an image added to the folder later from these
        "train_items": sorted({str(f.meta["source"]) for f in train}),
        # trained and scored flipped, as infer shows them (`is_mirror_view`)
        "mirrored_items": sorted({str(f.meta["source"]) for f in frames if f.meta.get("mirrored")}),
        "val_frame_indices": held_out_frames(val) if val and split == "frames" else None,
        # evaluate knows the trained-on images by content too, in copied or renamed folders
        "train_items_sha256": sorted({file_sha256(annotation_image(Path(data) / f.meta["source"]))
                                      for f in train}),
        "base_model": str(model or "bundled default"), "base_sha256": base_sha,
        # infer's threshold: the base model's, not calibrated on these annotations
        "decode_threshold_from_base": card.get("decode_threshold")}}
    # Without held-out frames the last scores are training losses: named so.
    card["metrics"] = {"finetune_validation" if val else "finetune_training": metrics,
                       "base_on_finetune_validation": before,
                       "validation_threshold": threshold, "base": card.get("metrics")}
    save_model(module.net.cpu().eval(), out, card=card)
    return metrics


