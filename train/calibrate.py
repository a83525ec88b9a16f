"""Choose the decoding threshold of a trained model on the validation set.

    python -m dislotrack.train.calibrate models/weights/default [--n 200]

The highest heatmap threshold whose core F1 on the fixed validation set (the same
seed and settings as training's validation, never the test set) is within
``--tolerance`` (0.005) of the best is written into the model card as
``decode_threshold``; infer and evaluate use it. Validation F1 is often flat over a
few thresholds while false cores on real lattices, which the synthetic set does not
show, fall steeply with the threshold: the tolerance takes the precise end of the
plateau.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dislotrack.data_gen.sample import GeneratorConfig
from dislotrack.models.decode import decode_cores, outputs_to_maps, with_direction
from dislotrack.models.io import checkpoint_not_model, load_model, model_paths, save_model
from dislotrack.models.metrics import DetectionTally
from dislotrack.models.unet import prepare_for_inference
from dislotrack.train.data import FixedSynthetic, cores_from_batch
from dislotrack.train.datamodule import EVAL_DOSES

THRESHOLDS = np.round(np.arange(0.15, 0.8, 0.05), 2)


def threshold_scores(net, ds: FixedSynthetic, thresholds=THRESHOLDS) -> dict[float, dict]:
    """Detection metrics of every threshold on a dataset."""
    tallies = {float(t): DetectionTally() for t in thresholds}
    fast = prepare_for_inference(net)
    for i in range(len(ds)):
        item = ds[i]
        with torch.inference_mode():
            maps = outputs_to_maps(fast(item["image"][None]))
        truth = cores_from_batch(item["cores"][None])[0]
        for t, tally in tallies.items():
            p = with_direction(decode_cores(maps["heatmap"][0], maps["hfield"][0], threshold=t))
            tally.add(p[["x", "y"]].to_numpy(), p[["hx", "hy"]].to_numpy(),
                      truth[["x", "y"]].to_numpy(), truth[["hx", "hy"]].to_numpy(),
                      pixel_size=float(item["pixel_size"]))
    return {t: tally.summary() for t, tally in tallies.items()}


def choose_threshold(scores: dict[float, dict], tolerance: float = 0.005) -> float:
    """The highest threshold whose F1 is within ``tolerance`` of the best F1.

    Parameters
    ----------
    scores : dict
        Threshold -> metrics with an ``"f1"`` entry (NaN counts as 0).
    tolerance : float
        Allowed F1 loss against the best threshold.

    Examples
    --------
    >>> choose_threshold({0.3: {"f1": 0.58}, 0.35: {"f1": 0.607}, 0.45: {"f1": 0.605},
    ...                   0.5: {"f1": 0.594}})
    0.45
    """
    f1 = {t: float(np.nan_to_num(s["f1"])) for t, s in scores.items()}
    best = max(f1.values())
    return max(t for t, v in f1.items() if v >= best - tolerance)


def _defined(value: float) -> float | None:
    """NaN (undefined, e.g. precision where nothing was found) as None, for strict JSON."""
    return None if isinstance(value, float) and np.isnan(value) else value


def calibrate(model: str, *, n: int = 200, tolerance: float = 0.005) -> dict:
    """Write the chosen ``decode_threshold`` into the card of the model at ``model`` (a
    path stem: the card is rewritten in place) and return its validation scores.

    Raises
    ------
    ValueError
        If ``model`` is no model file (a bundled name is refused: its card is part of the
        installed package) or no threshold finds a true core (an untrained model, or a
        card whose generator settings are not the training's); the card is then unchanged.
    """
    if str(model).endswith(".ckpt"):
        raise ValueError(checkpoint_not_model(model))
    if not model_paths(model)[0].is_file():
        inside = Path(model) / "model.safetensors"
        hint = (f"did you mean {inside.with_suffix('')}?" if inside.is_file() else
                "a bundled model's card is part of the installed package: calibrate a copy"
                if str(model) in ("default", "fine") else
                "give the path of the model whose card to calibrate, e.g. runs/cpu/model")
        raise ValueError(f"{model}: no {model_paths(model)[0]}; {hint}")
    net, card = load_model(model)
    gen = card.get("generator", {})
    cfg = GeneratorConfig(size=int(gen.get("eval_size", 128)),
                          pixel_size=float(card["canonical_pixel_size_nm"]),
                          mode=gen.get("mode", "mixed"), density=float(gen.get("density", 1.5)),
                          dipole_fraction=float(gen.get("dipole_fraction", 0.35)),
                          perfect_fraction=float(gen.get("perfect_fraction", 0.1)))
    ds = FixedSynthetic(cfg, n=n, seed=int(gen.get("val_seed", 12345)), doses=EVAL_DOSES)
    scores = threshold_scores(net, ds)
    if not any(s["tp"] for s in scores.values()):
        raise ValueError(f"{model}: no threshold from {THRESHOLDS[0]} to {THRESHOLDS[-1]} finds a true "
                         f"core in the {n} validation images (an untrained model?); card left as it was")
    best = choose_threshold(scores, tolerance)
    card = {k: v for k, v in card.items() if k not in ("sha256", "model_id")}
    card["decode_threshold"] = best
    card.setdefault("metrics", {})["threshold_calibration"] = {
        "n_val": n, "f1_by_threshold": {str(t): _defined(s["f1"]) for t, s in scores.items()}}
    save_model(net, model, card=card)
    return {"decode_threshold": best, **{k: _defined(v if k in ("tp", "fp", "fn") else float(v))
                                          for k, v in scores[best].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dislotrack.train.calibrate",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model path <stem> (its card is rewritten), e.g. a fine-tuned "
                                  "model, which keeps its base model's threshold until calibrated")
    ap.add_argument("--n", type=int, default=200,
                    help="synthetic validation images to calibrate on (default %(default)s)")
    ap.add_argument("--tolerance", type=float, default=0.005,
                    help="F1 the threshold may give up for precision (see module doc; default "
                         "%(default)s)")
    args = ap.parse_args(argv)
    try:
        result = calibrate(args.model, n=args.n, tolerance=args.tolerance)
    except (ValueError, OSError) as err:
        print(f"{ap.prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
