"""How finetune reads a lab's annotations and reports on them: spreadsheet dialects of
the cores table, misnamed files, a pixel size twice the true one, and finetune's own
outputs (metrics.csv, no rock-salt loss without masks). Small generated sets."""

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from dislotrack.data_gen.annotations import read_annotation
from dislotrack.data_gen.export import generate_dataset
from dislotrack.infer.cli import main
from dislotrack.models.io import load_model, save_model
from dislotrack.models.unet import UNet, UNetConfig

TINY_FINETUNE = ["--epochs", "1", "--size", "32", "--batch-size", "2", "--crops-per-epoch", "4",
                 "--accelerator", "cpu"]


@pytest.fixture
def lab(tmp_path):
    generate_dataset(out=tmp_path / "lab", n=2, size=64, mode="stem", seed=3, progress=False)
    return tmp_path / "lab"


def _read(side):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nm hint of a few cores near a corner
        return read_annotation(side)


def test_cores_tables_saved_by_european_excel_or_with_capital_columns_read_the_same(lab):
    side, table = lab / "image_00001.json", lab / "image_00001_cores.csv"
    truth = _read(side).cores
    cores = pd.read_csv(table)
    for written in (lambda: cores.to_csv(table, index=False, sep=";", decimal=","),  # Excel, de/fr
                    lambda: cores.to_csv(table, index=False, sep="\t"),
                    lambda: cores.rename(columns={"x": "X", "y": "Y", "hx": "HX", "frame": "Frame"}
                                         ).to_csv(table, index=False),
                    lambda: table.write_text("\ufeff" + cores.to_csv(index=False))):  # a BOM
        written()
        pd.testing.assert_frame_equal(_read(side).cores, truth)
    # x and X both: which is meant is unclear, so nothing is renamed and the table is refused.
    cores.assign(X=cores.x).drop(columns="y").to_csv(table, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['y'\]: it has \['frame', 'x', 'hx'"):
        _read(side)


def test_an_imagej_results_table_is_refused_saying_how_to_convert_it(lab):
    table = lab / "image_00001_cores.csv"
    cores = pd.read_csv(table)
    # Fiji's multi-point Measure: row numbers under a blank header, X, Y (calibrated, pixel
    # centres at .5), Slice from 1.
    pd.DataFrame({" ": np.arange(1, len(cores) + 1), "X": cores.x + 0.5, "Y": cores.y + 0.5,
                  "Slice": 1}).to_csv(table, index=False)
    with pytest.raises(ValueError, match=r"image_00001_cores.csv looks like an ImageJ/Fiji Results "
                       r"table \(columns 'Unnamed: 0', X, Y, Slice\), which is not read as it is: "
                       r"ImageJ gives X, Y in the image's calibrated unit .* pixel centres at .5 .*"
                       r"counts Slice from 1; write the header x,y"):
        _read(lab / "image_00001.json")


def test_a_missing_cores_table_names_the_misnamed_one_in_the_folder(lab):
    (lab / "image_00001_cores.csv").rename(lab / "img_00001_cores.csv")
    with pytest.raises(ValueError, match=r"image_00001.json: no image_00001_cores.csv next to it "
                       r"\(.*\); img_00001_cores.csv in that folder belong\(s\) to no <stem>.json: "
                       r"if one is this item's, rename it image_00001_cores.csv"):
        _read(lab / "image_00001.json")


def test_finetune_warns_where_the_pixel_size_is_twice_the_true_one(tmp_path, caplog):
    """At twice the true pixel size the in-layer fringes (~0.24 nm) pass for (003); the
    (003) fringes then stand out at twice their spacing, where no layered-oxide fringes lie."""
    from dislotrack.train.finetune import annotated_frames

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=3, size=128, mode="hrtem", dose=(3000, 3000), seed=3, progress=False)
    with caplog.at_level(logging.WARNING, logger="dislotrack"):
        annotated_frames(lab, 0.1)
    assert "twice" not in caplog.text  # the right pixel size: no warning
    for stem in ("image_00000", "image_00002"):  # plain TIFFs (no calibration), a slipped 2x
        image, side = lab / f"{stem}.tif", lab / f"{stem}.json"
        tifffile.imwrite(image, tifffile.imread(image))
        side.write_text(json.dumps({**json.loads(side.read_text()), "pixel_size_nm": 0.2}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dislotrack"):
        annotated_frames(lab, 0.1)
    assert ("lattice fringes 0.946 nm apart, twice the 0.473 nm (003) spacing, stand out in "
            "image_00000.tif (0.2 nm/px), image_00002.tif (0.2 nm/px) at the annotated pixel size: "
            "pixel_size_nm in their <stem>.json is probably twice the true one") in caplog.text
    from dislotrack.infer.lattice import fringes_twice_apart

    def twice(frame, ps):
        return fringes_twice_apart([frame], pixel_size_nm=ps, d_spacing_nm=0.473)

    frame = _read(lab / "image_00001.json").image[0]
    assert not twice(frame, 0.1) and twice(frame, 0.2)
    # No lattice, nothing to say: noise, a blank frame, NaN padding.
    noise = np.random.default_rng(0).normal(size=(128, 128))
    assert not twice(noise, 0.2) and not twice(np.zeros((64, 64)), 0.2)
    padded = frame.copy()
    padded[:10] = np.nan
    assert twice(padded, 0.2)


def _finetune_without_masks(tmp_path, out, *extra):
    lab = tmp_path / "lab3"
    if not lab.exists():
        generate_dataset(out=lab, n=3, size=64, mode="stem", seed=2, progress=False)  # 2 held-out cores
        for mask in lab.glob("*_rs.tif"):
            mask.unlink()
        torch.manual_seed(0)
        save_model(UNet(UNetConfig(base_channels=4, depth=2)), tmp_path / "base",
                   card={"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {}, "metrics": {}})
    assert main(["finetune", "--data", str(lab), "--out", str(tmp_path / out), "--model",
                 str(tmp_path / "base"), *extra, *TINY_FINETUNE]) == 0
    return pd.read_csv(tmp_path / f"{out}_logs" / "metrics.csv"), load_model(tmp_path / out)[1]["metrics"]


def test_finetunes_metrics_csv_has_the_missed_cores_as_its_card_has(tmp_path):
    logged, card = _finetune_without_masks(tmp_path, "ft")
    rows = logged.dropna(subset=["val/tp"])
    assert len(rows) == 2 and (rows["val/true_cores"] == 2).all()  # the base model's and the epoch's
    assert (rows["val/fn"] == rows["val/true_cores"] - rows["val/tp"]).all()
    assert list(logged.columns).index("val/fn") == list(logged.columns).index("val/fp") + 1
    assert rows["val/fn"].iloc[-1] == card["finetune_validation"]["val/fn"]  # the card's, as printed


def test_finetune_reports_no_rock_salt_loss_without_rock_salt_masks(tmp_path, capsys):
    # No mask anywhere: no rock-salt loss (it was logged and printed as 0, as if a real one).
    logged, _ = _finetune_without_masks(tmp_path, "ft")
    assert not [c for c in logged if c.startswith("train/rs")] and "train/heatmap" in logged
    capsys.readouterr()
    _, card = _finetune_without_masks(tmp_path, "ft0", "--val-fraction", "0")
    out, err = capsys.readouterr()
    assert "train/rs" not in out + err and "train/heatmap=" in err  # the table and the epoch line
    assert "train/loss" in card["finetune_training"] and "train/rs" not in card["finetune_training"]


def test_finetune_refuses_where_every_judgeable_item_has_its_positions_in_nm(lab):
    from dislotrack.train.finetune import annotated_frames

    generate_dataset(out=lab, n=3, size=64, mode="stem", seed=3, progress=False)
    in_nm = pd.DataFrame({"x": [0.5, 2.0, 4.5, 6.0], "y": [1.0, 5.5, 3.0, 0.5]})  # 6.4 nm wide
    in_px = in_nm * 10
    for stem, table in (("image_00000", in_nm), ("image_00001", in_nm), ("image_00002", in_nm[:2])):
        table.to_csv(lab / f"{stem}_cores.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each item's own hint
        with pytest.raises(ValueError, match=r"lab: the core positions of all 2 items whose units can "
                           r"be judged \(image_00000.json, image_00001.json\) lie within the image's "
                           r"size in nm: positions must be in pixels"):
            annotated_frames(lab, 0.1)  # two cores cannot be judged: image_00002 is not counted
        in_px.to_csv(lab / "image_00001_cores.csv", index=False)  # one item in pixels: a warning only
        assert len(annotated_frames(lab, 0.1)) == 3
        (lab / "image_00001.json").unlink()
        (lab / "image_00001.tif").unlink()
        (lab / "image_00001_cores.csv").unlink()
        assert len(annotated_frames(lab, 0.1)) == 2  # one item to judge: it may be a corner's cores


@pytest.mark.parametrize("seed", [5, 15, 18, 20, 24])
def test_a_coarse_frame_at_its_true_pixel_size_is_no_twofold_slip(seed):
    # At 0.2 nm/px the 0.24 nm in-layer fringes alias, at times near twice the (003)
    # spacing: what passed for (003) is then no reflection of that lattice.
    from dislotrack.data_gen.sample import GeneratorConfig, make_sample
    from dislotrack.infer.lattice import fringes_twice_apart, measure_lattice

    cfg = GeneratorConfig(size=256, pixel_size=0.2, mode="hrtem", perfect_fraction=0.0)
    image = make_sample(np.random.default_rng(seed), cfg).image
    assert measure_lattice([image], pixel_size_nm=0.2, d_spacing_nm=0.473) is not None
    assert not fringes_twice_apart([image], pixel_size_nm=0.2, d_spacing_nm=0.473)


def test_reversed_h_is_warned_about_from_the_base_model_s_held_out_h():
    from dislotrack.train.finetune import reversed_h_warning

    said = reversed_h_warning({"val/h_accuracy": 0.05, "val/tp": 12.0})
    assert said.startswith("the base model's h agrees with the annotated h at only 5% of the 12")
    assert "reversed" in said
    for quiet in ({"val/h_accuracy": 0.9, "val/tp": 12.0},  # agrees
                  {"val/h_accuracy": 0.0, "val/tp": 3.0},  # too few cores to tell
                  {"val/tp": 12.0}, {}):  # h unknown (positions only), no validation
        assert reversed_h_warning(quiet) is None


def test_finetune_on_reversed_h_says_so_before_training(tmp_path, caplog):
    # Labs annotating h out of the extra half-plane: the bundled model's h then disagrees
    # with nearly every annotated core (and it would learn to reverse every climb sign).
    import logging

    import pandas as pd

    from dislotrack.data_gen.export import generate_dataset
    from dislotrack.train.finetune import finetune

    lab = tmp_path / "lab"
    generate_dataset(out=lab, n=4, size=192, mode="stem", seed=5, dose=(3000.0, 3000.0),
                     density=4.0, progress=False)
    kw = dict(data=lab, epochs=1, size=64, batch_size=2, crops_per_epoch=2, val_fraction=0.5,
              accelerator="cpu")
    with caplog.at_level(logging.WARNING, logger="dislotrack.train.finetune"):
        finetune(out=tmp_path / "as_given", **kw)
    assert not [r for r in caplog.records if "reversed" in r.getMessage()]
    for csv in lab.glob("*_cores.csv"):
        cores = pd.read_csv(csv)
        cores.assign(hx=-cores.hx, hy=-cores.hy).to_csv(csv, index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dislotrack.train.finetune"):
        finetune(out=tmp_path / "reversed", **kw)
    assert [r for r in caplog.records if "is h annotated reversed?" in r.getMessage()]


def test_items_coarser_than_the_model_s_grid_are_warned_about_as_infer_does(tmp_path):
    from dislotrack.data_gen.export import generate_dataset
    from dislotrack.train.finetune import annotated_frames, upsampled_items

    generate_dataset(out=tmp_path / "lab", n=1, size=64, mode="stem", seed=2, pixel_size=0.1,
                     progress=False)
    said = upsampled_items(annotated_frames(tmp_path / "lab", 0.05), 0.05)  # `fine` on 0.1 nm/px
    assert said.startswith("the model works at 0.05 nm/px, finer than 1 item(s): "
                           "image_00000.json (0.1 nm/px): they are upsampled")
    assert "--model default" in said
    assert upsampled_items(annotated_frames(tmp_path / "lab", 0.1), 0.1) is None
    assert upsampled_items(annotated_frames(tmp_path / "lab", 0.09), 0.09) is None  # 1.1x: fine
