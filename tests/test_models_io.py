"""Tests of saving and loading networks, model cards and Lightning checkpoints."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re

import numpy as np
import pytest
import torch

import dislotrack.models.io as mio
from dislotrack.models.io import (
    REQUIRED_CARD_KEYS,
    load_lightning_checkpoint,
    load_model,
    save_model,
    validate_card,
)
from dislotrack.models.normalise import NORMALISATION
from dislotrack.models.unet import UNet, UNetConfig

CONFIG = UNetConfig(base_channels=4, depth=2)


def user_card():
    return {
        "canonical_pixel_size_nm": 0.1,
        "generator": {"mode": "hrtem", "n_samples": 10, "seed": 1},
        "training": {"epochs": 2, "lr": np.float32(1e-3)},
        "metrics": {"f1": np.float64(0.91), "per_class": np.array([0.5, 0.25])},
    }


def trained_like_model(seed: int) -> UNet:
    """Tiny model with non-trivial weights and batch-norm statistics."""
    torch.manual_seed(seed)
    net = UNet(CONFIG).train()
    net(torch.randn(4, 1, 16, 16))  # updates the running statistics
    return net.eval()


def test_round_trip_gives_identical_outputs_and_complete_card(tmp_path):
    net = trained_like_model(0)
    save_model(net, tmp_path / "sub" / "tiny.safetensors", card=user_card())
    loaded, card = load_model(tmp_path / "sub" / "tiny")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert not loaded.training
    assert set(REQUIRED_CARD_KEYS) <= set(card)
    assert card["architecture"] == CONFIG.to_dict()
    assert card["input_normalisation"] == NORMALISATION
    assert set(card["outputs"]) == {"0", "1", "2", "3"}
    assert card["metrics"] == {"f1": 0.91, "per_class": [0.5, 0.25]}
    weights = tmp_path / "sub" / "tiny.safetensors"
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["model_id"] == "tiny"
    on_disk = json.loads((tmp_path / "sub" / "tiny.json").read_text())
    assert "sha256" not in on_disk and "model_id" not in on_disk


def test_resaving_a_loaded_card_drops_load_time_keys(tmp_path):
    save_model(trained_like_model(1), tmp_path / "a", card=user_card())
    net, card = load_model(tmp_path / "a.json")
    save_model(net, tmp_path / "b", card=card)
    on_disk = json.loads((tmp_path / "b.json").read_text())
    assert "sha256" not in on_disk and "model_id" not in on_disk
    assert on_disk["created"] == card["created"]


def test_card_validation_errors(tmp_path):
    net = trained_like_model(2)
    card = user_card()
    del card["metrics"]
    with pytest.raises(ValueError, match=r"lacks required keys \['metrics'\]"):
        save_model(net, tmp_path / "m", card=card)
    with pytest.raises(ValueError, match="differs from the model's config"):
        save_model(net, tmp_path / "m", card={**user_card(), "architecture": {"depth": 3}})
    full = mio._complete_card(net, user_card())
    validate_card(full)
    with pytest.raises(ValueError, match=r"\[nm/px\], got -0.1"):
        validate_card({**full, "canonical_pixel_size_nm": -0.1})
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        validate_card({**full, "architecture": {**full["architecture"], "width": 2}})
    assert not list(tmp_path.iterdir())  # nothing written when the card is bad


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(tmp_path / "nope")
    save_model(trained_like_model(3), tmp_path / "m", card=user_card())
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="m.json"):
        load_model(tmp_path / "m.safetensors")


def test_missing_bundled_model_raises_clear_error(monkeypatch):
    monkeypatch.setattr(mio, "DEFAULT_MODEL", "weights/no_such_model.safetensors")
    with pytest.raises(FileNotFoundError, match="no bundled model"):
        load_model()


def test_bundled_model_ships_and_loads():
    path = importlib.resources.files("dislotrack.models").joinpath(mio.DEFAULT_MODEL)
    assert path.is_file(), "the package must ship models/weights/default.safetensors"
    net, card = load_model()
    assert card["model_id"] == "default"
    validate_card(card)
    assert card["training"]["recipe"] == "dislotrack train fit --config train/configs/cpu.yaml"
    assert 0 < card["decode_threshold"] < 1
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("prefix", ["net.", "model."])
def test_lightning_checkpoint_is_read_with_weights_only(tmp_path, prefix):
    net = trained_like_model(4)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    state["loss_fn.pos_weight"] = torch.tensor([3.0])
    ckpt = {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
        "hyper_parameters": {"config": CONFIG.to_dict(), "lr": 1e-3},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_lightning_checkpoint(tmp_path / "last.ckpt")
    assert loaded.keys() == net.state_dict().keys()
    fresh = UNet(CONFIG)
    fresh.load_state_dict(loaded)  # strict
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


class NotATensor:
    """A pickled object that ``weights_only=True`` must refuse."""


def test_lightning_checkpoint_errors(tmp_path):
    unsafe = {"state_dict": {"net.w": torch.zeros(1)}, "extra": NotATensor()}
    torch.save(unsafe, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_lightning_checkpoint(tmp_path / "a.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="no 'state_dict' entry"):
        load_lightning_checkpoint(tmp_path / "b.ckpt")
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match=r"first keys are \['backbone.w'\]"):
        load_lightning_checkpoint(tmp_path / "c.ckpt")


def test_bundled_models_load_by_name():
    from dislotrack.models.io import bundled_models

    assert {"default", "fine"} <= set(bundled_models())
    _, card = load_model("default")
    assert card["model_id"] == "default"
    _, fine = load_model("fine")
    assert fine["canonical_pixel_size_nm"] == 0.05 and fine["model_id"] == "fine"
    for c in (card, fine):  # settings only, not Lightning's plumbing (`_instantiator`)
        assert not [k for k in (*c["generator"], *c["training"]["module"]) if k.startswith("_")]
    with pytest.raises(FileNotFoundError):
        load_model("no_such_model")


def test_a_training_runs_folder_given_as_a_model_suggests_the_model_in_it(tmp_path):
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), tmp_path / "run" / "model",
               card={"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {}, "metrics": {}})
    with pytest.raises(FileNotFoundError, match=r"run.safetensors does not exist \(did you mean "
                                                r".*run/model\? a model is a <stem>"):
        load_model(tmp_path / "run")


def test_a_training_checkpoint_given_as_a_model_says_what_to_use(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"last.ckpt is a Lightning training checkpoint, not a model: "
                                         r"use the model its run exported \(<run folder>/model\), "
                                         r"or export it: dislotrack train export .*last.ckpt --out <stem>"):
        load_model(tmp_path / "last.ckpt")


@pytest.mark.parametrize("damage, said", [
    (lambda b: b[: len(b) // 2], r"truncated or corrupt: incomplete metadata, file not fully covered"),
    (lambda b: bytes(range(256)) * 8, r"truncated or corrupt: header too large"),
    (lambda b: b"", r"an empty file"),
])
def test_a_damaged_weights_file_is_a_one_line_error_naming_it(tmp_path, damage, said):
    save_model(trained_like_model(4), tmp_path / "m", card=user_card())
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(mio.ModelFileError, match=rf"^{re.escape(str(weights))} is not a readable "
                       rf"model \({said}.*re-copy or re-export it$") as err:
        load_model(tmp_path / "m")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    # No chained traceback of safetensors' own error under it.
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_weights_of_another_architecture_than_the_card_are_named_in_one_line(tmp_path):
    save_model(trained_like_model(4), tmp_path / "m", card=user_card())
    card = json.loads((tmp_path / "m.json").read_text())
    card["architecture"]["base_channels"] = 8  # edited, or another model's card
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(mio.ModelFileError, match=r"m.safetensors does not fit the architecture in "
                       r"m.json \(\d+ tensor\(s\) of another shape \(e.g. [\w.]+: \[4, .*\] in the "
                       r"file, \[8, .*\] by the card\)\): .*re-copy both files") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)
    # Another network's tensors altogether: what is missing and what is not the card's.
    save_model(trained_like_model(4), tmp_path / "n", card=user_card())
    from safetensors.torch import save_file

    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "n.safetensors"))
    with pytest.raises(mio.ModelFileError, match=r"\(\d+ missing \(e.g. [\w.]+\); 1 unexpected "
                       r"\(e.g. other.weight\)\)"):
        load_model(tmp_path / "n")


def test_a_broken_model_card_names_the_file_and_where_its_json_breaks(tmp_path):
    save_model(trained_like_model(4), tmp_path / "m", card=user_card())
    card = tmp_path / "m.json"
    card.write_text('{"architecture": {"depth": 4\n')
    with pytest.raises(mio.ModelFileError, match=rf"^{re.escape(str(card))} is not valid JSON "
                       r"\(Expecting ',' delimiter at line 2 column 1 \(char 29\)\)"):
        load_model(tmp_path / "m")
    card.write_text("")
    with pytest.raises(ValueError, match=r"m.json is not valid JSON \(the file is empty\)"):
        load_model(tmp_path / "m")
    card.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"m.json is not a model card: not a text file"):
        load_model(tmp_path / "m")
    card.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"m.json is not a model card: it holds a JSON list"):
        load_model(tmp_path / "m")
    card.write_text("{}")
    with pytest.raises(ValueError, match=r"m.json: model card lacks required keys"):
        load_model(tmp_path / "m")


def test_a_training_runs_model_is_named_with_its_run_folder(tmp_path):
    # Every run exports <run>/model: "model" alone would not say which (evaluate's "predictions
    # by", summary.json's model id); other stems are names of their own.
    save_model(trained_like_model(4), tmp_path / "runs" / "from_m1" / "model", card=user_card())
    save_model(trained_like_model(4), tmp_path / "mine", card=user_card())
    assert load_model(tmp_path / "runs" / "from_m1" / "model")[1]["model_id"] == "from_m1/model"
    assert load_model(tmp_path / "runs" / "from_m1" / "model.json")[1]["model_id"] == "from_m1/model"
    assert load_model(tmp_path / "mine.safetensors")[1]["model_id"] == "mine"


def test_a_model_card_saved_with_a_bom_is_read(tmp_path):
    # Notepad saves UTF-8 with a byte-order mark: the card is valid JSON all the same.
    import json

    from dislotrack.models.io import load_model, save_model
    from dislotrack.models.unet import UNet, UNetConfig

    net = UNet(UNetConfig(depth=2, base_channels=4))
    save_model(net, tmp_path / "m", card={"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {},
                                           "metrics": {}})
    card = tmp_path / "m.json"
    card.write_text(json.dumps(json.loads(card.read_text())), encoding="utf-8-sig")
    assert load_model(tmp_path / "m")[1]["canonical_pixel_size_nm"] == 0.1
