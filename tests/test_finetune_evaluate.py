"""finetune on annotated data and evaluate against annotations, on tiny inputs."""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dislotrack.data_gen.annotations import (
    UNKNOWN_PARTICLE,
    Annotation,
    find_annotations,
    read_annotation,
    write_annotation,
    write_imagej_tiff,
)
from dislotrack.data_gen.export import generate_dataset
from dislotrack.data_gen.version import package_version
from dislotrack.infer.cli import main
from dislotrack.infer.evaluate import (
    core_outcomes,
    detection_scores,
    evaluate_folders,
    event_scores,
    match_events,
    report_text,
)
from dislotrack.infer.figures import evaluation_figure
from dislotrack.models.io import file_sha256, load_model, save_model
from dislotrack.models.unet import UNet, UNetConfig
from dislotrack.train.module import DislocationModule


def _tiny(path, **card_keys):
    torch.manual_seed(0)
    card = {"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {}, "metrics": {}, **card_keys}
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), path, card=card)


def test_finetune_writes_a_loadable_model_with_its_recipe(tmp_path, capfd):
    generate_dataset(out=tmp_path / "lab", n=3, size=64, mode="stem", seed=3, progress=False)
    _tiny(tmp_path / "base", decode_threshold=0.3)
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "4", "--accelerator", "cpu"]) == 0
    out, err = capfd.readouterr()
    assert "model written to" in out and "val/true_cores" in out
    cores = [len(read_annotation(p).cores) for p in find_annotations(tmp_path / "lab")]
    said = re.search(r"training on 2 item\(s\), 2 frame\(s\), (\d+) core\(s\); validating on "
                     r"1 item\(s\), 1 frame\(s\), (\d+) core\(s\) "
                     r"\(held out by items: image_0000\d.json\)", out)
    assert said and int(said[1]) + int(said[2]) == sum(cores)
    # Lightning's setup chatter (tips, model summary, validation bars) stays out of the way.
    assert not any(s in out + err for s in ("Tip", "Total params", "Validation", "Sanity"))
    # The per-epoch scores name the base model's row (Lightning logs it as epoch 0 too).
    logged = pd.read_csv(tmp_path / "ft_logs" / "metrics.csv")
    assert logged["model"].tolist()[0] == "base" and set(logged["model"][1:]) == {"fine-tuned"}
    assert logged["val/f1"].notna().sum() == 2  # the base's and the one epoch's
    # Into a log (no terminal here), each epoch is one line, not a redrawn bar.
    assert "\r" not in out + err  # no redrawn bar (Lightning's writes to stdout)
    assert re.search(r"^epoch 1/1 \([\d.]+ s\): train/loss=.*val/f1=", err, re.M)
    net, card = load_model(tmp_path / "ft")
    ft = card["training"]["finetune"]
    assert (ft["frames"], ft["train_frames"], ft["val_frames"]) == (3, 2, 1)
    assert len(ft["val_items"]) == 1 and ft["val_items"][0].endswith(".json")
    assert ft["command"].startswith("dislotrack finetune --data ") and "--epochs 1" in ft["command"]
    assert (ft["seed"], ft["batch_size"], ft["crops_per_epoch"], ft["split"]) == (0, 2, 4, "items")
    assert ft["base_sha256"] == load_model(tmp_path / "base")[1]["sha256"]
    assert ft["loss_weights"] == {}  # the base card records none: the module's defaults
    assert ft["wall_time_s"] > 0 and ft["data"] == str((tmp_path / "lab").resolve())
    # This run's version and date, not the base model's.
    assert card["dislotrack_version"] == package_version()
    # A model folder can be shared: the weights are as readable as the card.
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "ft.safetensors") == mode(tmp_path / "ft.json")
    # An existing model is not replaced unless asked; --out is a path stem, not a folder.
    again = ["finetune", "--data", str(tmp_path / "lab"), "--model", str(tmp_path / "base"), "--epochs", "1",
             "--size", "32", "--batch-size", "2", "--crops-per-epoch", "4", "--accelerator", "cpu"]
    capfd.readouterr()
    assert main([*again, "--out", str(tmp_path / "ft")]) == 2
    assert "ft.safetensors exists; choose another --out or add --overwrite" in capfd.readouterr().err
    assert main([*again, "--out", str(tmp_path / "models") + "/"]) == 2
    assert "not a folder" in capfd.readouterr().err
    assert main([*again, "--out", str(tmp_path / "ft"), "--overwrite"]) == 0
    scores = card["metrics"]["finetune_validation"]
    assert scores["val/true_cores"] >= 0 and "val/loss" in scores
    # The base model on the same held-out frames, at the threshold infer uses (the card's).
    base_scores = card["metrics"]["base_on_finetune_validation"]
    assert base_scores["val/true_cores"] == scores["val/true_cores"]
    assert base_scores["val/loss"] != scores["val/loss"]  # scored before training, not after
    assert card["metrics"]["validation_threshold"] == 0.3  # the base card's: infer's threshold
    assert re.search(r"base +fine-tuned\n(val/\w+ +[\d.e-]+ +[\d.e-]+\n)*val/loss +[\d.]+ +[\d.]+\n", out)
    # Per-epoch scores beside the model: the base model's row, then one per epoch.
    logged = pd.read_csv(tmp_path / "ft_logs" / "metrics.csv").dropna(subset=["val/loss"])
    assert len(logged) == 2 and logged["val/loss"].iloc[0] == pytest.approx(base_scores["val/loss"])
    assert (logged["val/true_cores"] == scores["val/true_cores"]).all()  # what each row scored
    assert f"scores per epoch: {tmp_path / 'ft_logs' / 'metrics.csv'}" in out
    assert ("val/f1" in scores) == (scores["val/true_cores"] > 0)  # no placeholder scores
    before, _ = load_model(tmp_path / "base")
    # Weights, not BatchNorm's running statistics (a forward pass alone moves those).
    weights = dict(before.named_parameters())
    assert any(not torch.equal(p, weights[name]) for name, p in net.named_parameters())
    assert card["training"]["finetune"]["precision"] == "32-true"
    tuned = card["training"]["finetune"]
    trained = {file_sha256(tmp_path / "lab" / Path(f).with_suffix(".tif").name)
               for f in find_annotations(tmp_path / "lab") if Path(f).name not in tuned["val_items"]}
    assert set(tuned["train_items_sha256"]) == trained and trained
    lab = (tmp_path / "lab").resolve()
    assert card["training_data"].startswith(f"fine-tuned on the lab annotations in {lab}")
    assert sorted(tuned["train_items"]) == sorted(Path(f).name for f in find_annotations(tmp_path / "lab")
                                                  if Path(f).name not in tuned["val_items"])
    # bfloat16 training (fast on AMX CPUs) still saves float32 weights.
    # (--out with the weights' suffix names the same model; its logs go to ft_logs too)
    (tmp_path / "ft_logs" / "metrics.csv").unlink()
    assert main([*again, "--out", str(tmp_path / "ft.safetensors"), "--overwrite", "--precision",
                 "bf16-mixed"]) == 0
    assert (tmp_path / "ft_logs" / "metrics.csv").is_file()
    net, card = load_model(tmp_path / "ft")
    assert card["training"]["finetune"]["precision"] == "bf16-mixed"
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_evaluate_scores_infer_outputs_against_annotations(tmp_path, capsys):
    generate_dataset(out=tmp_path / "truth", n=1, size=64, mode="stem", movie_frames=3, seed=4,
                     progress=False)  # a movie with cores, which the bundled model finds
    assert main(["infer", str(tmp_path / "truth" / "movie_00000.tif"), "--out", str(tmp_path / "pred"),
                 "--model", "default", "--no-movie", "--min-length", "2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]) == 0
    report = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    r = report["movie_00000"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["tp", "fp", "fn", "precision"]
    assert table[1].split()[:4] == ["movie_00000", str(r["tp"]), str(r["fp"]), str(r["fn"])]
    assert (tmp_path / "pred" / "movie_00000" / "figures" / "evaluation.png").stat().st_size > 0
    assert r["tp"] > 0
    made_by = r["predicted_by"]  # which model's predictions were scored
    assert made_by["model"] == "default" and len(made_by["sha256"]) == 64
    assert made_by["dislotrack_version"] == package_version()
    # How infer made them (its views and threshold change the scores), and the matching rule.
    assert made_by["tta"] == 1 and made_by["network_view"] in ("as read", "mirrored")
    summary = json.loads((tmp_path / "pred" / "movie_00000" / "summary.json").read_text())
    assert made_by["threshold"] == summary["options"]["threshold"]
    assert (f"predictions by: default (sha256 {made_by['sha256'][:12]}…), infer threshold "
            f"{made_by['threshold']}; tta 1") in table
    assert "cores match within 0.5 nm (one to one), events also within 1 frame" in table
    assert np.isclose(r["precision"], r["tp"] / (r["tp"] + r["fp"]))
    assert np.isclose(r["recall"], r["tp"] / (r["tp"] + r["fn"]))
    assert np.isclose(r["f1"], 2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"]))
    import tifffile

    from dislotrack.models.metrics import mask_iou, match_cores

    # The counts, recomputed here from the written tables: per frame, matches within 0.5 nm.
    ann = read_annotation(tmp_path / "truth" / "movie_00000.json")
    det = pd.read_csv(tmp_path / "pred" / "movie_00000" / "detections.csv")
    tp = sum(len(match_cores(det[det.frame == f][["x", "y"]], ann.cores[ann.cores.frame == f][["x", "y"]],
                             0.5 / ann.pixel_size_nm)[0]) for f in range(3))
    assert (r["tp"], r["fp"], r["fn"]) == (tp, len(det) - tp, len(ann.cores) - tp)
    rs_true = ann.rs_mask
    rs_pred = tifffile.imread(tmp_path / "pred" / "movie_00000" / "rocksalt_mask.tif")
    if rs_true.any() or rs_pred.any():
        assert r["rs_iou"] == pytest.approx(mask_iou(rs_pred, rs_true))
    else:  # no rock salt annotated nor found: undefined (null), not a perfect 1
        assert r["rs_iou"] is None
    assert r["identity_switches"] == 0  # 3 frames of cores that hardly move
    n_events = 2 * r["event_tp"] + r["event_fp"] + r["event_fn"]
    if n_events:
        assert np.isclose(r["event_f1"], 2 * r["event_tp"] / n_events)
    else:  # no event on either side: F1 undefined (JSON null), not 1.0
        assert r["event_f1"] is None


def test_evaluate_notes_predictions_made_by_different_models(tmp_path, capsys):
    generate_dataset(out=tmp_path / "truth", n=2, size=64, mode="stem", movie_frames=2, seed=4,
                     progress=False)
    assert main(["infer", *(str(p) for p in sorted((tmp_path / "truth").glob("movie_0000?.tif"))),
                 "--out", str(tmp_path / "pred"), "--model", "default", "--no-movie"]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]) == 0
    assert "different models" not in capsys.readouterr().err
    summary = tmp_path / "pred" / "movie_00001" / "summary.json"
    meta = json.loads(summary.read_text())
    meta["model"] = {"id": "lab_ft", "sha256": "0" * 64}  # as if a fine-tuned model made it
    summary.write_text(json.dumps(meta))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]) == 0
    assert "made by 2 different models (default, lab_ft)" in capsys.readouterr().err
    report = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert report["movie_00001"]["predicted_by"]["model"] == "lab_ft"


def test_detection_scores_count_matches_within_half_a_nanometre():
    truth = pd.DataFrame({"frame": [0, 0, 1], "x": [10.0, 30.0, 10.0], "y": [10.0, 30.0, 10.0],
                          "hx": [1.0, 0.0, 1.0], "hy": [0.0, 1.0, 0.0]})
    pred = pd.DataFrame({"frame": [0, 0, 1, 1], "x": [10.3, 36.0, 10.0, 50.0],
                         "y": [10.0, 30.0, 10.4, 50.0], "hx": [1.0, 0.0, -1.0, 1.0],
                         "hy": [0.0, 1.0, 0.0, 0.0]})
    s = detection_scores(pred, truth, pixel_size_nm=0.1)  # 0.5 nm = 5 px
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 1)
    assert np.isclose(s["rmse_nm"], np.sqrt((0.03**2 + 0.04**2) / 2))
    assert s["h_accuracy"] == 0.5


def test_event_f1_needs_same_kind_frame_and_place():
    truth = pd.DataFrame({"frame": [5, 9], "kind": ["dipole_nucleation", "annihilation"],
                          "x_nm": [1.0, 2.0], "y_nm": [1.0, 2.0], "particles": ["1 2", "3"]})
    pred = pd.DataFrame({"frame": [6, 9, 9], "kind": ["dipole_nucleation", "nucleation", "annihilation"],
                         "x": [10.0, 20.0, 40.0], "y": [10.0, 20.0, 40.0], "particles": ["", "", ""]})
    s = event_scores(pred, truth, pixel_size_nm=0.1)
    assert (s["event_tp"], s["event_fp"], s["event_fn"]) == (1, 2, 1)
    assert s["event_f1"] == 2 * 1 / (2 * 1 + 2 + 1)
    none = event_scores(pred.iloc[:0], truth.iloc[:0], pixel_size_nm=0.1)
    assert none["event_tp"] == none["event_fp"] == none["event_fn"] == 0
    assert np.isnan(none["event_f1"])  # undefined, not a perfect 1.0


@pytest.mark.parametrize("frame_off, dist_nm, matched", [(1, 0.0, True), (2, 0.0, False),
                                                       (0, 0.45, True), (0, 0.55, False)])
def test_events_match_within_one_frame_and_half_a_nanometre(frame_off, dist_nm, matched):
    truth = pd.DataFrame({"frame": [5], "kind": ["nucleation"], "x_nm": [1.0], "y_nm": [1.0]})
    pred = pd.DataFrame({"frame": [5 + frame_off], "kind": ["nucleation"],
                         "x": [10.0 + 10 * dist_nm], "y": [10.0]})  # px at 0.1 nm/px
    s = event_scores(pred, truth, pixel_size_nm=0.1)
    assert (s["event_tp"], s["event_fp"], s["event_fn"]) == ((1, 0, 0) if matched else (0, 1, 1))


def test_an_event_exactly_half_a_nanometre_off_matches():
    # 0.3 and 0.4 nm off: 0.5 nm, which px * nm/px computes as 0.5000000000000007.
    truth = pd.DataFrame({"frame": [5], "kind": ["nucleation"], "x_nm": [10.0], "y_nm": [10.0]})
    pred = pd.DataFrame({"frame": [5], "kind": ["nucleation"], "x": [103.0], "y": [104.0]})
    assert event_scores(pred, truth, pixel_size_nm=0.1)["event_tp"] == 1


def test_event_matching_pairs_as_many_events_as_it_can():
    # The first prediction is in range of both true events, the second of the first only:
    # taking true events in turn, each with the first prediction in range, found one pair.
    truth = pd.DataFrame({"frame": [3, 3], "kind": "nucleation", "x_nm": [1.0, 1.4], "y_nm": [1.0, 1.0]})
    pred = pd.DataFrame({"frame": [3, 4], "kind": "nucleation", "x": [13.0, 6.0], "y": [10.0, 10.0]})
    s = event_scores(pred, truth, pixel_size_nm=0.1)
    assert (s["event_tp"], s["event_fp"], s["event_fn"]) == (2, 0, 0)
    pairs = match_events(pred, truth, pixel_size_nm=0.1)
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_evaluate_refuses_missing_folders_and_unmatched_predictions(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    generate_dataset(out=tmp_path / "truth", n=1, size=32, mode="stem", seed=1, progress=False)
    (tmp_path / "pred").mkdir()
    for pred, truth, message in ((tmp_path / "nowhere", tmp_path / "truth", "prediction folder"),
                                 (tmp_path / "pred", tmp_path / "nowhere", "annotation folder"),
                                 (tmp_path / "pred", tmp_path / "truth" / "image_00000.tif",
                                  "image_00000.tif is a file, not a folder"),
                                 (tmp_path / "pred", tmp_path / "pred", "no annotations"),
                                 (tmp_path / "pred", tmp_path / "truth", "has infer outputs")):
        assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dislotrack evaluate: error:") and message in err, err
    assert not (tmp_path / "pred" / "evaluation.json").exists()
    part = tmp_path / "pred" / "image_00000_x0-16_y0-16"  # infer --region's results
    part.mkdir()
    (part / "detections.csv").write_text("frame,x,y\n")
    # Scored against the truth of that region (read from the folder's name: no summary.json).
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]) == 0
    report = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert set(report) == {"image_00000_x0-16_y0-16"}
    assert report["image_00000_x0-16_y0-16"]["part"] == {"frames": None, "region": "0:16,0:16"}


def test_core_outcomes_are_the_matching_of_detection_scores(tmp_path):
    truth = pd.DataFrame({"frame": [0, 0, 1, 2], "x": [10.0, 30.0, 10.0, 5.0], "y": [10.0, 30.0, 10.0, 5.0],
                          "hx": 1.0, "hy": 0.0})
    pred = pd.DataFrame({"frame": [0, 0, 1, 3], "x": [11.0, 50.0, 10.5, 7.0], "y": [10.0, 50.0, 10.0, 7.0],
                         "hx": 1.0, "hy": 0.0})
    out = core_outcomes(pred, truth, pixel_size_nm=0.1)  # match radius 5 px
    got = {(r.frame, r.x, r.y, r.outcome) for r in out.itertuples()}
    assert got == {(0, 10.0, 10.0, "found"), (0, 30.0, 30.0, "missed"), (0, 50.0, 50.0, "false"),
                   (1, 10.0, 10.0, "found"), (2, 5.0, 5.0, "missed"), (3, 7.0, 7.0, "false")}
    s = detection_scores(pred, truth, pixel_size_nm=0.1)
    n = out.outcome.value_counts()
    assert (n["found"], n["missed"], n["false"]) == (s["tp"], s["fn"], s["fp"])
    evaluation_figure(np.zeros((4, 64, 64)), out, tmp_path / "e.png")  # frames without cores too
    assert (tmp_path / "e.png").stat().st_size > 0
    from dislotrack.infer.figures import evaluation_panels

    fig = evaluation_panels(np.zeros((4, 64, 64)), out)
    FigureCanvasAgg(fig).draw()
    per_frame = fig.axes[1]  # its legend sits above the lines, not over them
    assert per_frame.get_legend().get_window_extent().y0 >= per_frame.get_window_extent().y1
    assert fig._suptitle.get_text() == "frame 0 (the most mistakes)"
    # With the annotation's pixel size: a scale bar on the frame (1 nm = 10 px at 0.1 nm/px).
    fig = evaluation_panels(np.zeros((4, 64, 64)), out, pixel_size_nm=0.1)
    assert [t.get_text() for t in fig.axes[0].texts] == ["1 nm"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--epochs", "0", "epochs must be at least 1"), ("--epochs", "-1", "epochs must be at least 1"),
    ("--crops-per-epoch", "0", "crops_per_epoch must be at least 1"),
    ("--val-fraction", "1.0", r"val_fraction must be in \[0, 1\)"),
    ("--lr", "0", r"lr \(--lr\) must be a finite number > 0, got 0")])
def test_finetune_refuses_settings_that_cannot_train(tmp_path, capsys, option, value, message):
    import re

    args = ["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "ft"), option, value]
    assert main(args) == 2  # before any data is read: one line, no model written
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "ft.safetensors").exists()


def test_finetune_keeps_a_frame_for_training_at_a_high_val_fraction(tmp_path):
    generate_dataset(out=tmp_path / "lab", n=3, size=64, mode="stem", seed=3, progress=False)
    _tiny(tmp_path / "base")
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "2", "--val-fraction", "0.99",
                 "--accelerator", "cpu"]) == 0
    _, card = load_model(tmp_path / "ft")
    assert card["training"]["finetune"]["val_frames"] == 2


def test_annotation_folders_name_what_they_skip_and_refuse(tmp_path):
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=2, size=32, mode="stem", seed=3, progress=False)
    (lab / "notes.json").write_text('{"format": "something-else"}')
    (lab / "typo.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"skipped 2 .*notes.json \(format 'something-else'.*typo.json "
                                         r"\(not valid JSON: .*line 1 column 2"):
        assert [p.name for p in find_annotations(lab)] == ["image_00000.json", "image_00001.json"]
    side = json.loads((lab / "image_00000.json").read_text())
    (lab / "image_00000.json").write_text(json.dumps({**side, "pixel_size_nm": None}))
    with pytest.raises(ValueError, match=r"image_00000.json: pixel_size_nm must be a positive number"):
        read_annotation(lab / "image_00000.json")
    (lab / "image_00001_cores.csv").write_text("frame,x,y,hx,hy,particle\n0,abc,1,1,0,0\n")
    with pytest.raises(ValueError, match=r"image_00001_cores.csv has non-numeric values in columns \['x'\]"):
        read_annotation(lab / "image_00001.json")
    (lab / "image_00001_cores.csv").write_text('frame,x\n"0,1\n')
    with pytest.raises(ValueError, match="image_00001_cores.csv is not a readable CSV table"):
        read_annotation(lab / "image_00001.json")
    # A sidecar (or none) beside a _cores.csv was meant as an annotation: refused, not skipped.
    (lab / "image_00001.json").write_text(json.dumps({k: v for k, v in side.items() if k != "format"}))
    with pytest.warns(UserWarning, match="skipped 2 "):  # notes.json, typo.json
        assert "image_00001.json" in [p.name for p in find_annotations(lab)]
    with pytest.raises(ValueError, match=r"image_00001.json is not a dislotrack-annotation sidecar "
                                         r"\(format None, not 'dislotrack-annotation'\): it needs"):
        read_annotation(lab / "image_00001.json")
    from dislotrack.train.finetune import annotated_frames

    (lab / "image_00001.json").unlink()
    with pytest.raises(ValueError, match=r"no <stem>.json sidecar beside image_00001.tif, which have a "
                                         r"<stem>_cores.csv"):
        annotated_frames(lab, 0.1)
    (lab / "image_00001_cores.csv").unlink()  # an image alone is only named
    (lab / "image_00000.json").write_text(json.dumps(side))
    with pytest.warns(UserWarning):  # notes.json, typo.json
        assert len(annotated_frames(lab, 0.1)) == 1


def test_report_table_keeps_counts_whole_beside_an_error_row():
    from dislotrack.infer.evaluate import report_table

    t = report_table({"a": {"tp": 3, "fp": 1, "fn": 2, "f1": 0.6}, "b": {"error": "no predictions"}})
    assert list(t.columns) == ["tp", "fp", "fn", "f1", "error"]
    assert t.loc["a", "tp"] == 3 and str(t.tp.dtype) == "Int64" and t.loc["b", "tp"] is pd.NA
    assert "3.000" not in t.to_string(float_format=lambda v: f"{v:.3f}")


def test_finetune_holds_out_whole_movies_not_neighbouring_frames():
    from dislotrack.data_gen.sample import Sample
    from dislotrack.train.finetune import split_frames

    def frames(source, n):
        return [Sample(np.zeros((8, 8), np.float32), pd.DataFrame(), np.zeros((8, 8), np.uint8),
                       {"source": source}) for _ in range(n)]

    lab = frames("a.json", 5) + frames("b.json", 5) + frames("c.json", 2)
    for seed in range(5):
        train, val, split = split_frames(lab, 0.2, np.random.default_rng(seed))
        held = {f.meta["source"] for f in val}
        assert split == "items" and held and not held & {f.meta["source"] for f in train}
        assert len(train) + len(val) == 12 and len(train) > 0
    train, val, split = split_frames(lab, 0.99, np.random.default_rng(0))
    assert split == "items" and len({f.meta["source"] for f in train}) == 1  # one item still trains
    movie = frames("movie.json", 10)
    for i, f in enumerate(movie):
        f.meta["frame"] = i
    train, val, split = split_frames(movie[::-1], 0.2, np.random.default_rng(0))
    assert split == "frames" and (len(train), len(val)) == (8, 2)
    # One block at the end (in frame order, however listed): only frame 7 has a twin in
    # training, not every held-out frame.
    assert [f.meta["frame"] for f in val] == [8, 9] and [f.meta["frame"] for f in train] == list(range(8))
    # The card names the held-out frames (evaluate can then score them alone).
    from dislotrack.train.finetune import held_out_frames

    (held,) = held_out_frames(val).values()
    assert held == sorted(f.meta["frame"] for f in val) and not set(held) & {f.meta["frame"] for f in train}


def test_annotations_with_out_of_range_values_are_refused_naming_file_and_rows(tmp_path):
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=32, mode="stem", movie_frames=3, seed=1, progress=False)
    side = lab / "movie_00000.json"
    good = read_annotation(side)
    assert np.allclose(np.hypot(good.cores.hx, good.cores.hy), 1)
    cores = pd.read_csv(lab / "movie_00000_cores.csv")
    bad = cores.copy()
    bad.loc[0, "x"], bad.loc[1, "frame"], bad.loc[2, ["hx", "hy"]] = 32.0, 3, 0.0
    bad.to_csv(lab / "movie_00000_cores.csv", index=False)
    with pytest.raises(ValueError) as err:
        read_annotation(side)
    msg = str(err.value)
    assert msg.startswith(str(side))
    # Data rows counted from 1 below the header.
    assert "x missing or outside the image [-0.5, 31.5] px in data row(s) 1" in msg
    assert "frame not one of 0..2 in data row(s) 2" in msg
    assert "h zero, not finite or half given in data row(s) 3" in msg
    # The last pixel's far edge is inside; h of any length is read as its direction.
    edge = cores.assign(hx=3 * cores.hx, hy=3 * cores.hy)
    edge.loc[0, ["x", "y"]] = 31.5, -0.5
    edge.to_csv(lab / "movie_00000_cores.csv", index=False)
    ann = read_annotation(side)
    assert np.allclose(ann.cores[["hx", "hy"]], good.cores[["hx", "hy"]])
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "shape": [3, 32, 31], "frame_interval_s": 0}))
    with pytest.raises(ValueError, match=r"shape \[3, 32, 31\] disagrees with the image's \[3, 32, 32\]; "
                                         r"frame_interval_s must be null or a positive number"):
        read_annotation(side)
    side.write_text(json.dumps({**meta, "shape": 5, "frame_interval_s": True}))
    with pytest.raises(ValueError, match=r"shape 5 disagrees.*frame_interval_s must be null or a positive "
                                         r"number \[s\], got True"):
        read_annotation(side)


def test_annotation_columns_come_in_one_order_for_images_and_movies(tmp_path):
    generate_dataset(out=tmp_path / "i", n=1, size=32, mode="stem", seed=1, progress=False)
    generate_dataset(out=tmp_path / "m", n=1, size=32, mode="stem", movie_frames=2, seed=1,
                     progress=False)
    heads = [pd.read_csv(tmp_path / d / f"{stem}_cores.csv", nrows=0).columns[:6].tolist()
             for d, stem in (("i", "image_00000"), ("m", "movie_00000"))]
    assert heads[0] == heads[1] == ["frame", "x", "y", "hx", "hy", "particle"]


def _truth_as_predictions(tmp_path, *, size: int):
    """Two annotated images, and infer-like folders whose detections are their truth."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    generate_dataset(out=truth, n=2, size=size, mode="stem", seed=4, progress=False)
    for stem in ("image_00000", "image_00001"):
        (pred / stem).mkdir(parents=True)
        read_annotation(truth / f"{stem}.json").cores.to_csv(pred / stem / "detections.csv", index=False)
    return truth, pred


def test_evaluate_scores_the_others_when_one_annotation_is_bad(tmp_path, capsys):
    truth, pred = _truth_as_predictions(tmp_path, size=64)
    bad = pd.read_csv(truth / "image_00001_cores.csv")
    bad = pd.concat([bad, pd.DataFrame([{"frame": 5, "x": 1, "y": 1, "hx": 1, "hy": 0, "particle": 9}])])
    bad.to_csv(truth / "image_00001_cores.csv", index=False)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 1
    out, err = capsys.readouterr()
    report = json.loads((pred / "evaluation.json").read_text())
    assert report["image_00000"]["f1"] == 1.0  # the truth as prediction scores perfectly
    assert report["image_00001"] == {"error": report["image_00001"]["error"]}
    assert "frame not one of 0..0" in report["image_00001"]["error"]
    assert "image_00001: not scored: annotation:" in err and "image_00001" in out


def test_hand_written_annotations_read_or_fail_naming_the_file(tmp_path):
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=32, mode="stem", seed=3, progress=False)
    side, csv = lab / "image_00000.json", lab / "image_00000_cores.csv"
    want = read_annotation(side).cores
    # A header typed with spaces after the commas reads as the same columns.
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([", ".join(lines[0].split(",")), *lines[1:]]) + "\n")
    pd.testing.assert_frame_equal(read_annotation(side).cores, want)
    csv.write_text("")
    with pytest.raises(ValueError, match="image_00000_cores.csv is not a readable CSV table"):
        read_annotation(side)
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="annotation version 99; this dislotrack reads version 1"):
        read_annotation(side)
    side.write_text(json.dumps({k: v for k, v in meta.items() if k != "pixel_size_nm"}
                               | {"pixel_size": 0.1}))  # a typo
    with pytest.raises(ValueError, match=r"image_00000.json: no pixel_size_nm .*; it has .*pixel_size, .*; "
                                         r"image_00000.tif's own calibration says 0.1 nm/px: add "
                                         r'"pixel_size_nm": 0.1$'):
        read_annotation(side)
    side.write_text(json.dumps(meta))
    # A single image's table needs no frame or particle column; renamed columns are named.
    csv.write_text("x, y, hx, hy\n10.5, 12, 0, 1\n20, 22, 1, 0\n")
    got = read_annotation(side).cores
    assert got.frame.tolist() == [0, 0] and got.particle.tolist() == [0, 1]
    # A sidecar pixel size that the TIFF's own calibration contradicts (a typo in either).
    side.write_text(json.dumps({**meta, "pixel_size_nm": meta["pixel_size_nm"] / 2}))
    with pytest.raises(ValueError, match=rf"image_00000.json: pixel_size_nm {meta['pixel_size_nm'] / 2:g} "
                                         rf"disagrees with image_00000.tif's own calibration, "
                                         rf"{meta['pixel_size_nm']:g} nm/px"):
        read_annotation(side)
    side.write_text(json.dumps({**meta, "pixel_size_nm": meta["pixel_size_nm"] * 1.01}))  # rounding
    assert read_annotation(side).pixel_size_nm == pytest.approx(meta["pixel_size_nm"] * 1.01)
    side.write_text(json.dumps(meta))
    csv.write_text("x_px,y,hx,hy\n10.5,12,0,1\n")
    with pytest.raises(ValueError, match=r"lacks columns \['x'\]: it has \['x_px', 'y', 'hx', 'hy'\]; "
                                         r"if x_px is the position in pixels .* name it x; "
                                         r"the header needs frame,x,y,hx,hy,particle"):
        read_annotation(side)
    import tifffile

    tifffile.imwrite(lab / "image_00000.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"image_00000.tif is a colour image \(axes YXS\)"):
        read_annotation(side)


def test_an_annotation_image_may_be_a_tiff(tmp_path):
    from dislotrack.models.io import file_sha256

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=32, mode="stem", seed=3, progress=False)
    want = read_annotation(lab / "image_00000.json")
    (lab / "image_00000.tif").rename(lab / "image_00000.tiff")
    got = read_annotation(lab / "image_00000.json")
    np.testing.assert_array_equal(got.image, want.image)
    # evaluate's checks find it too: the trained-on hash and the image fingerprint
    from dislotrack.infer.evaluate import trained_on

    summary = {"model": {"finetuned_on": {"data": "/elsewhere", "split": "items", "val_items": [],
                                          "train_items_sha256": [file_sha256(lab / "image_00000.tiff")]}}}
    assert trained_on(summary, lab / "image_00000.json")


def test_hand_written_movie_annotations_lab_style(tmp_path):
    # A movie clicked frame by frame: no particle column (identities unknown), frames
    # counted from 1 by mistake, positions typed in nm, a version written as text.
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=64, mode="stem", movie_frames=3, seed=3, progress=False)
    side, csv = lab / "movie_00000.json", lab / "movie_00000_cores.csv"
    px = read_annotation(side).pixel_size_nm
    csv.write_text("frame,x,y,hx,hy\n0,10,12,0,1\n1,11,12,0,1\n2,40,50,1,0\n")
    assert (read_annotation(side).cores.particle == UNKNOWN_PARTICLE).all()
    csv.write_text("frame,x,y,hx,hy\n1,10,12,0,1\n2,11,12,0,1\n3,40,50,1,0\n")
    with pytest.raises(ValueError, match=r"frame not one of 0..2 \(frames count from 0; these look "
                                         r"counted from 1\) in data row\(s\) 3"):
        read_annotation(side)
    spread = ((0, 10, 12), (0, 40, 50), (0, 60, 30), (1, 11, 12))
    csv.write_text("frame,x,y,hx,hy\n" + "".join(f"{f},{x * px},{y * px},0,1\n" for f, x, y in spread))
    with pytest.warns(UserWarning, match=r"movie_00000_cores.csv: all 4 positions lie within x <= 6, "
                                         r"y <= 5, the image's size in nm .* are these in nm\?"):
        read_annotation(side)
    # Quiet: the same in px; one core followed over the frames near the corner; a small
    # patch of cores there.
    for rows in (spread, ((0, 1, 1), (1, 1.5, 1), (2, 2, 1.2)), ((0, 1, 1), (0, 1.5, 1.3), (0, 1.2, 2))):
        csv.write_text("frame,x,y,hx,hy\n" + "".join(f"{f},{x},{y},0,1\n" for f, x, y in rows))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_annotation(side)
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "version": "1"}))
    with pytest.raises(ValueError, match=r"version must be a whole number \(e.g. 1\), got '1'"):
        read_annotation(side)
    side.write_text(json.dumps(meta))
    # Positions only (no hx, hy), or a row's h left empty: h unknown; hx alone is a slip.
    csv.write_text("frame,x,y\n0,10,12\n1,11,12\n2,40,50\n")
    assert read_annotation(side).cores[["hx", "hy"]].isna().all().all()
    csv.write_text("frame,x,y,hx,hy\n0,10,12,,\n1,11,12,0,2\n2,40,50,1,\n")
    with pytest.raises(ValueError, match=r"h zero, not finite or half given in data row\(s\) 3$"):
        read_annotation(side)
    csv.write_text("frame,x,y,hx,hy\n0,10,12,,\n1,11,12,0,2\n")
    got = read_annotation(side).cores
    assert got[["hx", "hy"]].iloc[0].isna().all() and got[["hx", "hy"]].iloc[1].tolist() == [0, 1]
    # h under another name, or as an angle, was dropped without a word: named now.
    for header, said in (("h_x,h_y", r"h_x, h_y look like h: name them hx, hy"),
                         ("angle_deg", r"for h, convert angle_deg to hx, hy")):
        csv.write_text(f"frame,x,y,{header}\n0,10,12,{'0,1' if ',' in header else '90'}\n")
        with pytest.warns(UserWarning, match=rf"columns \[.*\] are not read .*{said}"):
            assert read_annotation(side).cores[["hx", "hy"]].isna().all().all()
    # Positions under another name: what to do with them.
    csv.write_text("frame,x_nm,y_nm\n0,1.0,1.2\n")
    with pytest.raises(ValueError, match=r"lacks columns \['x', 'y'\].*; x_nm in nm: divide it by "
                                         r"pixel_size_nm \(.*\) and name it x; y_nm in nm"):
        read_annotation(side)
    csv.write_text("frame,col,row\n0,10,12\n")
    with pytest.raises(ValueError, match=r"if col is the position in pixels .* name it x; if row"):
        read_annotation(side)
    csv.write_text("frame,x,y,hx,hy,note\n0,10,12,0,1,sharp\n")
    with pytest.warns(UserWarning, match=r"columns \['note'\] are not read \(known: frame, x, y"):
        read_annotation(side)


def test_a_movie_annotated_on_some_frames_only_is_warned_about(tmp_path):
    # Labs often click every few frames of a long movie: the frames between would
    # train and score as frames without dislocations.
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=64, mode="stem", movie_frames=9, seed=3, progress=False)
    side, csv = lab / "movie_00000.json", lab / "movie_00000_cores.csv"
    every_fourth = "".join(f"{f},10,12,0,1\n" for f in (0, 4, 8))
    csv.write_text("frame,x,y,hx,hy\n" + every_fourth)
    with warnings.catch_warnings():  # the generator's own items are labelled in full
        warnings.simplefilter("error")
        read_annotation(side)
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({k: v for k, v in meta.items() if k != "source"}))  # a lab's
    with pytest.warns(UserWarning, match=r"movie_00000_cores.csv: 6 of the frames between the first "
                                         r"and last annotated one \(0 and 8\) hold no core \(1, 2, 3, "
                                         r"5, 6, and 1 more\).*leave them out of the stack"):
        read_annotation(side)
    # Quiet: every frame annotated; a core that leaves after frame 3 (frames empty at the
    # end); one frame without a core between annotated ones (a miss, not a pattern).
    for frames in (range(9), range(4), [0, 1, 2, 4, 5, 6, 7, 8]):
        csv.write_text("frame,x,y,hx,hy\n" + "".join(f"{f},10,12,0,1\n" for f in frames))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_annotation(side)


@pytest.mark.parametrize("unit, scale", [("nm", 1.0), ("\\u00B5m", 1e3), ("micron", 1e3), ("\\u00C5", 0.1),
                                         ("Angstrom", 0.1), ("pixel", None), ("furlong", None)])
def test_imagej_pixel_size_reads_the_units_labs_write(tmp_path, unit, scale):
    import tifffile

    from dislotrack.data_gen.annotations import imagej_pixel_size_nm

    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.float32), imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": unit, "axes": "TYX"})
    with tifffile.TiffFile(path) as tif:
        got = imagej_pixel_size_nm(tif)
    assert got == (None if scale is None else pytest.approx(0.25 * scale))


def test_report_text_shows_missing_and_undefined_values_one_way():
    text = report_text({"a": {"tp": 3, "fp": 1, "fn": 0, "f1": None, "rs_iou": 0.5},
                        "b": {"error": "no predictions"}})
    head, a, b = (line.split() for line in text.splitlines())
    assert head == ["tp", "fp", "fn", "f1", "rs_iou"]
    assert a == ["a", "3", "1", "0", "-", "0.500"] and b == ["b", "-", "-", "-", "-", "-"]
    assert report_text({"b": {"error": "no predictions"}}) == "no annotated item could be scored"


def test_finetune_reports_only_scores_defined_for_lab_data():
    from dislotrack.train.finetune import defined_scores

    logged = {"val/loss": 0.5, "val/f1": 0.0, "val/rmse_nm": 1.0, "val/h_accuracy": 0.0, "val/tp": 0.0,
              "val/hrtem/f1": 0.0, "val/rs_iou": 0.9}
    # True cores but none matched: F1 0 is a score, RMSE and h accuracy are placeholders.
    assert defined_scores(logged, 4) == {"val/loss": 0.5, "val/f1": 0.0, "val/tp": 0.0, "val/fn": 4.0,
                                         "val/rs_iou": 0.9, "val/true_cores": 4}
    assert defined_scores(logged, 0) == {"val/loss": 0.5, "val/rs_iou": 0.9, "val/true_cores": 0}
    matched = {**logged, "val/tp": 3.0, "val/rmse_nm": 0.1, "val/h_accuracy": 1.0}
    assert defined_scores(matched, 4)["val/rmse_nm"] == 0.1
    nan = {**logged, "val/rmse_nm": float("nan"), "val/h_accuracy": float("nan"), "val/tp": 2.0}
    assert "val/rmse_nm" not in defined_scores(nan, 4)  # as the module now logs them
    # Precision is 0 / 0 when nothing was found (as evaluate prints "-"), 0 when all false.
    found_none = {**logged, "val/precision": 0.0, "val/fp": 0.0}
    assert "val/precision" not in defined_scores(found_none, 4)
    assert defined_scores({**found_none, "val/fp": 2.0}, 4)["val/precision"] == 0.0


def test_validation_scores_pool_the_counts_of_all_ranks():
    from dislotrack.models.metrics import DetectionTally
    from dislotrack.train.module import DislocationModule

    module = DislocationModule(UNet(UNetConfig(base_channels=4, depth=2)))
    logged: dict = {}
    module.log_dict = lambda metrics, **_: logged.update(metrics)
    here = DetectionTally(tp=1, fp=0, fn=0, sq_err_nm2=0.01, h_ok=1, h_scored=1)  # this rank: F1 1.0
    module._tallies, module._rs = {"all": here, "stem": here}, np.array([5.0, 10.0, 1.0])
    # Another rank with 1 tp (h wrong), 3 fn and only HRTEM frames (no "stem" tally there).

    def two_ranks(values):
        keys = 6  # TALLY_KEYS: all, hrtem, stem and three dose bins
        n = 7  # tp, fp, fn, sq_err_nm2, h_ok, h_scored, frames seen
        extra = np.zeros_like(values)
        extra[0:n] = [1, 0, 3, 0.03, 0, 1, 1]  # "all"
        extra[n:2 * n] = [1, 0, 3, 0.03, 0, 1, 1]  # "hrtem"
        extra[keys * n:] = [0.0, 10.0, 1.0]  # rock salt: nothing found there
        return values + extra

    module._sum_over_ranks = two_ranks
    module._epoch_end("val")
    assert logged["val/tp"] == 2 and logged["val/f1"] == pytest.approx(2 * 2 / (2 * 2 + 3))  # pooled
    assert logged["val/stem/f1"] == 1.0 and logged["val/hrtem/f1"] == pytest.approx(2 / 5)
    assert logged["val/rmse_nm"] == pytest.approx(np.sqrt(0.04 / 2))
    assert logged["val/h_accuracy"] == 0.5 and logged["val/rs_iou"] == pytest.approx(5 / 20)
    # Frames without a core anywhere still give val/f1 0 (the checkpoints monitor it).
    logged.clear()
    module._tallies = {"all": DetectionTally()}
    module._sum_over_ranks = lambda values: values
    module._epoch_end("val")
    assert logged["val/f1"] == 0.0 and logged["val/tp"] == 0


def test_validation_rock_salt_iou_pools_intersections_and_unions_over_frames(tmp_path):
    from test_train_metrics import rock_salt_scores  # tests/ is on sys.path
    from torch.utils.data import default_collate

    from dislotrack.train.data import sample_to_item
    from dislotrack.train.finetune import annotated_frames

    generate_dataset(out=tmp_path / "lab", n=2, size=32, mode="stem", seed=3, progress=False)
    batch = default_collate([sample_to_item(f) for f in annotated_frames(tmp_path / "lab", 0.1)])
    logged, _ = rock_salt_scores(batch)  # frame 0: IoU 50/150; frame 1: 16 px, exact
    # Pooled over the frames: (50 + 16) / (150 + 16), not the mean of 1/3 and 1.
    assert logged["val/rs_iou"] == pytest.approx(66 / 166)


def test_lab_frames_are_scored_without_a_mode_and_without_a_rock_salt_iou_of_nothing(tmp_path):
    from torch.utils.data import default_collate

    from dislotrack.train.data import sample_to_item
    from dislotrack.train.finetune import annotated_frames
    from dislotrack.train.module import DislocationModule

    generate_dataset(out=tmp_path / "lab", n=2, size=32, mode="stem", seed=3, progress=False)
    frames = annotated_frames(tmp_path / "lab", canonical_nm=0.1)
    for f in frames:
        f.rs_mask[:] = 0  # annotated, and no rock salt in it
    module = DislocationModule(UNet(UNetConfig(base_channels=4, depth=2)))
    logged: dict = {}
    module.log_dict = lambda metrics, **_: logged.update(metrics)
    module.log = lambda *args, **kwargs: None  # the step's loss: no trainer here
    with torch.no_grad():
        module._eval_step(default_collate([sample_to_item(f) for f in frames]), "val")
    module._rs[1] = 0  # as if the network found no rock salt either
    module._epoch_end("val")
    assert "val/f1" in logged and not any(k.startswith(("val/hrtem/", "val/stem/")) for k in logged)
    assert np.isnan(logged["val/rs_iou"])  # 0 / 0: undefined, not 1


def test_validation_logs_no_made_up_rmse_or_h_accuracy():
    from dislotrack.models.metrics import DetectionTally
    from dislotrack.train.module import DislocationModule

    module = DislocationModule(UNet(UNetConfig(base_channels=4, depth=2)))
    logged: dict = {}
    module.log_dict = lambda metrics, **_: logged.update(metrics)
    missed = DetectionTally()  # one true core, nothing found
    missed.add(np.zeros((0, 2)), np.zeros((0, 2)), np.array([[5.0, 5.0]]), np.array([[1.0, 0.0]]),
               pixel_size=0.1)
    module._tallies = {"all": missed}
    module._epoch_end("val")
    assert logged["val/f1"] == 0.0 and logged["val/tp"] == 0.0
    assert np.isnan(logged["val/rmse_nm"]) and np.isnan(logged["val/h_accuracy"])  # were 1.0 and 0.0
    assert np.isnan(logged["val/rs_iou"])  # no rock salt was scored


def test_evaluate_with_nothing_scored_says_so_and_keeps_the_earlier_evaluation(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    generate_dataset(out=truth, n=1, size=32, mode="stem", seed=4, progress=False)
    (pred / "image_00000" / "figures").mkdir(parents=True)
    read_annotation(truth / "image_00000.json").cores.to_csv(pred / "image_00000" / "detections.csv")
    earlier = {"image_00000": {"tp": 3, "fp": 0, "fn": 1, "f1": 0.857}}
    (pred / "evaluation.json").write_text(json.dumps(earlier))
    figure = pred / "image_00000" / "figures" / "evaluation.png"
    figure.write_bytes(b"the earlier run's figure")
    # e.g. --truth pointing at another lab's annotations: the item cannot be scored
    (truth / "image_00000_cores.csv").write_text("frame,x,y,hx,hy,particle\n0,99,1,1,0,0\n")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dislotrack evaluate: error: no annotated item") and "image_00000:" in err
    assert "nothing was written" in err
    assert json.loads((pred / "evaluation.json").read_text()) == earlier
    assert figure.read_bytes() == b"the earlier run's figure"


def test_evaluate_drops_the_stale_figure_of_an_item_it_cannot_score(tmp_path):
    truth, pred = _truth_as_predictions(tmp_path, size=32)
    (pred / "image_00001" / "summary.json").write_text(json.dumps({"input": {"shape": [30, 64, 64]}}))
    stale = pred / "image_00001" / "figures" / "evaluation.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an earlier run's figure")
    report = evaluate_folders(pred, truth, progress=False)
    assert "error" in report["image_00001"] and not stale.exists()
    assert (pred / "image_00000" / "figures" / "evaluation.png").stat().st_size > 100


def test_evaluate_refuses_predictions_of_another_shape(tmp_path, capsys):
    truth, pred = _truth_as_predictions(tmp_path, size=32)
    # image_00001's predictions come from another input of the same name (30 frames of 64²)
    (pred / "image_00001" / "summary.json").write_text(json.dumps({"input": {"shape": [30, 64, 64]}}))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 1
    report = json.loads((pred / "evaluation.json").read_text())
    assert "f1" in report["image_00000"]
    assert report["image_00001"] == {"error": "the predictions are of a (30, 64, 64) input, "
                                              "the annotation is (1, 32, 32)"}


def test_evaluate_refuses_predictions_of_another_image_of_the_same_name(tmp_path, capsys):
    # Two generated sets both hold image_00000 (same shape, other pixels): predictions of
    # one must not be scored against the other's annotation. A copy of the annotated image
    # in another format (uint16 here, as a lab's export) is the same image.
    import tifffile

    for name, seed in (("a", 4), ("b", 5)):
        generate_dataset(out=tmp_path / name, n=1, size=32, mode="stem", seed=seed, progress=False)
    image = tifffile.imread(tmp_path / "a" / "image_00000.tif")
    copy = tmp_path / "copy" / "image_00000.tif"
    copy.parent.mkdir()
    scaled = (image - image.min()) / np.ptp(image) * 60000
    write_imagej_tiff(copy, scaled.astype(np.uint16)[None], pixel_size_nm=0.1)
    for source, out in ((tmp_path / "b" / "image_00000.tif", "pred_b"), (copy, "pred_copy")):
        assert main(["infer", str(source), "--out", str(tmp_path / out), "--model", "default",
                     "--no-movie"]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "pred_b"), "--truth", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "the predictions are of another image" in err and "image_00000.tif" in err
    assert main(["evaluate", "--pred", str(tmp_path / "pred_copy"), "--truth", str(tmp_path / "a")]) == 0
    assert "f1" in json.loads((tmp_path / "pred_copy" / "evaluation.json").read_text())["image_00000"]


def test_image_check_tolerates_nan_padding_and_a_burned_in_scale_bar(tmp_path):
    from dislotrack.infer.evaluate import _image_mismatch
    from dislotrack.infer.outputs import frame_fingerprint

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    frame = (100 + 5 * np.cos(yy / 1.5) + 3 * np.sin((xx + yy) / 40) + rng.normal(0, 2, (256, 256)))
    summary = {"input": {"path": "m.dm4", "sha256": "ab", "fingerprint": frame_fingerprint(frame)}}
    padded = frame.copy()
    padded[:, :3] = np.nan  # alignment padding, which infer's reader fills in
    barred = frame.copy()
    barred[220:240, 20:120] = 255  # a scale bar burned into the export
    for same in (frame, padded, barred, 7 * frame.astype(np.float32) + 3):
        assert _image_mismatch(summary, same, tmp_path / "m.tif") is None
    other = 100 + 3 * np.sin((xx - yy) / 30) + rng.normal(0, 2, (256, 256))
    assert "another image (m.dm4)" in _image_mismatch(summary, other, tmp_path / "m.tif")
    assert "flipped or rotated" in _image_mismatch(summary, frame[::-1], tmp_path / "m.tif")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_finetune_on_a_missing_gpu_is_a_one_line_error(tmp_path, capsys):
    generate_dataset(out=tmp_path / "lab", n=2, size=32, mode="stem", seed=3, progress=False)
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--size", "32", "--accelerator", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dislotrack finetune: error: --accelerator gpu:")
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "ft.safetensors").exists()


def test_lab_data_without_rock_salt_masks_trains_no_rock_salt(tmp_path, capfd):
    """A missing mask means 'not annotated', not 'no rock salt anywhere'."""
    from dislotrack.train.data import sample_to_item
    from dislotrack.train.finetune import annotated_frames
    from dislotrack.train.module import DislocationModule

    generate_dataset(out=tmp_path / "lab", n=3, size=64, mode="stem", seed=3, progress=False)
    for mask in (tmp_path / "lab").glob("*_rs.tif"):
        mask.unlink()
    frames = annotated_frames(tmp_path / "lab", 0.1)
    assert [s.meta["rs_annotated"] for s in frames] == [False] * 3
    assert [s.meta["frame"] for s in frames] == [0] * 3  # each item's frame (held_out_frames)
    batch = {k: v[None] for k, v in sample_to_item(frames[0]).items()}
    _tiny(tmp_path / "base")
    module = DislocationModule(load_model(tmp_path / "base")[0])
    out = module(batch["image"])
    assert module.losses(out, batch)["rs"] == 0  # annotated: > 0 (the tiny net is no oracle)
    assert module.losses(out, {**batch, "rs_known": torch.ones(1)})["rs"] > 0
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "4", "--accelerator", "cpu"]) == 0
    out, _ = capfd.readouterr()
    assert "val/rs_iou" not in out  # no score without a mask (it was 0 before)
    assert "rock salt annotated in 0 of 3 item(s) (no <stem>_rs.tif: not trained or scored there)" in out
    assert "val/rs_iou" not in load_model(tmp_path / "ft")[1]["metrics"]["finetune_validation"]


def test_finetune_refuses_a_pixel_size_that_cannot_show_the_fringes(tmp_path, capsys):
    import json

    generate_dataset(out=tmp_path / "lab", n=1, size=32, mode="stem", seed=3, progress=False)
    side = tmp_path / "lab" / "image_00000.json"
    meta = json.loads(side.read_text())
    meta["pixel_size_nm"] = 5.0  # a typo for 0.05: would upsample 32 px to 1600
    side.write_text(json.dumps(meta))
    import tifffile

    tif = side.with_suffix(".tif")  # uncalibrated, as a lab's may be (else the two disagree)
    tifffile.imwrite(tif, tifffile.imread(tif))
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "pixel_size_nm 5 leaves the 0.473 nm (003) fringes 0.095 px apart" in err
    assert not (tmp_path / "ft.safetensors").exists()


def test_finetune_labels_follow_the_rounded_zoom_as_infer_maps_back(tmp_path):
    from dislotrack.data_gen.annotations import Annotation, write_annotation
    from dislotrack.train.finetune import annotated_frames

    # 257 x 333 px at 0.05 nm/px: rescaled by 0.5, rounded to 128 x 166 (zoom 0.498 / 0.4985).
    image = np.zeros((1, 257, 333), np.float32)
    cores = pd.DataFrame({"frame": [0], "x": [332.0], "y": [256.0], "hx": [1.0], "hy": [0.0],
                          "particle": [0]})
    write_annotation(tmp_path / "lab", "edge", Annotation(image, cores, None, 0.05, None, {}))
    sample = annotated_frames(tmp_path / "lab", 0.1)[0]
    assert sample.image.shape == (128, 166)
    zoom = np.array([166 / 333, 128 / 257])
    expected = (np.array([332.0, 256.0]) + 0.5) * zoom - 0.5  # detectors.py maps back with zoom
    np.testing.assert_allclose(sample.cores[["x", "y"]].to_numpy()[0], expected, atol=1e-9)


def test_h_accuracy_reads_directions_of_any_length():
    from dislotrack.models.metrics import DetectionTally

    tally = DetectionTally()
    xy = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0]])
    true_h = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # 11 deg off with length 0.5 (was read as 61 deg off), 50 deg off, and no direction at all
    pred_h = np.array([[0.5 * np.cos(0.19), 0.5 * np.sin(0.19)], [np.sin(0.87), np.cos(0.87)], [0.0, 0.0]])
    tally.add(xy, pred_h, xy, true_h, pixel_size=0.1)
    assert tally.h_ok == 1 and tally.summary()["h_accuracy"] == pytest.approx(1 / 3)


def test_tracking_scores_say_how_many_long_true_tracks_were_not_found():
    from dislotrack.infer.evaluate import tracking_scores

    frames = np.arange(12)
    truth = pd.concat([pd.DataFrame({"frame": frames, "x": 10.0 + frames, "y": 10.0, "particle": 0}),
                       pd.DataFrame({"frame": frames, "x": 60.0, "y": 60.0, "particle": 1})])
    true_tracks = pd.DataFrame({"particle": [0, 1], "n_frames": 12, "glide_velocity_nm_s": [0.1, 0.0],
                                "climb_velocity_nm_s": [0.0, 0.0]})
    pred = truth[truth.particle == 0].assign(particle=7)  # the moving core found, the still one not
    summary = pd.DataFrame({"particle": [7], "glide_velocity_nm_s": [0.1], "climb_velocity_nm_s": [0.0]})
    scores, table = tracking_scores(pred, summary, truth, true_tracks, pixel_size_nm=0.1)
    assert (scores["long_tracks_matched"], scores["long_tracks_unmatched"]) == (1, 1)
    # The still track, not found, is in the table; it has no relative error (it does not
    # move), so the median is the found one's.
    assert len(table) == 2 and scores["median_glide_rel_error"] == pytest.approx(0.0)
    assert table.set_index("particle").loc[1, "pred"] is pd.NA


def test_a_moving_true_track_never_found_counts_against_the_velocity_median():
    # Two long true tracks glide at 0.1 nm/s; one is found with its velocity exact, the
    # other is not found at all: the median over the true tracks is not 0 but a failure.
    from dislotrack.infer.evaluate import tracking_scores

    frames = np.arange(12)
    truth = pd.concat([pd.DataFrame({"frame": frames, "x": 10.0 + 40 * k + frames, "y": 10.0,
                                     "particle": k}) for k in range(3)])
    true_tracks = pd.DataFrame({"particle": [0, 1, 2], "n_frames": 12, "glide_velocity_nm_s": 0.1,
                                "climb_velocity_nm_s": [0.1, 0.1, -0.1]})
    # Track 0 found; track 2 found in 2 frames only (too few to be its track); track 1 not.
    pred = pd.concat([truth[truth.particle == 0].assign(particle=7),
                      truth[(truth.particle == 2) & (truth.frame < 2)].assign(particle=8)])
    summary = pd.DataFrame({"particle": [7, 8], "glide_velocity_nm_s": [0.1, 0.1],
                            "climb_velocity_nm_s": [0.1, -0.1]})
    scores, table = tracking_scores(pred, summary, truth, true_tracks, pixel_size_nm=0.1)
    assert (scores["long_tracks_matched"], scores["long_tracks_unmatched"]) == (1, 2)
    assert scores["median_glide_rel_error"] == np.inf  # 0, inf, inf
    assert scores["median_glide_rel_error_found"] == pytest.approx(0.0)
    assert scores["climb_sign_correct"] == pytest.approx(1 / 3)  # a track not found: no sign
    # One predicted track supplies the velocity of one true track only.
    both = pd.concat([truth[truth.particle == 0], truth[truth.particle == 1]]).assign(particle=7)
    scores, _ = tracking_scores(both, summary, truth, true_tracks, pixel_size_nm=0.1)
    assert scores["long_tracks_matched"] == 1


def test_velocity_errors_count_true_tracks_of_ten_frames_or_more():
    from dislotrack.infer.evaluate import tracking_scores

    truth = pd.concat([pd.DataFrame({"frame": np.arange(n), "x": 10.0 + 40 * k + np.arange(n),
                                     "y": 10.0, "particle": k}) for k, n in enumerate((9, 10))])
    true_tracks = pd.DataFrame({"particle": [0, 1], "n_frames": [9, 10],
                                "glide_velocity_nm_s": [0.1, 0.1], "climb_velocity_nm_s": 0.0})
    pred = truth.assign(particle=truth.particle + 5)  # both found exactly
    summary = pd.DataFrame({"particle": [5, 6], "glide_velocity_nm_s": [0.2, 0.1],
                            "climb_velocity_nm_s": [0.0, 0.0]})
    scores, table = tracking_scores(pred, summary, truth, true_tracks, pixel_size_nm=0.1)
    # Only the 10-frame track counts (its velocity is right; the 9-frame one's is not).
    assert (scores["long_tracks_matched"], scores["long_tracks_unmatched"]) == (1, 0)
    assert len(table) == 1 and scores["median_glide_rel_error"] == pytest.approx(0.0)


def test_split_holds_out_the_items_closest_to_the_fraction():
    from dislotrack.data_gen.sample import Sample
    from dislotrack.train.finetune import split_frames

    def item(name: str, n: int) -> list:
        return [Sample(np.zeros((8, 8), np.float32), pd.DataFrame(), np.zeros((8, 8), np.uint8),
                       {"source": name}) for _ in range(n)]

    # One movie of 100 frames and an image: whatever the order, the image is held out
    # (holding out the movie would train on one frame).
    frames = item("image.json", 1) + item("movie.json", 100)
    for seed in range(6):
        train, val, split = split_frames(frames, 0.2, np.random.default_rng(seed))
        assert (len(train), len(val), split) == (100, 1, "items")
    # Ten items of 1, 2, ..., 10 frames (55): 20 % is 11 frames, and whole items get there.
    frames = [f for k in range(1, 11) for f in item(f"m{k}.json", k)]
    for seed in range(6):
        _, val, _ = split_frames(frames, 0.2, np.random.default_rng(seed))
        assert abs(len(val) - 11) <= 2


def test_rock_salt_masks_of_two_levels_read_as_0_1_others_are_refused(tmp_path):
    import tifffile

    generate_dataset(out=tmp_path, n=1, size=32, mode="stem", seed=1, progress=False)
    (side,) = find_annotations(tmp_path)
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 4:12, 4:20] = 255  # ImageJ's binary masks
    tifffile.imwrite(tmp_path / "image_00000_rs.tif", mask)
    ann = read_annotation(side)
    assert set(np.unique(ann.rs_mask)) == {0, 1} and ann.rs_mask.sum() == 8 * 16
    mask[0, 20:, 20:] = 128
    tifffile.imwrite(tmp_path / "image_00000_rs.tif", mask)
    with pytest.raises(ValueError, match=r"image_00000_rs.tif is not a binary mask: values 0, 128, 255"):
        read_annotation(side)


def test_a_missing_image_or_cores_table_is_named_with_what_was_found(tmp_path):
    import imageio.v3 as iio

    generate_dataset(out=tmp_path, n=1, size=32, mode="stem", seed=1, progress=False)
    (side,) = find_annotations(tmp_path)
    (tmp_path / "image_00000_cores.csv").unlink()
    with pytest.raises(ValueError, match=r"no image_00000_cores.csv next to it \(write one with just "
                                         r"the header line for an image without cores\)"):
        read_annotation(side)
    (tmp_path / "image_00000.tif").unlink()
    iio.imwrite(tmp_path / "image_00000.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"no image_00000.tif next to it .*found image_00000.png: "
                                         r"annotations need a .tif \(or .tiff\)"):
        read_annotation(side)


def test_finetune_on_positions_only_annotations(tmp_path, capfd):
    # A lab that clicked core positions but not h: heatmaps train, h neither trains nor scores.
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=3, size=64, mode="stem", seed=3, density=8.0, perfect_fraction=0.0,
                     basal_fraction=0.0, progress=False)
    for csv in lab.glob("*_cores.csv"):
        pd.read_csv(csv).drop(columns=["hx", "hy"]).to_csv(csv, index=False)
    assert main(["finetune", "--data", str(lab), "--out", str(tmp_path / "ft"),  # bundled base
                 "--epochs", "1", "--size", "32", "--batch-size", "2", "--crops-per-epoch", "4",
                 "--lr", "1e-6", "--accelerator", "cpu"]) == 0
    _, card = load_model(tmp_path / "ft")
    scores = card["metrics"]["finetune_validation"]
    assert np.isfinite(scores["val/loss"]) and "val/h_accuracy" not in scores
    assert scores["val/true_cores"] > 0 and scores.get("val/tp", 0) > 0


def test_finetune_refuses_a_crop_larger_than_the_frames_before_training(tmp_path, capsys):
    generate_dataset(out=tmp_path / "lab", n=2, size=80, mode="stem", seed=3, progress=False)
    _tiny(tmp_path / "base")
    base = ["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
            "--model", str(tmp_path / "base"), "--epochs", "1", "--accelerator", "cpu"]
    assert main([*base, "--size", "96", "--val-fraction", "0"]) == 2
    err = capsys.readouterr().err  # every item too small is named, with its size
    assert ("frames smaller than the training crop 96 px at the model's 0.1 nm/px: "
            "image_00000.json (80x80 px), image_00001.json (80x80 px); use --size 80 or less") in err
    assert main([*base, "--size", "34"]) == 2
    assert "--size) must be a multiple of 4 px" in capsys.readouterr().err
    assert not (tmp_path / "ft.safetensors").exists()


def test_evaluate_pools_the_cores_of_all_items_in_the_report_and_the_text(tmp_path):
    from dislotrack.data_gen.annotations import Annotation, write_annotation
    from dislotrack.infer.evaluate import POOLED, report_text

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    import tifffile

    for stem, n_true, shift, extra, rows in (("a", 3, 0.5, 1, 10), ("b", 2, 1.0, 0, 30)):
        cores = pd.DataFrame({"frame": 0, "x": 10.0 + 15 * np.arange(n_true), "y": 20.0,
                              "hx": 0.0, "hy": 1.0, "particle": range(n_true)})
        rs = np.zeros((1, 64, 64), np.uint8)
        rs[0, :rows] = 1  # rock salt in the top rows; the prediction covers 20 rows
        write_annotation(truth, stem, Annotation(np.zeros((1, 64, 64), np.float32), cores, rs,
                                                 0.1, None, {}))
        found = pd.concat([cores.assign(x=cores.x + shift), cores.head(extra).assign(x=2.0, y=60.0)])
        (pred / stem).mkdir(parents=True)
        found.drop(columns="particle").to_csv(pred / stem / "detections.csv", index=False)
        guess = np.zeros((1, 64, 64), np.uint8)
        guess[0, :20] = 1
        tifffile.imwrite(pred / stem / "rocksalt_mask.tif", guess)
    report = evaluate_folders(pred, truth, figures=False, progress=False)
    a, b, pooled = report["a"], report["b"], report[POOLED]
    assert (a["tp"], a["fp"], b["tp"], b["fp"]) == (3, 1, 2, 0)
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (a["tp"] + b["tp"], 1, a["fn"] + b["fn"])
    # RMSE over every matched pair: 0.5 px and 1 px shifts at 0.1 nm/px.
    n = a["tp"] + b["tp"]
    assert pooled["rmse_nm"] == pytest.approx(np.sqrt((a["tp"] * 0.05**2 + b["tp"] * 0.1**2) / n))
    # Rock salt pooled over both items' pixels: (10 + 20) / (20 + 30) rows, not the mean IoU.
    assert (a["rs_iou"], b["rs_iou"], pooled["rs_iou"]) == (0.5, pytest.approx(2 / 3), 0.6)
    assert json.loads((pred / "evaluation.json").read_text())[POOLED] == pooled
    last = report_text(report).splitlines()[-1]
    assert last.startswith(POOLED) and f"{pooled['rmse_nm']:.3f}" in last


def test_evaluate_notes_calibrations_that_differ_and_items_a_model_was_tuned_on(tmp_path):
    from dislotrack.infer.evaluate import POOLED

    truth, pred = _truth_as_predictions(tmp_path, size=32)
    ann = read_annotation(truth / "image_00000.json")
    summary = {"model": {"id": "mine", "sha256": "ab", "finetuned_on": {
                   "data": str(truth.resolve()), "split": "items", "val_items": ["image_00001.json"]}},
               "calibration": {"pixel_size_nm": ann.pixel_size_nm * 1.25, "pixel_size_source": "user",
                               "frame_interval_s": None, "frame_interval_source": None}}
    for stem in ("image_00000", "image_00001"):
        (pred / stem / "summary.json").write_text(json.dumps(summary))
    report = evaluate_folders(pred, truth, figures=False, progress=False)
    tuned, held = report["image_00000"], report["image_00001"]
    assert tuned["trained_on"] is True and "trained_on" not in held
    lines = report_text(report).splitlines()  # marked in the table itself, not only in a note
    assert [ln.split()[0] for ln in lines[1:3]] == ["image_00000*", "image_00001"]
    assert lines[-1].startswith("* the predicting model was fine-tuned on this item: not a test")
    assert "mine was fine-tuned on this item" in tuned["note"]
    assert f"infer used a pixel size of {ann.pixel_size_nm * 1.25:.4g} nm (user), the annotation " \
           f"says {ann.pixel_size_nm:.4g} nm: infer again with --pixel-size" in held["note"]
    assert POOLED not in report  # one item is left once the one trained on is left out
    # Read from the file: either may be the typo.
    from dislotrack.infer.evaluate import calibration_notes

    (note,) = calibration_notes({"calibration": {"pixel_size_nm": 0.035, "pixel_size_source": "file"}},
                                0.08, None)
    assert note.endswith("(file), the annotation says 0.08 nm: correct the annotation, or infer "
                         "again with --pixel-size 0.08")
    # Held out by frames (one annotated item): the model trained on the item's other frames.
    summary["model"]["finetuned_on"].update(split="frames", val_items=["image_00000.json"])
    (pred / "image_00000" / "summary.json").write_text(json.dumps(summary))
    assert evaluate_folders(pred, truth, figures=False, progress=False)["image_00000"]["trained_on"]
    # The annotations copied elsewhere: the trained-on image is known by its content.
    import shutil

    copy = shutil.copytree(truth, tmp_path / "copy")
    summary["model"]["finetuned_on"].update(split="items", val_items=["image_00001.json"],
                                            train_items_sha256=[file_sha256(truth / "image_00000.tif")])
    for stem in ("image_00000", "image_00001"):
        (pred / stem / "summary.json").write_text(json.dumps(summary))
    report = evaluate_folders(pred, copy, figures=False, progress=False)
    assert report["image_00000"].get("trained_on") and "trained_on" not in report["image_00001"]
    # An image re-saved after fine-tuning (other bytes) in the folder it trained from: the
    # folder rule still knows it.
    summary["model"]["finetuned_on"]["train_items_sha256"] = ["0" * 64]
    for stem in ("image_00000", "image_00001"):
        (pred / stem / "summary.json").write_text(json.dumps(summary))
    report = evaluate_folders(pred, truth, figures=False, progress=False)
    assert report["image_00000"].get("trained_on") and "trained_on" not in report["image_00001"]
    # A card that names the items it trained on (0.1.31): an image added to the folder after
    # fine-tuning is a test, not trained on, though it sits in that folder.
    summary["model"]["finetuned_on"].update(train_items=["image_00000.json"], val_items=[])
    for stem in ("image_00000", "image_00001"):
        (pred / stem / "summary.json").write_text(json.dumps(summary))
    report = evaluate_folders(pred, truth, figures=False, progress=False)
    assert report["image_00000"].get("trained_on") and "trained_on" not in report["image_00001"]
    assert "fine-tuned on this item" not in report["image_00001"]["note"]


def test_a_hand_annotated_movie_gets_identity_switches_from_its_particle_ids(tmp_path):
    from dislotrack.data_gen.annotations import Annotation, write_annotation

    cores = pd.DataFrame({"frame": [0, 1, 2, 0, 1, 2], "x": [10.0, 11, 12, 40, 40, 40],
                          "y": [20.0, 20, 20, 30, 30, 30], "hx": 0.0, "hy": 1.0,
                          "particle": [0, 0, 0, 1, 1, 1]})
    write_annotation(tmp_path / "truth", "hand", Annotation(np.zeros((3, 64, 64), np.float32), cores,
                                                            None, 0.1, 1.0, {}))
    out = tmp_path / "pred" / "hand"
    out.mkdir(parents=True)
    pred = cores.drop(columns="particle").assign(score=0.9)
    pred.to_csv(out / "detections.csv", index=False)
    # The tracker swapped the two cores in the last frame.
    pred.assign(particle=[5, 5, 6, 6, 6, 5]).to_csv(out / "tracks.csv", index=False)
    r = evaluate_folders(tmp_path / "pred", tmp_path / "truth", progress=False)["hand"]
    assert r["identity_switches"] == 2 and r["switches_per_track"] == 1.0
    assert "median_glide_rel_error" not in r  # no true velocities in a hand annotation
    # Clicked without particle ids: no switches to score, and the report says why.
    csv = tmp_path / "truth" / "hand_cores.csv"
    pd.read_csv(csv).drop(columns="particle").to_csv(csv, index=False)
    r = evaluate_folders(tmp_path / "pred", tmp_path / "truth", progress=False)["hand"]
    assert "identity_switches" not in r and "no particle ids" in r["note"] and r["tp"] == 6


def test_finetune_names_images_without_an_annotation(tmp_path, caplog):
    import tifffile

    from dislotrack.train.finetune import annotated_frames

    generate_dataset(out=tmp_path, n=1, size=32, mode="stem", seed=1, progress=False)
    tifffile.imwrite(tmp_path / "forgotten.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "image_00000_rs.tif", np.zeros((32, 32), np.uint8))  # its mask: fine
    with caplog.at_level("WARNING"):
        assert len(annotated_frames(tmp_path, 0.1)) == 1
    assert "1 image(s) without an annotation (<stem>.json) are not used: forgotten.tif" in caplog.text


def test_finetune_without_its_annotation_folder_is_refused_before_the_imports(tmp_path, capsys):
    import subprocess
    import sys

    assert main(["finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"error: --data (the annotation folder) {tmp_path / 'nope'} does not exist" in err
    code = ("import sys; from dislotrack.infer.cli import main; "
            f"assert main(['finetune', '--data', {str(tmp_path / 'nope')!r}, '--out', 'm']) == 2; "
            "assert 'lightning' not in sys.modules and 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_finetune_names_every_unusable_annotation_at_once(tmp_path):
    from dislotrack.train.finetune import annotated_frames

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=3, size=32, mode="stem", seed=3, progress=False)
    (lab / "image_00000_cores.csv").write_text("x_px,y,hx,hy\n1,2,0,1\n")
    side = json.loads((lab / "image_00002.json").read_text())
    (lab / "image_00002.json").write_text(json.dumps({**side, "pixel_size_nm": 0.3}))
    import tifffile

    tif = lab / "image_00002.tif"  # uncalibrated: the fringe check, not the calibration one
    tifffile.imwrite(tif, tifffile.imread(tif))
    with pytest.raises(ValueError, match=r"2 of 3 annotations cannot be used: .*image_00000_cores.csv "
                                         r"lacks columns .*image_00002.json: pixel_size_nm 0.3"):
        annotated_frames(lab, 0.1)


def _two_images():
    """A frame and another image of the same statistics (fringes vs a slow wave)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    frame = 100 + 5 * np.cos(yy / 1.5) + 3 * np.sin((xx + yy) / 40) + rng.normal(0, 2, (256, 256))
    other = 100 + 3 * np.sin((xx - yy) / 30) + rng.normal(0, 2, (256, 256))
    return frame, other


def test_image_check_refuses_another_image_despite_nan_blocks_or_a_pedestal(tmp_path):
    from dislotrack.infer.evaluate import _image_mismatch
    from dislotrack.infer.outputs import frame_fingerprint

    frame, other = _two_images()

    def verdict(predicted, annotated):
        summary = {"input": {"path": "m.dm4", "sha256": "ab",
                             "fingerprint": frame_fingerprint(predicted)}}
        return _image_mismatch(summary, annotated, tmp_path / "m.tif") or ""

    wide = other.copy()
    wide[:, :40] = np.nan  # an alignment border: a column of blocks all NaN
    dotted = other.copy()
    dotted[::16, ::16] = np.nan  # masked dead pixels: a NaN in every block
    assert "another image" in verdict(frame, wide) and "another image" in verdict(frame, dotted)
    # Detector counts on an offset: the fingerprint keeps the digits that tell them apart.
    assert verdict(30000 + 4 * frame, 30000 + 4 * frame) == ""
    assert "another image" in verdict(30000 + 4 * frame, 30000 + 4 * other)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert verdict(frame, np.full((256, 256), 5.0)) == ""  # flat: nothing to compare


@pytest.fixture
def movie_item(tmp_path):
    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=1, size=64, mode="stem", movie_frames=3, seed=3, progress=False)
    return lab / "movie_00000.json", lab / "movie_00000_cores.csv"


def _read_quietly(side):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_annotation(side)


def test_annotation_columns_versions_and_the_nm_hint_are_exact(movie_item, tmp_path):
    side, csv = movie_item
    px = read_annotation(side).pixel_size_nm
    # Two cores a frame (the hint needs three) at positions that look like nm: no hint.
    csv.write_text("frame,x,y,hx,hy\n" + "".join(f"{f},{x * px},{y * px},0,1\n"
                                                for f, x, y in ((0, 10, 12), (0, 40, 50), (1, 11, 12))))
    _read_quietly(side)
    # Three cores along the top edge in px: x beyond the nm extent, y within it: no hint.
    csv.write_text("frame,x,y,hx,hy\n0,60,1,0,1\n0,30,3,0,1\n0,5,5,0,1\n")
    _read_quietly(side)
    csv.write_text("frame,x,y,hx\n0,10,12,1\n1,11,12,1\n")
    with pytest.raises(ValueError, match=r"lacks columns \['hy'\]"):
        read_annotation(side)
    meta = json.loads(side.read_text())
    for bad, said in ((True, "version must be a whole number"), (2, "annotation version 2")):
        side.write_text(json.dumps({**meta, "version": bad}))
        with pytest.raises(ValueError, match=said):
            read_annotation(side)
    # At 1 nm/px, positions in px are never taken for nm.
    cores = pd.DataFrame({"frame": 0, "x": [10.0, 40, 60], "y": [12.0, 50, 30], "hx": 0.0,
                          "hy": 1.0, "particle": [0, 1, 2]})
    coarse = write_annotation(tmp_path, "coarse", Annotation(np.zeros((1, 64, 64), np.float32),
                                                            cores, None, 1.0, None, {}))
    _read_quietly(coarse)


def test_finetune_without_held_out_frames_calls_its_scores_training_losses(tmp_path, capsys):
    generate_dataset(out=tmp_path / "lab", n=2, size=64, mode="stem", seed=3, progress=False)
    _tiny(tmp_path / "base")
    assert main(["finetune", "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "ft"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "2", "--val-fraction", "0",
                 "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "no frames were held out (--val-fraction 0): the last training losses" in out
    assert "(training losses)" in out and "validation rows" not in out
    metrics = load_model(tmp_path / "ft")[1]["metrics"]
    assert "finetune_validation" not in metrics and "train/loss" in metrics["finetune_training"]
    # With the default fraction but one frame only, it says so, not "--val-fraction 0".
    one = tmp_path / "one"
    one.mkdir()
    for p in (tmp_path / "lab").glob("image_00000*"):
        (one / p.name).write_bytes(p.read_bytes())
    assert main(["finetune", "--data", str(one), "--out", str(tmp_path / "ft1"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "2", "--accelerator", "cpu"]) == 0
    assert ("no frames were held out (only 1 frame: nothing left to validate on; add items or "
            "annotate more frames)") in capsys.readouterr().out
    # Two frames of one movie at the default fraction: 0.4 of a frame rounds to none.
    generate_dataset(out=tmp_path / "mov", n=1, size=64, mode="stem", movie_frames=2, seed=3,
                     progress=False)
    assert main(["finetune", "--data", str(tmp_path / "mov"), "--out", str(tmp_path / "ft2"),
                 "--model", str(tmp_path / "base"), "--epochs", "1", "--size", "32",
                 "--batch-size", "2", "--crops-per-epoch", "2", "--accelerator", "cpu"]) == 0
    assert ("no frames were held out (--val-fraction 0.2 of 2 frames rounds to none; raise it, "
            "or add items)") in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no annotation sidecar"):
        read_annotation(tmp_path / "mov" / "nosuch.json")


def test_finetune_warns_where_it_scores_below_the_base_model():
    from dislotrack.train.finetune import worse_than_base

    assert "F1 0.6, base 0.7" in worse_than_base({"val/f1": 0.6}, {"val/f1": 0.7})
    assert worse_than_base({"val/f1": 0.7}, {"val/f1": 0.7}) is None
    assert worse_than_base({"val/f1": 0.8}, {"val/f1": 0.7}) is None
    assert worse_than_base({}, {"val/f1": 0.7}) is None  # no cores held out: undefined
    assert worse_than_base({"val/f1": 0.5}, {}) is None


def test_finetune_refuses_an_annotation_whose_pixel_size_disagrees_with_its_tiffs_own(tmp_path, capsys):
    # The TIFF's own calibration is OME (as FEI, DM-saved ... TIFFs: not ImageJ, which
    # read_annotation checks): infer reads it, so fine-tuning at the sidecar's scale would
    # train at one scale and infer at another.
    import tifffile

    from dislotrack.infer.readers import annotation_pixel_size_conflict, open_movie

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=2, size=64, mode="stem", seed=3, progress=False)
    side = lab / "image_00000.json"
    meta = json.loads(side.read_text())
    image = tifffile.imread(lab / "image_00000.tif")
    own = {"PhysicalSizeX": 0.035, "PhysicalSizeXUnit": "nm",
           "PhysicalSizeY": 0.035, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(lab / "image_00000.tif", image, ome=True, metadata=own)
    for agrees in (0.035, 0.0354):  # within 2 %: quiet
        side.write_text(json.dumps({**meta, "pixel_size_nm": agrees}))
        assert annotation_pixel_size_conflict(side) is None
    side.write_text(json.dumps({**meta, "pixel_size_nm": 0.08}))
    read_annotation(side)  # the annotation reader alone does not see the OME calibration
    said = annotation_pixel_size_conflict(side)
    assert said == (f"{lab / 'image_00000.tif'}: image_00000.json says pixel_size_nm 0.08, the file's "
                    "own calibration 0.035 nm/px; correct whichever is wrong")
    assert annotation_pixel_size_conflict(lab / "image_00001.json") is None  # ImageJ, agreeing
    # infer keeps the file's and says so.
    with open_movie(lab / "image_00000.tif") as m:
        assert (m.calibration.pixel_size_nm, m.calibration.pixel_size_source) == (0.035, "file")
        assert any("image_00000.json says pixel_size_nm 0.08" in w and w.endswith("the file's is used")
                   for w in m.calibration.warnings)
    _tiny(tmp_path / "base")
    assert main(["finetune", "--data", str(lab), "--out", str(tmp_path / "ft"), "--model",
                 str(tmp_path / "base"), "--epochs", "1", "--size", "32", "--accelerator", "cpu"]) == 2
    assert "1 annotation(s) disagree with their image's own calibration: " in capsys.readouterr().err
    assert not (tmp_path / "ft.safetensors").exists()
    # An unreadable image does not hide the others' conflicts (finetune names it after).
    (lab / "image_00001.tif").write_bytes(b"not a tiff")
    assert main(["finetune", "--data", str(lab), "--out", str(tmp_path / "ft"), "--model",
                 str(tmp_path / "base"), "--epochs", "1", "--size", "32", "--accelerator", "cpu"]) == 2
    assert "1 annotation(s) disagree with their image's own calibration: " in capsys.readouterr().err


def test_infer_notes_a_sidecar_frame_interval_that_disagrees_with_the_files(tmp_path):
    from dislotrack.infer.readers import open_movie

    generate_dataset(out=tmp_path, n=1, size=64, mode="stem", movie_frames=2, seed=3,
                     frame_interval=0.5, progress=False)
    side = tmp_path / "movie_00000.json"
    with open_movie(tmp_path / "movie_00000.tif") as m:
        assert m.calibration.frame_interval_s == 0.5 and not m.calibration.warnings
    side.write_text(json.dumps({**json.loads(side.read_text()), "frame_interval_s": 2.0}))
    with open_movie(tmp_path / "movie_00000.tif") as m:
        assert (m.calibration.frame_interval_s, m.calibration.frame_interval_source) == (0.5, "file")
        assert m.calibration.warnings == ("movie_00000.json says frame_interval_s 2, the file's own "
                                          "calibration 0.5 s: the file's is used",)
        # Where the user gives the interval, the file-vs-sidecar note is moot.
        from dislotrack.infer.calibration import resolve_calibration

        given = resolve_calibration(m.calibration, pixel_size_nm=None, frame_interval_s=2.0)
        assert given.frame_interval_s == 2.0 and not any("says frame_interval_s" in w for w in given.warnings)


def test_finetune_warns_of_images_without_fringes_at_the_annotated_pixel_size(tmp_path, caplog):
    # Plain lab TIFFs carry no calibration to check pixel_size_nm against; their (003)
    # fringes do (as infer checks its input): a slipped value shows none where expected.
    import logging

    from dislotrack.infer.cli import check_annotated_images

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=2, size=96, mode="hrtem", dose=(3000, 3000), seed=3, progress=False)
    assert check_annotated_images(lab) == []
    import tifffile

    image = lab / "image_00001.tif"
    tifffile.imwrite(image, tifffile.imread(image))  # a plain TIFF: no calibration of its own
    side = lab / "image_00001.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "pixel_size_nm": 0.05}))  # a slip
    with caplog.at_level(logging.WARNING, logger="dislotrack"):
        assert check_annotated_images(lab) == ["image_00001.tif (0.05 nm/px)"]
    assert "no 0.473 nm (003) lattice fringes stand out in image_00001.tif (0.05 nm/px)" in caplog.text
    # A blanked frame that keeps its scale bar shows nothing: nothing to check there.
    blank = np.zeros_like(tifffile.imread(image))
    blank[-6:-3, 4:40] = 1.0
    tifffile.imwrite(image, blank)
    assert check_annotated_images(lab) == []


def test_finetune_keeps_the_base_models_loss_weights(tmp_path, monkeypatch):
    # `fine` was trained with the heatmap loss weighted 4x: fine-tuning it with the
    # defaults (1x) would tip its balance of heatmap, h and rock-salt losses.
    from dislotrack.train import finetune as ft_module

    generate_dataset(out=tmp_path / "lab", n=2, size=64, mode="stem", seed=3, progress=False)
    trained = {"module": {"lr": 0.003, "weight_decay": 1e-4, "w_heatmap": 4.0, "w_h": 0.5, "w_rs": 0.25}}
    _tiny(tmp_path / "base", training=trained)
    made = []
    monkeypatch.setattr(ft_module, "DislocationModule",
                        lambda *a, **kw: made.append(kw) or DislocationModule(*a, **kw))
    ft_module.finetune(data=tmp_path / "lab", out=tmp_path / "ft", model=tmp_path / "base", epochs=1,
                       size=32, batch_size=2, crops_per_epoch=2, accelerator="cpu")
    weights = {"weight_decay": 1e-4, "w_heatmap": 4.0, "w_h": 0.5, "w_rs": 0.25}
    assert {k: made[0][k] for k in weights} == weights and made[0]["lr"] == 5e-4  # finetune's own lr
    card = load_model(tmp_path / "ft")[1]
    assert card["training"]["finetune"]["loss_weights"] == weights
    # A model fine-tuned again keeps what its fine-tuning used.
    assert ft_module.base_loss_weights(card) == weights
    # From Python as from the CLI, the model written is not replaced unless asked.
    with pytest.raises(FileExistsError, match="ft.safetensors exists"):
        ft_module.finetune(data=tmp_path / "lab", out=tmp_path / "ft", model=tmp_path / "base",
                           epochs=1, size=32, batch_size=2, crops_per_epoch=2, accelerator="cpu")


def test_finetune_refuses_a_one_pixel_bottleneck_of_one_crop(tmp_path):
    # batch norm in training needs more than one value per channel: torch failed mid-run.
    from dislotrack.train.finetune import finetune

    generate_dataset(out=tmp_path / "lab", n=2, size=64, mode="stem", seed=3, progress=False)
    _tiny(tmp_path / "base")  # depth 2: a 4 px crop is 1 x 1 px at the bottleneck
    with pytest.raises(ValueError, match=r"size \(--size\) 4 with batch_size \(--batch-size\) 1: "
                                         r"the network's batch norm has one value per channel"):
        finetune(data=tmp_path / "lab", out=tmp_path / "ft", model=tmp_path / "base", epochs=1,
                 size=4, batch_size=1, crops_per_epoch=2, accelerator="cpu")
    assert not (tmp_path / "ft.safetensors").exists()


def test_a_brief_match_does_not_take_a_predicted_track_from_its_true_track():
    # Predicted track 7 follows true track 0 for 5 frames and touches true track 1 in 2;
    # predicted track 8 follows true track 0 for 4 more. Most matched frames in all would
    # pair 0 with 8 and 1 with 7, and then drop the 2-frame pair: 7 is track 0's.
    from dislotrack.infer.evaluate import tracking_scores

    frames = np.arange(12)
    truth = pd.concat([pd.DataFrame({"frame": frames, "x": 10.0 + frames, "y": 10.0, "particle": 0}),
                       pd.DataFrame({"frame": frames, "x": 60.0, "y": 60.0, "particle": 1})])
    true_tracks = pd.DataFrame({"particle": [0, 1], "n_frames": 12, "glide_velocity_nm_s": [0.1, 0.0],
                                "climb_velocity_nm_s": 0.0})
    pred = pd.concat([truth[(truth.particle == 0) & truth.frame.between(0, 4)].assign(particle=7),
                      truth[(truth.particle == 1) & truth.frame.between(5, 6)].assign(particle=7),
                      truth[(truth.particle == 0) & truth.frame.between(7, 10)].assign(particle=8)])
    summary = pd.DataFrame({"particle": [7, 8], "glide_velocity_nm_s": [0.1, 0.3],
                            "climb_velocity_nm_s": [0.0, 0.0]})
    scores, table = tracking_scores(pred, summary, truth, true_tracks, pixel_size_nm=0.1)
    assert table.set_index("particle").loc[0, "pred"] == 7
    assert scores["median_glide_rel_error"] == pytest.approx(0.0)


def test_scores_of_swapped_or_wrong_tables_name_what_each_side_needs():
    # From a notebook: a true tracks table for the cores, or true and predicted events
    # swapped, gave pandas' bare AttributeError / KeyError.
    events_px = pd.DataFrame({"frame": [1], "kind": ["nucleation"], "x": [10.0], "y": [10.0]})
    events_nm = pd.DataFrame({"frame": [1], "kind": ["nucleation"], "x_nm": [1.0], "y_nm": [1.0]})
    with pytest.raises(ValueError, match=r"pred \(events.csv: x, y in px\) lacks columns x, y"):
        event_scores(events_nm, events_px, pixel_size_nm=0.1)
    with pytest.raises(ValueError, match=r"truth \(annotated cores, px\) lacks column frame"):
        detection_scores(events_px.assign(hx=0.0, hy=1.0), pd.DataFrame({"x": [1.0], "y": [2.0]}),
                         pixel_size_nm=0.1)
    with pytest.raises(TypeError, match=r"pred \(detections, px\) must be a pandas DataFrame"):
        detection_scores([1, 2], events_px, pixel_size_nm=0.1)
