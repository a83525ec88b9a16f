"""What evaluate knows of a model's fine-tuning: every round of it (a model fine-tuned
twice) and the frames a round held out of a movie; and damaged model files named in one
line by the commands that load them. Tiny models, 64 px images, a few crops."""

import json

import numpy as np
import pytest
import tifffile
import torch

from dislotrack.data_gen.export import generate_dataset
from dislotrack.infer.cli import main
from dislotrack.infer.evaluate import POOLED, evaluate_folders
from dislotrack.models.io import file_sha256, load_model, save_model
from dislotrack.models.unet import UNet, UNetConfig

#: finetune at its smallest: one epoch of four 32 px crops.
TINY_FINETUNE = ["--epochs", "1", "--size", "32", "--batch-size", "2", "--crops-per-epoch", "4",
                 "--accelerator", "cpu"]


def _tiny(path):
    torch.manual_seed(0)
    card = {"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {}, "metrics": {}}
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), path, card=card)


def _infer(movie, out, model, *extra):
    assert main(["infer", str(movie), "--out", str(out), "--model", str(model), "--no-movie",
                 "--min-length", "2", *extra]) == 0


def test_evaluate_knows_the_items_of_every_round_of_fine_tuning(tmp_path, capsys):
    generate_dataset(out=tmp_path / "first", n=3, size=64, mode="stem", seed=3, progress=False)
    generate_dataset(out=tmp_path / "second", n=2, size=64, mode="stem", seed=8, progress=False)
    _tiny(tmp_path / "base")
    assert main(["finetune", "--data", str(tmp_path / "first"), "--out", str(tmp_path / "m1"),
                 "--model", str(tmp_path / "base"), *TINY_FINETUNE]) == 0
    assert main(["finetune", "--data", str(tmp_path / "second"), "--out", str(tmp_path / "m2"),
                 "--model", str(tmp_path / "m1"), *TINY_FINETUNE]) == 0
    first = load_model(tmp_path / "m1")[1]["training"]["finetune"]
    trained = sorted(p.name for p in (tmp_path / "first").glob("image_*.tif")
                     if file_sha256(p) in first["train_items_sha256"])
    assert len(trained) == 2  # and one held out
    images = sorted((tmp_path / "first").glob("image_0000?.tif"))
    for image in images:
        _infer(image, tmp_path / "pred", tmp_path / "m2")
    summary = json.loads((tmp_path / "pred" / "image_00000" / "summary.json").read_text())
    tuned = summary["model"]["finetuned_on"]
    assert tuned["data"] == str((tmp_path / "second").resolve())  # the latest round first
    (earlier,) = tuned["earlier"]
    assert earlier["data"] == str((tmp_path / "first").resolve())
    assert earlier["train_items_sha256"] == first["train_items_sha256"]
    report = evaluate_folders(tmp_path / "pred", tmp_path / "first", figures=False, progress=False)
    flagged = sorted(f"{stem}.tif" for stem, r in report.items() if r.get("trained_on"))
    assert flagged == trained  # m1's items, learnt in the first round, are no test of m2
    assert "m2 was fine-tuned on this item" in report[trained[0].removesuffix(".tif")]["note"]
    # Copied elsewhere, the first round's images are still known by their content.
    import shutil

    copy = shutil.copytree(tmp_path / "first", tmp_path / "copy")
    report = evaluate_folders(tmp_path / "pred", copy, figures=False, progress=False)
    assert sorted(f"{stem}.tif" for stem, r in report.items() if r.get("trained_on")) == trained
    assert POOLED not in report  # one held-out item: nothing to pool


def test_evaluate_scores_the_frames_fine_tuning_held_out_of_a_movie_as_a_test(tmp_path):
    generate_dataset(out=tmp_path / "mov", n=1, size=64, mode="stem", movie_frames=5, seed=4,
                     progress=False)
    _tiny(tmp_path / "base")
    assert main(["finetune", "--data", str(tmp_path / "mov"), "--out", str(tmp_path / "mm"),
                 "--model", str(tmp_path / "base"), "--val-fraction", "0.4", *TINY_FINETUNE]) == 0
    tuned = load_model(tmp_path / "mm")[1]["training"]["finetune"]
    assert tuned["split"] == "frames" and tuned["val_frame_indices"] == {"movie_00000.json": [3, 4]}
    movie, pred = tmp_path / "mov" / "movie_00000.tif", tmp_path / "pred"
    for frames in ("3:4", "4:5", "3:5", "2:5"):
        _infer(movie, pred, tmp_path / "mm", "--frames", frames)
    _infer(movie, pred, tmp_path / "mm")
    summary = json.loads((pred / "movie_00000_frames3-5" / "summary.json").read_text())
    assert summary["model"]["finetuned_on"]["val_frame_indices"] == {"movie_00000.json": [3, 4]}
    report = evaluate_folders(pred, tmp_path / "mov", figures=False, progress=False)
    # The whole movie and a window reaching into the trained frames are no test.
    for name in ("movie_00000", "movie_00000_frames2-5"):
        assert report[name]["trained_on"] is True and "mm was fine-tuned on this item" in report[name]["note"]
    # Windows of held-out frames only are: no such note, and pooled.
    for name in ("movie_00000_frames3-4", "movie_00000_frames4-5", "movie_00000_frames3-5"):
        r = report[name]
        assert "trained_on" not in r and r["held_out"] is True
        assert "fine-tuned on this item" not in r["note"] and "were held out by mm's fine-tuning" in r["note"]
    # Each held-out core once: frames 3 and 4 pooled; frames 3-5 overlaps them and is not.
    assert "not pooled: it overlaps movie_00000_frames3-4, pooled already" in report[
        "movie_00000_frames3-5"]["note"]
    assert sum(report[f"movie_00000_frames{w}"]["tp"] + report[f"movie_00000_frames{w}"]["fn"]
               for w in ("3-4", "4-5")) == report[POOLED]["tp"] + report[POOLED]["fn"]
    assert report[POOLED]["tp"] + report[POOLED]["fn"] == (report["movie_00000_frames3-5"]["tp"]
                                                           + report["movie_00000_frames3-5"]["fn"])
    # The same annotations in a renamed folder: the held-out frames are known by content too.
    import shutil

    shutil.copytree(tmp_path / "mov", tmp_path / "elsewhere")
    report = evaluate_folders(pred, tmp_path / "elsewhere", figures=False, progress=False)
    assert report["movie_00000_frames3-5"].get("held_out") and report["movie_00000"]["trained_on"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "architecture"])
def test_finetune_infer_and_calibrate_name_a_damaged_model_in_one_line(tmp_path, capsys, damage):
    from dislotrack.train.calibrate import main as calibrate_main

    _tiny(tmp_path / "m")
    weights, card = tmp_path / "m.safetensors", tmp_path / "m.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:2000])
        said = f"{weights} is not a readable model (truncated or corrupt: "
    elif damage == "empty":
        weights.write_bytes(b"")
        said = f"{weights} is not a readable model (an empty file)"
    else:
        edited = json.loads(card.read_text())
        edited["architecture"]["base_channels"] = 6
        card.write_text(json.dumps(edited))
        said = f"{weights} does not fit the architecture in m.json ("
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((64, 64), np.float32))
    generate_dataset(out=tmp_path / "lab", n=2, size=64, mode="stem", seed=3, progress=False)
    for run, prog in (
            (lambda: main(["infer", str(tmp_path / "x.tif"), "--out", str(tmp_path / "r"),
                           "--model", str(tmp_path / "m"), "--pixel-size", "0.1"]), "dislotrack infer"),
            (lambda: main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "o"),
                           "--model", str(tmp_path / "m"), *TINY_FINETUNE]), "dislotrack finetune"),
            (lambda: calibrate_main([str(tmp_path / "m"), "--n", "1"]),
             "python -m dislotrack.train.calibrate")):
        capsys.readouterr()
        assert run() == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: error: {said}") or f"\n{prog}: error: {said}" in err, err
        assert "Traceback" not in err and err.rstrip("\n").count("\n") <= 1, err
