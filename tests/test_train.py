"""Training: the loop learns, configs run, augmentation keeps labels, seeding."""

import importlib.util
import json
import warnings

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch

from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.models.decode import decode_cores, outputs_to_maps
from dislotrack.models.metrics import DetectionTally
from dislotrack.models.unet import UNet, UNetConfig
from dislotrack.train.augment import augment
from dislotrack.train.cli import config_path, train_main
from dislotrack.train.data import (
    FixedSynthetic,
    SyntheticStream,
    cores_from_batch,
    hidden_cores,
    ignore_weight,
    sample_to_item,
)
from dislotrack.train.losses import heatmap_loss
from dislotrack.train.module import DislocationModule


def _batch(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _f1(module, batch):
    with torch.no_grad():
        maps = outputs_to_maps(module(batch["image"]))
    tally = DetectionTally()
    for i, t in enumerate(cores_from_batch(batch["cores"])):
        p = decode_cores(maps["heatmap"][i], maps["hfield"][i], threshold=0.3)
        tally.add(p[["x", "y"]].to_numpy(), p[["hx", "hy"]].to_numpy(),
                  t[["x", "y"]].to_numpy(), t[["hx", "hy"]].to_numpy(), pixel_size=0.1)
    return tally.summary()["f1"]


def test_tiny_model_overfits_a_handful_of_samples():
    torch.manual_seed(0)
    cfg = GeneratorConfig(size=64, mode="stem", dose=(5000, 5000), perfect_fraction=0.0,
                          density=6.0, dipole_fraction=0.0, realism=0.0)
    rng = np.random.default_rng(1)
    samples = [s for s in (make_sample(rng, cfg) for _ in range(12)) if len(s.cores)][:4]
    batch = _batch([sample_to_item(s) for s in samples])
    assert (~torch.isnan(batch["cores"][:, :, 0])).sum() >= 6
    module = DislocationModule(UNet(UNetConfig(base_channels=8, depth=2)), lr=1e-2)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    first = module.losses(module(batch["image"]), batch)["loss"].item()
    for _ in range(120):
        loss = module.losses(module(batch["image"]), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.train(False)
    assert loss.item() < 0.5 * first
    assert _f1(module, batch) > 0.8


@pytest.mark.parametrize("name", ["cpu", "cpu_stage2", "cpu_stage3", "cpu_fine", "cpu_inplane", "gpu",
                                  "cluster"])
def test_fast_dev_run_of_each_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write runs/ and exports relative to the cwd
    train_main(["fit", "--config", config_path(name),
                "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
                "--trainer.num_nodes=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
                "--trainer.sync_batchnorm=false", "--trainer.logger=false",
                f"--trainer.default_root_dir={tmp_path}", "--model.init_from=null",
                "--model.net.init_args.config.base_channels=4",
                "--model.net.init_args.config.depth=2",
                "--data.batch_size=2", "--data.num_workers=0", "--data.size=32",
                "--data.eval_size=32", "--data.n_val=2"])
    # The config's export ran: a loadable model with the recipe that made it.
    from dislotrack.models.io import load_model

    (weights,) = tmp_path.rglob("*.safetensors")
    _, card = load_model(weights.with_suffix(""))
    assert f"--config train/configs/{name}.yaml" in card["training"]["recipe"]


def test_ckpt_path_last_resumes_an_interrupted_run(tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.chdir(tmp_path)  # cpu.yaml writes runs/cpu/ relative to the cwd
    tiny = ["--config", config_path("cpu"), "--model.net.init_args.config.base_channels=4",
            "--model.net.init_args.config.depth=2", "--data.batch_size=2", "--data.num_workers=0",
            "--data.size=32", "--data.eval_size=32", "--data.n_val=2", "--data.samples_per_epoch=4",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    def crash(module):
        if module.current_epoch == 1:  # epoch 0 done and checkpointed
            raise RuntimeError("interrupted")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="interrupted"):
        patch.setattr(DislocationModule, "on_train_epoch_start", crash, raising=False)
        train_main(["fit", *tiny, "--trainer.max_epochs=2"])
    assert (tmp_path / "runs/cpu/checkpoints/last.ckpt").exists()
    saved = torch.load(tmp_path / "runs/cpu/checkpoints/last.ckpt", weights_only=True)["callbacks"]
    (first_part,) = [v["wall_time_s"] for k, v in saved.items() if k.startswith("ExportModel")]
    train_main(["fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    card = json.loads((tmp_path / "runs/cpu/model.json").read_text())
    assert card["training"]["wall_time_s"] > first_part > 0  # the whole run's time, not the resumed part's
    logs = sorted((tmp_path / "runs/cpu/lightning_logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    resumed = pd.read_csv(logs[1])
    assert set(resumed["epoch"].dropna()) == {1}  # epoch 0 was not trained again
    assert resumed["step"].min() >= 2  # and the step count went on from the first run
    # Resuming the finished run trains nothing and keeps its export (card and weights).
    exported = {p.name: p.read_bytes() for p in (tmp_path / "runs/cpu").glob("model.*")}
    train_main(["fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs/cpu").glob("model.*")} == exported
    # More epochs than the restored one-cycle schedule was planned for: refused up front
    # (it would fail at the schedule's end).
    from dislotrack.infer.cli import main

    validated = []
    with monkeypatch.context() as patch:
        step = DislocationModule.validation_step
        patch.setattr(DislocationModule, "validation_step",
                      lambda self, *a, **k: validated.append(1) or step(self, *a, **k))
        versions = sorted((tmp_path / "runs/cpu/lightning_logs").iterdir())
        assert main(["train", "fit", *tiny, "--trainer.max_epochs=3", "--ckpt_path", "last"]) == 2
    # The setting that changed is named (the checkpoint records them).
    assert "schedule spans 4 steps but this run plans 6 (--trainer.max_epochs 2 -> 3); resume " \
           "with the settings it was trained with" in capsys.readouterr().err
    assert not validated  # before the sanity check, not after it
    # Its config was saved before the refusal: removed, not left as the newest run's settings.
    assert sorted((tmp_path / "runs/cpu/lightning_logs").iterdir()) == versions
    assert main(["train", "fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "nowhere.ckpt"]) == 2
    assert "nowhere.ckpt" in capsys.readouterr().err
    assert sorted((tmp_path / "runs/cpu/lightning_logs").iterdir()) == versions
    # Another learning rate would be ignored (the optimizer is restored): refused; other
    # data are taken, with a warning, and the card records them.
    assert main(["train", "fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "last",
                 "--model.lr", "0.5"]) == 2
    assert "--model.lr 0.003 -> 0.5 would be ignored" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=r"resumed with other data settings \(density 3.0 -> 0.5\)"):
        train_main(["fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "last", "--data.density=0.5"])
    # A fresh fit into the same root would replace the run's model and last checkpoint.
    exported = {p.name: p.read_bytes() for p in (tmp_path / "runs/cpu").glob("model.*")}
    assert main(["train", "fit", *tiny, "--trainer.max_epochs=1"]) == 2
    assert "runs/cpu holds an earlier run (model.safetensors, checkpoints/last.ckpt) that a new " \
           "fit would replace: resume it with --ckpt_path last" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs/cpu").glob("model.*")} == exported
    # A run's saved config fixes its paths: another root does not move them, and the
    # refusal names where they are (not the new root, which holds nothing).
    (saved,) = sorted((tmp_path / "runs/cpu/lightning_logs").glob("version_*/config.yaml"))[:1]
    assert main(["train", "fit", "--config", str(saved), "--trainer.default_root_dir",
                 str(tmp_path / "runs/other")]) == 2
    err = capsys.readouterr().err
    assert "an earlier run's runs/cpu/model.safetensors and " in err
    assert "runs/other holds" not in err
    (tmp_path / "runs/cpu/checkpoints/last.ckpt").unlink()  # the model alone: nothing to resume
    assert main(["train", "fit", *tiny, "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "(model.safetensors) that a new fit would replace: give another" in err
    # So does --ckpt_path last, finding no last.ckpt (checkpoints deleted to save space):
    # it starts fresh, and had replaced the model (and its calibrated threshold) silently.
    assert main(["train", "fit", *tiny, "--trainer.max_epochs=1", "--ckpt_path", "last"]) == 2
    assert ("(model.safetensors) that this fit (--ckpt_path last found no last.ckpt, so it starts "
            "fresh) would replace: give another") in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs/cpu").glob("model.*")} == exported


def test_last_checkpoint_is_the_last_epoch_even_when_the_score_stops_improving(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A constant validation F1: only the first epoch "improves" it.
    monkeypatch.setattr(DislocationModule, "_epoch_end",
                        lambda self, stage: self.log(f"{stage}/f1", 0.0), raising=True)
    train_main(["fit", "--config", config_path("cpu"), "--model.net.init_args.config.base_channels=4",
                "--model.net.init_args.config.depth=2", "--data.batch_size=2", "--data.num_workers=0",
                "--data.size=32", "--data.eval_size=32", "--data.n_val=2", "--data.samples_per_epoch=2",
                "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false", "--trainer.logger=false"])
    ckpts = tmp_path / "runs/cpu/checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (2, 3)  # 0.1.12 kept epoch 0's here
    (best,) = ckpts.glob("epoch*.ckpt")  # the best, as before: epoch 0
    # The export is the best epoch's weights, and its card says which epoch and its scores.
    from dislotrack.models.io import load_lightning_checkpoint, load_model

    net, card = load_model(tmp_path / "runs/cpu/model")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in load_lightning_checkpoint(best).items())
    assert (card["training"]["best_epoch"], card["training"]["epochs"]) == (0, 3)
    best_scores, last_scores = card["metrics"]["best_validation"], card["metrics"]["last_validation"]
    assert best_scores["val/f1"] == 0.0 and best_scores["val/loss"] != last_scores["val/loss"]
    assert all(k.startswith("val/") for k in best_scores)  # not the losses of a training epoch
    assert set(card["metrics"]["last_training"]) and not any(
        k.startswith("val/") for k in card["metrics"]["last_training"])


def test_train_offers_no_predict(capsys, monkeypatch):
    from dislotrack.infer.cli import main

    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    assert main(["train", "predict", "--config", config_path("cpu")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'predict'" in line


def test_training_pixel_size_becomes_the_models_canonical_pixel_size(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    train_main(["fit", "--config", "cpu", "--trainer.fast_dev_run=1",
                "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
                "--model.net.init_args.config.base_channels=4", "--model.net.init_args.config.depth=2",
                "--data.batch_size=2", "--data.num_workers=0", "--data.size=32", "--data.eval_size=32",
                "--data.n_val=2", "--data.pixel_size=0.05",
                "--model.net.init_args.config.fringe_period_px=9.46"])
    # The export follows default_root_dir, beside (not over) a real run's model.json.
    card = json.loads((tmp_path / "model_fast_dev_run.json").read_text())
    assert not (tmp_path / "model.json").exists()
    assert not (tmp_path / "models").exists()  # a smoke test never replaces the bundled model
    assert card["canonical_pixel_size_nm"] == 0.05
    # As typed: the bundled config's name, not the install's path that it resolves to.
    assert card["training"]["command"].startswith("dislotrack train fit --config cpu ")
    assert "--data.pixel_size=0.05" in card["training"]["command"]
    assert not any(k.startswith("_") for k in card["training"]["module"])  # no _instantiator
    assert card["generator"]["pixel_size"] == 0.05


def test_augmentation_moves_cores_and_rotates_h_with_the_image():
    s = make_sample(np.random.default_rng(4), GeneratorConfig(size=64, mode="stem",
                                                               perfect_fraction=0.0, density=4.0))
    assert len(s.cores) >= 2
    img = s.image / s.image.max()
    w = img.shape[1]
    for op, expect in [
        (A.HorizontalFlip(p=1), lambda x, y, hx, hy: (w - 1 - x, y, -hx, hy)),
        (A.VerticalFlip(p=1), lambda x, y, hx, hy: (x, w - 1 - y, hx, -hy)),
        (A.Transpose(p=1), lambda x, y, hx, hy: (y, x, hy, hx)),
    ]:
        tr = A.Compose([op], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                       seed=0)
        out_img, cores, mask = augment(tr, img, s.cores, s.rs_mask)
        exp = np.array([expect(*r) for r in s.cores[["x", "y", "hx", "hy"]].to_numpy()])
        np.testing.assert_allclose(cores[["x", "y", "hx", "hy"]].to_numpy(), exp, atol=1e-4)
        # The image went the same way as the labels.
        ref = {"HorizontalFlip": img[:, ::-1], "VerticalFlip": img[::-1], "Transpose": img.T}
        np.testing.assert_allclose(out_img, ref[type(op).__name__], atol=1e-6)


def test_cores_without_h_train_their_heatmap_but_not_h():
    # A lab annotating positions only: unknown h (NaN) survives augmentation as unknown,
    # and its core's disc is left out of the h loss (hmask 0) while its heatmap is kept.
    from dislotrack.data_gen.labels import dense_targets

    s = make_sample(np.random.default_rng(4), GeneratorConfig(size=64, mode="stem",
                                                               perfect_fraction=0.0, density=4.0))
    cores = s.cores.copy()
    cores.loc[cores.index[0], ["hx", "hy"]] = np.nan
    tr = A.Compose([A.HorizontalFlip(p=1)],
                   keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), seed=0)
    _, flipped, _ = augment(tr, (s.image / s.image.max()).astype(np.float32), cores, s.rs_mask)
    assert flipped[["hx", "hy"]].iloc[0].isna().all() and flipped[["hx", "hy"]].iloc[1:].notna().all().all()
    assert flipped.x.iloc[0] == pytest.approx(63 - cores.x.iloc[0], abs=1e-4)
    t = dense_targets(cores, s.rs_mask, pixel_size=s.meta["pixel_size"])
    x0, y0 = (int(round(v)) for v in cores[["x", "y"]].iloc[0])
    x1, y1 = (int(round(v)) for v in cores[["x", "y"]].iloc[1])
    assert t["heatmap"][y0, x0] > 0.9 and t["hmask"][y0, x0] == 0 and (t["hvec"][:, y0, x0] == 0).all()
    assert t["hmask"][y1, x1] == 1 and np.isfinite(t["hvec"]).all()


def test_arbitrary_rotation_keeps_h_consistent_with_motion_of_points():
    s = make_sample(np.random.default_rng(5), GeneratorConfig(size=128, mode="stem",
                                                               perfect_fraction=0.0, density=4.0))
    img = (s.image / s.image.max()).astype(np.float32)
    tr = A.Compose([A.Affine(rotate=(30, 30), p=1)],
                   keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), seed=0)
    _, cores, _ = augment(tr, img, s.cores.assign(id=np.arange(len(s.cores))), s.rs_mask)
    src = s.cores.iloc[cores["id"].to_numpy()]  # the input row of each output core
    assert len(cores) >= 3
    centre = 63.5  # albumentations rotates about the image centre (pixel-centre origin)
    moved = np.angle((cores.x - centre + 1j * (cores.y - centre)).to_numpy()
                     / (src.x - centre + 1j * (src.y - centre)).to_numpy())
    turned = np.angle((cores.hx + 1j * cores.hy).to_numpy() / (src.hx + 1j * src.hy).to_numpy())
    # Every h turns by the angle the points turn about the centre, sign included.
    np.testing.assert_allclose(turned, moved, atol=2e-2)
    np.testing.assert_allclose(np.abs(turned), np.radians(30), atol=1e-3)


def test_streams_differ_across_ranks_and_workers_and_repeat():
    cfg = GeneratorConfig(size=32)

    def first(rank, epoch=0):
        ds = SyntheticStream(cfg, seed=3, samples_per_epoch=1, augment=False)
        ds.set_rank(rank, 2)
        ds.set_epoch(epoch)
        return next(iter(ds))["image"]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))
    assert not torch.equal(first(0), first(0, epoch=1))
    fixed = FixedSynthetic(cfg, n=3, seed=1)
    # The fixed sets are map-style (DDP shards them): item i is the same whoever asks.
    assert torch.equal(fixed[2]["image"], FixedSynthetic(cfg, n=3, seed=1)[2]["image"])
    assert not torch.equal(fixed[1]["image"], fixed[2]["image"])
    assert not torch.equal(fixed[2]["image"], FixedSynthetic(cfg, n=3, seed=2)[2]["image"])


def test_loader_workers_draw_whole_batches_and_the_epoch_asked_for():
    from torch.utils.data import DataLoader

    from dislotrack.train.data import worker_quota

    for samples, batch, workers in ((64, 8, 3), (2048, 16, 1), (100, 16, 3), (32, 32, 12), (5, 2, 2)):
        quotas = [worker_quota(samples, batch, w, workers) for w in range(workers)]
        assert all(q % batch == 0 for q in quotas)  # no partial batches mid-epoch
        assert sum(quotas) == -(-samples // batch) * batch  # every batch len(loader) counts
    ds = SyntheticStream(GeneratorConfig(size=32), seed=3, samples_per_epoch=5, augment=False,
                         batch_size=2)
    sizes = [len(b["image"]) for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert sizes == [2, 2, 2] and len(DataLoader(ds, batch_size=2)) == 3  # was [2, 2]: 4 of 5


def test_curriculum_ramps_from_easy_to_the_full_distribution():
    from dislotrack.train.datamodule import SyntheticDataModule

    dm = SyntheticDataModule(curriculum_epochs=4)
    full = dm.generator_config(64, 0.0)
    first, last = dm.generator_config(64, 0.0, 0), dm.generator_config(64, 0.0, 3)
    assert first.dose[0] > last.dose[0] > full.dose[0]
    assert first.realism < last.realism < full.realism == 1.0
    assert first.dipole_fraction < full.dipole_fraction
    assert dm.generator_config(64, 0.0, 4) == full


def test_training_stream_overrides_leave_the_fixed_sets_alone():
    from dislotrack.train.datamodule import SyntheticDataModule

    dm = SyntheticDataModule(basal_fraction=0.4, rocksalt_probability=0.5)
    default = GeneratorConfig()
    train = dm.generator_config(64, 0.0, 5, train=True)
    assert (train.basal_fraction, train.rocksalt_probability) == (0.4, 0.5)
    fixed = dm.generator_config(64, 0.0)
    assert (fixed.basal_fraction, fixed.rocksalt_probability) == (
        default.basal_fraction, default.rocksalt_probability)
    plain = SyntheticDataModule().generator_config(64, 0.0, 5, train=True)
    assert plain.basal_fraction == default.basal_fraction


def test_init_from_starts_training_from_a_saved_model(tmp_path):
    from dislotrack.models.io import save_model

    cfg = UNetConfig(base_channels=4, depth=2)
    saved = UNet(cfg).eval()
    with torch.no_grad():  # make the saved weights differ from a fresh init's
        for p in saved.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_model(saved, tmp_path / "m", card={"canonical_pixel_size_nm": 0.1, "generator": {},
                                           "training": {}, "metrics": {}})
    module = DislocationModule(UNet(cfg), init_from=str(tmp_path / "m")).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(module(x), saved(x))
    with pytest.raises(ValueError, match=r"its architecture differs from the configured network "
                                         r"\(base_channels 4 in the model, 8 here\): pass its settings"):
        DislocationModule(UNet(UNetConfig(base_channels=8, depth=2)), init_from=str(tmp_path / "m"))


_TINY_RUN = ["--model.net.init_args.config.base_channels=4", "--model.net.init_args.config.depth=2",
             "--data.batch_size=2", "--data.num_workers=0", "--data.size=32", "--data.eval_size=32",
             "--data.n_val=2", "--data.n_test=2", "--data.samples_per_epoch=2",
             "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]


def test_a_checkpoint_exports_as_a_model_and_refuses_another_network(tmp_path, capsys):
    from dislotrack.infer.cli import main
    from dislotrack.models.io import load_lightning_checkpoint, load_model

    run = ["--config", "cpu", *_TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "r")]
    # --ckpt_path last finding nothing outside SLURM (a mistyped root?): a fresh start, warned.
    with pytest.warns(UserWarning, match=r"--ckpt_path last: no last.ckpt yet under .*, so a new run "
                                         r"starts from scratch \(outside a SLURM job: check "
                                         r"--trainer.default_root_dir if you meant to resume one\)"):
        assert main(["train", "fit", *run, "--ckpt_path", "last"]) == 0
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["train", "export", str(last), "--out", str(tmp_path / "mine")]) == 0
    # Its card has no decode threshold yet: infer would take 0.5 unless it is calibrated.
    assert (f"its decode threshold is 0.5 until calibrated: python -m dislotrack.train.calibrate "
            f"{tmp_path / 'mine'}") in capsys.readouterr().out
    net, card = load_model(tmp_path / "mine")  # the architecture came from the checkpoint
    assert "decode_threshold" not in card
    assert (net.config.base_channels, net.config.depth) == (4, 2)
    state = load_lightning_checkpoint(last)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert card["canonical_pixel_size_nm"] == 0.1 and card["training"]["checkpoint"] == str(last)
    assert card["generator"]["size"] == 32 and card["training"]["module"]["lr"] > 0
    capsys.readouterr()
    assert main(["train", "export", str(last), "--out", str(tmp_path / "mine")]) == 2  # exists
    assert "mine.safetensors exists" in capsys.readouterr().err
    # A checkpoint without the architecture (before 0.1.20) needs the run's saved config.
    old = torch.load(last, map_location="cpu", weights_only=True)
    del old["dislotrack_architecture"]
    torch.save(old, tmp_path / "old.ckpt")
    assert main(["train", "export", str(tmp_path / "old.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no network architecture" in capsys.readouterr().err
    (saved,) = (tmp_path / "r").glob("lightning_logs/version_0/config.yaml")
    assert main(["train", "export", str(tmp_path / "old.ckpt"), "--out", str(tmp_path / "o"),
                 "--config", str(saved)]) == 0
    # A config with no network settings (null: the default architecture) is the default.
    import yaml

    null = yaml.safe_load(saved.read_text())
    null["model"]["net"]["init_args"]["config"] = None
    (tmp_path / "null.yaml").write_text(yaml.safe_dump(null))
    assert main(["train", "export", str(tmp_path / "old.ckpt"), "--out", str(tmp_path / "d"),
                 "--config", str(tmp_path / "null.yaml")]) == 2
    assert "do not fit the architecture" in capsys.readouterr().err  # 4 wide, not the default 12
    # A checkpoint written before a setting existed: the missing setting takes its default.
    older = torch.load(last, map_location="cpu", weights_only=True)
    del older["dislotrack_architecture"]["inplane_fringe_period_px"]
    torch.save(older, last)
    # Testing it with another width, or "best" in a new process: one line each, before loading.
    capsys.readouterr()
    assert main(["train", "test", *run, "--model.net.init_args.config.base_channels=8",
                 "--ckpt_path", "last"]) == 2
    assert "its network differs from the configured one (base_channels 4 in the checkpoint, 8 " \
           "here)" in capsys.readouterr().err
    assert main(["train", "test", *run, "--ckpt_path", "last"]) == 0  # the same network
    capsys.readouterr()
    assert main(["train", "test", *run, "--ckpt_path", "best"]) == 2
    assert "a new run does not know which checkpoint was best" in capsys.readouterr().err
    # The exported model works at 0.1 nm/px: a run from it at another pixel size is refused,
    # as is a network whose fringe channels look for another period.
    other = ["--config", "cpu", *_TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "r2")]
    assert main(["train", "fit", *other, "--model.init_from", str(tmp_path / "mine"),
                 "--data.pixel_size", "0.095"]) == 2
    assert "mine works at 0.1 nm/px but --data.pixel_size is 0.095: pass --data.pixel_size 0.1" \
           in capsys.readouterr().err
    assert main(["train", "fit", *other, "--data.pixel_size", "0.05"]) == 2
    assert "--data.pixel_size 0.05: the network's (003) fringe channels look for 4.73 px fringes, " \
           "0.237 nm at this pixel size, not 0.473 nm; pass --model.net.init_args.config." \
           "fringe_period_px 9.46" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    # At its pixel size it starts the run, and the card names it by content too.
    assert main(["train", "fit", *other, "--model.init_from", str(tmp_path / "mine")]) == 0
    (started,) = (tmp_path / "r2").rglob("*.json")
    assert json.loads(started.read_text())["training"]["init_from_sha256"] == card["sha256"]
    # Its checkpoints keep the hash, and an export from one says it too.
    (ckpt,) = (tmp_path / "r2").rglob("last.ckpt")
    assert main(["train", "export", str(ckpt), "--out", str(tmp_path / "again")]) == 0
    assert load_model(tmp_path / "again")[1]["training"]["init_from_sha256"] == card["sha256"]


def test_train_refuses_in_one_line_what_cannot_run(tmp_path, capsys, monkeypatch):
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    run = [*_TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "r")]
    (tmp_path / "cpu").mkdir()  # a folder named like the bundled config
    for argv, said in (
            (["fit", "--config", "cpu", *run, "--data.size", "102"],
             "--data.size 102: the network (depth 2) takes multiples of 4 px, e.g. 100 or 104"),
            (["fit", "--config", "cpu", *run, "--data.eval_size", "30"], "e.g. 28 or 32"),
            # A 1 x 1 bottleneck of one image: batch norm failed in the first step.
            (["fit", "--config", "cpu", *run, "--model.net.init_args.config.depth", "4",
              "--data.size", "16", "--data.batch_size", "1"],
             "--data.size 16 with --data.batch_size 1: the network's batch norm has one value"),
            (["--config", "cpu", "fit"], "give the subcommand first"),
            (["fit"], "give a config, e.g. dislotrack train fit --config cpu (bundled: cluster, cpu, "),
            (["fit", "--config", "cpu", *run, "--model.net.init_args.config.base_channel", "8"],
             "UNetConfig has no setting 'base_channel': did you mean base_channels?"),
            (["fit", "--config", "cpu", *run, "--model.init_from", "nowhere"],
             "--model.init_from nowhere: model file nowhere.safetensors does not exist"),
            (["fit", "--config", "cpu", *run, "--model.init_from", "default"],
             "--model.init_from default: its architecture"),
            # Settings that cannot run: said up front (n_variants 0 had hung in the stream).
            (["fit", "--config", "cpu", *run, "--data.n_variants", "0"],
             "--data.n_variants must be a whole number >= 1, got 0"),
            (["fit", "--config", "cpu", *run, "--trainer.accelerator", "tpu"],  # no torch_xla
             "--trainer.accelerator tpu: Requirement 'torch_xla"),
            (["fit", "--config", "cpu", *run, "--data.seed", "-1"],
             "--data.seed must be a whole number >= 0, got -1"),
            # numpy ignores trailing zeros: seed 12345's epoch e drew validation sample e.
            (["fit", "--config", "cpu", *run, "--data.seed", "12345"],
             "--data.seed 12345 equals --data.val_seed: the training stream would repeat"),
            (["fit", "--config", "cpu", *run, "--data.test_seed", "12345"],
             "--data.val_seed equals --data.test_seed (12345): the test set would be"),
            (["fit", "--config", "cpu", *run, "--data.mode", "foo"],
             "--data: mode must be hrtem, stem or mixed, got 'foo'"),
            (["fit", "--config", "cpu", *run, "--data.density", "-1"], "--data: density must be"),
            (["fit", "--config", "cpu", *run, "--model.lr", "-1"],
             "--model.lr must be a finite number > 0, got -1.0"),
            (["fit", "--config", "cpu", *run, "--model.w_rs", "-0.5"], "--model.w_rs must be"),
            (["fit", "--config", "cpu", *run, "--model.threshold", "1"],
             "--model.threshold is a core score in (0, 1), got 1"),
            *([] if importlib.util.find_spec("tensorboard") else [  # its logger without it
                (["fit", "--config", "cpu", *run, "--trainer.logger", "TensorBoardLogger"],
                 'needs a package that is not installed: Neither `tensorboard` nor `tensorboardX` '
                 'is available. Try `pip install`ing either. (pip install -e ".[tensorboard]")')])):
        assert main(["train", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before training


def test_calibrate_writes_the_threshold_into_the_card_or_refuses_in_one_line(tmp_path, capsys,
                                                                            monkeypatch):
    from dislotrack.models.io import load_model, save_model
    from dislotrack.train.calibrate import main

    monkeypatch.chdir(tmp_path)
    net, card = load_model("default")
    save_model(net, tmp_path / "mine", card={**card, "decode_threshold": 0.9})
    assert main(["mine", "--n", "4"]) == 0
    said = json.loads(capsys.readouterr().out)  # strict JSON: undefined scores are null
    assert load_model("mine")[1]["decode_threshold"] == said["decode_threshold"] < 0.9
    assert main(["default", "--n", "4"]) == 2  # a bundled name: its card is the package's
    assert "a bundled model's card is part of the installed package" in capsys.readouterr().err
    assert not list(tmp_path.glob("default.*"))
    # A run's folder or checkpoint: the model in it, or how to export one (not "x.ckpt.safetensors").
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_model(net, tmp_path / "run" / "model", card=card)
    assert main(["run", "--n", "4"]) == 2
    assert "run: no run.safetensors; did you mean run/model?" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert main(["run/checkpoints/last.ckpt", "--n", "4"]) == 2
    assert ("is a Lightning training checkpoint, not a model: use the model its run exported "
            f"({tmp_path / 'run' / 'model'}), or export it: dislotrack train export "
            "run/checkpoints/last.ckpt --out <stem>") in capsys.readouterr().err
    torch.manual_seed(0)
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), tmp_path / "raw",
               card={"canonical_pixel_size_nm": 0.1, "generator": {"eval_size": 32}, "training": {},
                     "metrics": {}})
    before = (tmp_path / "raw.json").read_text()
    assert main(["raw", "--n", "2"]) == 2  # untrained: finds no true core at any threshold
    assert "card left as it was" in capsys.readouterr().err
    assert (tmp_path / "raw.json").read_text() == before


def test_calibration_takes_the_precise_end_of_a_flat_f1_plateau():
    from dislotrack.train.calibrate import choose_threshold

    flat = {0.3: {"f1": 0.58}, 0.35: {"f1": 0.607}, 0.4: {"f1": 0.606}, 0.45: {"f1": 0.603},
            0.5: {"f1": 0.59}}
    assert choose_threshold(flat) == 0.45
    assert choose_threshold(flat, tolerance=0.0) == 0.35
    peaked = {0.3: {"f1": 0.53}, 0.35: {"f1": 0.544}, 0.4: {"f1": 0.5356}, 0.45: {"f1": float("nan")}}
    assert choose_threshold(peaked) == 0.35


def test_hidden_cores_are_those_without_an_003_half_plane_end():
    """Misfit cores in a clean crystal show in the noise-free image; basal ones do not."""
    flags = {"misfit": [], "basal": []}
    for seed in range(6):
        s = make_sample(np.random.default_rng(seed), GeneratorConfig(size=128, dose=(5000, 5000),
                                                                     density=3.0, perfect_fraction=0.0))
        assert s.clean is not None and s.clean.shape == s.image.shape
        assert not np.allclose(s.clean, s.image)  # the noisy image is drawn from it
        border = np.minimum.reduce([s.cores.x, s.cores.y, 127 - s.cores.x, 127 - s.cores.y]) > 8
        rows, cols = (s.cores[c].round().astype(int).clip(0, 127) for c in ("y", "x"))
        in_rs = s.rs_mask[rows, cols] > 0
        basal = np.hypot(s.cores.bx_nm, s.cores.by_nm) < 0.4
        hidden = hidden_cores(s)
        flags["misfit"] += hidden[border & ~basal & ~in_rs].tolist()
        flags["basal"] += hidden[border & basal].tolist()
    assert len(flags["misfit"]) >= 10 and len(flags["basal"]) >= 3
    assert np.mean(flags["misfit"]) < 0.3
    assert np.mean(flags["basal"]) > 0.7


def test_ignore_weight_blanks_only_around_hidden_cores():
    import pandas as pd

    cores = pd.DataFrame({"x": [10.0, 30.0, 36.0], "y": [10.0, 30.0, 30.0], "hx": 0.0, "hy": 1.0,
                          "hidden": [True, False, True]})
    w = ignore_weight(cores, (48, 48), pixel_size=0.1)
    r = 6  # 0.6 nm
    assert w[10, 10] == 0 and w[10, 10 + r] == 0 and w[10, 10 + r + 1] == 1
    assert w[30, 30] == 1  # a shown core keeps its target even next to a hidden one
    assert w[30, 36] == 0 and w[30, 33] == 1  # equidistant from both: kept for the shown core
    assert w[40, 40] == 1
    assert (ignore_weight(cores.assign(hidden=False), (48, 48), pixel_size=0.1) == 1).all()
    # Ignored pixels do not count in the loss, whatever the network says there.
    logit = torch.zeros(1, 1, 48, 48)
    target = torch.zeros(1, 1, 48, 48)
    wt = torch.from_numpy(w)[None, None]
    base = heatmap_loss(logit, target, weight=wt)
    logit[0, 0, 10, 10] = 20.0  # a confident core where a hidden one is
    assert torch.isclose(heatmap_loss(logit, target, weight=wt), base)
    assert heatmap_loss(logit, target) > heatmap_loss(torch.zeros_like(logit), target)


def _views(transform, n: int) -> list[tuple[int, ...]]:
    """The D4 view (the transformed h of two orthogonal cores, rounded) of ``n`` calls."""
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    cores = pd.DataFrame({"x": [10.0, 20.0], "y": [12.0, 18.0], "hx": [1.0, 0.0], "hy": [0.0, 1.0]})
    out = []
    for _ in range(n):
        _, moved, _ = augment(transform, image, cores, np.zeros((32, 32), np.uint8))
        out.append(tuple(np.rint(moved[["hx", "hy"]].to_numpy()).astype(int).ravel()))
    return out


def test_augmentation_draws_mirrors_and_every_view_of_the_square():
    from dislotrack.train.augment import build_transform

    # As the training stream uses it (one transform per epoch and worker) and as
    # fine-tuning does (one per crop): flips must be drawn independently, or the
    # network never sees the other handedness (it saw none up to 0.1.24).
    streamed = _views(build_transform(seed=7, photometric=False), 400)
    per_crop = [_views(build_transform(seed=s, photometric=False), 1)[0] for s in range(400)]
    for views in (streamed, per_crop):
        mirrors = sum((a * d - b * c) < 0 for a, b, c, d in views)
        assert 0.35 < mirrors / len(views) < 0.65
        assert len(set(views)) == 8
    assert _views(build_transform(seed=7, photometric=False), 50) == streamed[:50]  # seeded


def test_sample_to_item_carries_the_weight_through_augmentation():
    s = make_sample(np.random.default_rng(2), GeneratorConfig(size=64, density=6.0, perfect_fraction=0.0,
                                                              basal_fraction=0.5))
    hidden = hidden_cores(s)
    assert hidden.any() and (~hidden).any()
    tr = A.Compose([A.HorizontalFlip(p=1)], seed=0,
                   keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    item = sample_to_item(s, transform=tr, ignore_hidden=True)
    w = item["heatmap_weight"][0].numpy()
    for (x, y), hid in zip(s.cores[["x", "y"]].to_numpy(), hidden, strict=True):
        r, c = int(round(y)), int(round(63 - x))  # flipped
        if 0 <= r < 64 and 0 <= c < 64:
            assert w[r, c] == (0.0 if hid else 1.0)
    assert (sample_to_item(s, transform=tr)["heatmap_weight"] == 1).all()  # off by default


def _lab_sample(image, cores):
    """A lab-like sample (no mode, dose or rock salt) of ``image`` with ``cores``."""
    from dislotrack.data_gen.sample import Sample

    return Sample(image.astype(np.float32), cores, np.zeros(image.shape, np.uint8),
                  {"pixel_size": 0.1, "mode": "lab", "detector": {"dose": np.nan}, "frame": 0})


def test_a_nan_pad_does_not_blank_an_augmented_image():
    # An aligned stack's NaN border: augmentation must keep the image (its NaN had made
    # every pixel NaN, which normalisation zeroed), at the level inference gives NaN.
    y, x = np.mgrid[:64, :64]
    image = np.cos(2 * np.pi * (x + 0.5 * y) / 9.0)  # fringes: a blur keeps them
    image[:4, :] = np.nan
    s = _lab_sample(image, pd.DataFrame({"x": [30.0], "y": [30.0], "hx": [1.0], "hy": [0.0]}))
    tr = A.Compose([A.RandomBrightnessContrast(p=1), A.GaussianBlur(blur_limit=(3, 3), p=1)], seed=0,
                   keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    plain = sample_to_item(s)["image"][0].numpy()
    augmented = sample_to_item(s, transform=tr)["image"][0].numpy()
    assert np.isfinite(augmented).all() and augmented[8:].std() > 0.5
    assert np.corrcoef(plain[8:].ravel(), augmented[8:].ravel())[0, 1] > 0.5  # the same image
    assert abs(np.median(augmented[:3])) < 0.2 and abs(np.median(plain[:3])) < 0.2


def test_validation_truth_keeps_every_core_of_a_crowded_frame():
    g = np.arange(12) * 20 + 10.0
    xx, yy = np.meshgrid(g, g)
    cores = pd.DataFrame({"x": xx.ravel(), "y": yy.ravel(), "hx": 1.0, "hy": 0.0})  # 144 cores
    item = sample_to_item(_lab_sample(np.random.default_rng(0).random((240, 240)), cores))
    truth = cores_from_batch(item["cores"][None])[0]
    assert len(truth) == 144
    assert np.allclose(truth[["x", "y"]].to_numpy(), cores[["x", "y"]].to_numpy())


def test_finetune_validation_scores_whole_non_square_frames():
    from dislotrack.train.finetune import WholeFrames

    cores = pd.DataFrame({"x": [10.0, 100.0, 180.0, 240.0], "y": [20.0, 30.0, 40.0, 50.0],
                          "hx": 1.0, "hy": 0.0})
    item = WholeFrames([_lab_sample(np.random.default_rng(1).random((70, 250)), cores)], 16)[0]
    assert tuple(item["image"].shape) == (1, 64, 240)  # a multiple of 16 each way, not a square
    assert len(cores_from_batch(item["cores"][None])[0]) == 4


def test_a_bundled_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from dislotrack.train.cli import resolve_configs

    monkeypatch.chdir(tmp_path)  # no train/configs/ here
    cpu = config_path("cpu")
    assert resolve_configs(["fit", "--config", "cpu", "--x", "1"]) == ["fit", "--config", cpu, "--x", "1"]
    assert resolve_configs(["fit", "-c", "cpu"]) == ["fit", "-c", cpu]  # LightningCLI's short form
    assert resolve_configs(["fit", "-c=cpu"]) == ["fit", f"-c={cpu}"]
    gpu = config_path("gpu")
    assert resolve_configs(["fit", "--config=train/configs/gpu.yaml"]) == ["fit", f"--config={gpu}"]
    (tmp_path / "cpu.yaml").write_text("trainer: {}\n")  # a file of the user's own comes first
    assert resolve_configs(["fit", "--config", "cpu.yaml"]) == ["fit", "--config", "cpu.yaml"]
    assert resolve_configs(["fit", "--config", "mine.yaml"]) == ["fit", "--config", "mine.yaml"]
    # A typo in a path of one's own is left for the parser to refuse, not swapped for the
    # bundled recipe of the same stem.
    for typo in ("mycgf/cpu.yaml", "cpu.yml", "configs/gpu.yaml"):
        assert resolve_configs(["fit", "--config", typo]) == ["fit", "--config", typo]


def test_test_with_ckpt_path_last_needs_a_checkpoint(tmp_path, monkeypatch, capsys):
    from dislotrack.infer.cli import main
    from dislotrack.train.cli import missing_last_checkpoint

    monkeypatch.chdir(tmp_path)  # nothing trained here: Lightning would score an untrained net
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    assert main(["train", "test", "--config", "cpu", "--ckpt_path", "last"]) == 2
    here = tmp_path.resolve()  # Lightning reports the real path
    assert f"no {here}/runs/cpu/checkpoints/last.ckpt" in capsys.readouterr().err
    # The checkpoint folder follows --trainer.default_root_dir.
    assert main(["train", "validate", "--config", "cpu", "--ckpt_path", "last",
                 "--trainer.default_root_dir", "elsewhere"]) == 2
    assert f"no {here}/elsewhere/checkpoints/last.ckpt" in capsys.readouterr().err
    (tmp_path / "elsewhere" / "checkpoints").mkdir(parents=True)
    (tmp_path / "elsewhere" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert missing_last_checkpoint("last", str(tmp_path / "elsewhere" / "checkpoints")) is None
    assert missing_last_checkpoint(None, str(tmp_path / "runs")) is None  # no resume asked
    assert missing_last_checkpoint("last", str(tmp_path / "runs")) is not None


def test_an_exported_model_as_ckpt_path_and_an_untrained_validation_are_said_plainly(
        tmp_path, monkeypatch, capsys):
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    for command in ("test", "fit"):
        assert main(["train", command, "--config", "cpu", "--ckpt_path", "runs/cpu/model.safetensors"]) == 2
        err = capsys.readouterr().err
        assert ("error: --ckpt_path runs/cpu/model.safetensors is an exported model, not a "
                "Lightning checkpoint (.ckpt): start from it with --model.init_from runs/cpu/model") in err
        assert "Traceback" not in err
    tiny = ["--model.net.init_args.config.base_channels=4", "--model.net.init_args.config.depth=2",
            "--data.num_workers=0", "--data.eval_size=32", "--data.n_val=1",
            "--trainer.enable_progress_bar=false"]
    with pytest.warns(UserWarning, match="no --ckpt_path and no --model.init_from: this scores an "
                                         "untrained network"):
        train_main(["validate", "--config", config_path("cpu"), *tiny])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the bundled model: no such warning
        warnings.filterwarnings("ignore", message="(?!no --ckpt_path)")
        train_main(["validate", "--config", config_path("cpu"), *tiny[2:], "--model.init_from", "default"])


def test_a_mistyped_train_option_is_one_line_with_the_nearest_name(tmp_path, monkeypatch, capsys):
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    assert main(["train", "fit", "--config", "cpu", "--data.samples_per_epok", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dislotrack train: error: unrecognized arguments: --data.samples_per_epok 3 (did "
                   "you mean --data.samples_per_epoch?); --help lists the options"]
    # A prefix of an option is a typo too (argparse would take it for the option); a bad
    # value keeps its reason.
    for args, said in ((["--trainer.max_epoch", "3"], "(did you mean --trainer.max_epochs?)"),
                       (["--model.lr", "x"], 'Parser key "model.lr": Expected a float. Got value: x')):
        assert main(["train", "fit", "--config", "cpu", *args]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert said in line
    (tmp_path / "mine.yaml").write_text("data:\n  n_vall: 3\n")  # a typo in a user's config
    assert main(["train", "validate", "--config", "cpu", "--config", "mine.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'data.n_vall'" in line and "(did you mean --data.n_val?)" in line
    assert not (tmp_path / "runs").exists()


def test_default_root_dir_moves_logs_checkpoints_and_export_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_main(["fit", "--config", config_path("cpu"), "--trainer.default_root_dir", "mine",
                "--model.net.init_args.config.base_channels=4", "--model.net.init_args.config.depth=2",
                "--data.batch_size=2", "--data.num_workers=0", "--data.size=32", "--data.eval_size=32",
                "--data.n_val=2", "--data.samples_per_epoch=2", "--trainer.max_epochs=1",
                "--trainer.enable_progress_bar=false"])
    mine = tmp_path / "mine"
    assert (mine / "checkpoints" / "last.ckpt").is_file() and (mine / "model.safetensors").is_file()
    card = json.loads((mine / "model.json").read_text())  # settings, not Lightning's plumbing
    assert not [k for k in (*card["generator"], *card["training"]["module"]) if k.startswith("_")]
    assert list(mine.glob("lightning_logs/version_0/metrics.csv"))
    assert not (tmp_path / "runs").exists()  # nothing left at the config's own root
    # A config saved by that run has its paths fixed: a new root would not move them.
    (saved,) = mine.glob("lightning_logs/version_0/config.yaml")
    with pytest.warns(UserWarning, match=r"checkpoints \(.*mine/checkpoints\).*outside "
                                         r"trainer.default_root_dir \(other\)"):
        train_main(["validate", "--config", str(saved), "--trainer.default_root_dir", "other",
                    "--ckpt_path", "last", "--trainer.enable_progress_bar=false"])


def test_outputs_must_live_under_a_set_root(tmp_path):
    from dislotrack.train.cli import TrainConfigError, outputs_outside_root

    root = tmp_path / "run"
    assert outputs_outside_root(str(root), {"checkpoints": f"{root}/checkpoints",
                                            "export": f"{root}/model"}) == []
    assert outputs_outside_root(str(root), {"logs": str(tmp_path / "a"),
                                            "export": f"{root}/model"}) == [f"logs ({tmp_path / 'a'})"]
    # ${trainer.default_root_dir} with no root set resolves to the text "None".
    with pytest.raises(TrainConfigError, match=r"config puts checkpoints \(None/checkpoints\)"):
        outputs_outside_root(None, {"checkpoints": "None/checkpoints"})
    assert outputs_outside_root(None, {"checkpoints": str(tmp_path / "c")}) == []


@pytest.mark.parametrize("args", [["--trainer.default_root_dir", "null"],
                                  ["--trainer.default_root_dir=None"]])
def test_a_null_root_is_refused_in_one_line(args, capsys):
    from dislotrack.infer.cli import main

    assert main(["train", "fit", "--config", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--trainer.default_root_dir" in err and "give a folder" in err


def test_a_run_stopped_by_sigterm_fails_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dislotrack.infer.cli import main
    from dislotrack.train import cli

    def stopped(argv):  # what Lightning's loops raise after its SIGTERM handler ran
        raise SIGTERMException

    monkeypatch.setattr(cli, "train_main", stopped)
    assert main(["train", "fit", "--config", "cpu"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "train: stopped by SIGTERM" in err and "--ckpt_path last to resume" in err
    assert main(["train", "test", "--config", "cpu"]) == 128 + signal.SIGTERM
    assert "run it again" in capsys.readouterr().err
    from dislotrack.train import finetune

    monkeypatch.setattr(finetune, "finetune", lambda **kw: stopped(None))
    assert main(["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 128 + signal.SIGTERM
    assert "finetune: stopped by SIGTERM" in capsys.readouterr().err


def test_options_before_config_are_refused_not_overridden(tmp_path, capsys):
    from dislotrack.infer.cli import main
    from dislotrack.train.cli import check_config_first, config_path

    # Were the refusal to fail, this would be a one-batch run in tmp_path, not the recipe.
    assert main(["train", "fit", "--trainer.max_epochs", "1", "--data.n_val=8", "--config", "cpu",
                 "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert ("--trainer.max_epochs (set by cpu.yaml), --data.n_val (set by cpu.yaml) come before the "
            "config that sets them") in err and "give --config first" in err
    cpu = config_path("cpu")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  size: 64\n")
    # A later config that does not set the option leaves it alone; one that does, not.
    check_config_first(["fit", "--config", cpu, "--data.n_val", "8", "--config", str(overlay)])
    check_config_first(["fit", "--ckpt_path", "last", "--config", cpu])  # no config sets it
    with pytest.raises(Exception, match=r"--data.size \(set by overlay.yaml\) comes before"):
        check_config_first(["fit", "--config", cpu, "--data.size", "8", "-c", str(overlay)])
    with pytest.raises(Exception, match="--seed_everything .set by cpu.yaml. comes before"):
        check_config_first(["fit", "--seed_everything=3", f"--config={cpu}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_and_cluster_configs_on_a_cpu_say_which_option_to_add(tmp_path, capsys):
    from dislotrack.infer.cli import main

    root = f"--trainer.default_root_dir={tmp_path}"
    assert main(["train", "fit", "--config", "gpu", root]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("on a machine without a GPU pass --trainer.accelerator cpu")
    assert main(["train", "fit", "--config", "cluster", root, "--trainer.accelerator", "cpu",
                 "--trainer.num_nodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sync_batchnorm works on GPUs only" in err
    assert "--trainer.sync_batchnorm false" in err


def test_several_nodes_without_a_launcher_are_refused_not_left_waiting(tmp_path, monkeypatch, capsys):
    from dislotrack.infer.cli import main

    for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(k, raising=False)
    args = ["train", "fit", "--config", "cluster", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.precision=32", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--model.compile=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trainer.num_nodes is 2 but no cluster launcher" in err and "--trainer.num_nodes 1" in err


def _checkpoint(path, *, base_channels=4, extra=None, epoch=3, step=40):
    """A Lightning-style checkpoint of a tiny network, its best score 0.5 and its last NaN."""
    from dislotrack.train.module import ARCHITECTURE_KEY

    cfg = UNetConfig(base_channels=base_channels, depth=2)
    torch.save({"state_dict": {f"net.{k}": v for k, v in UNet(cfg).state_dict().items()},
                "epoch": epoch, "global_step": step,
                ARCHITECTURE_KEY: {**cfg.to_dict(), **(extra or {})},
                "callbacks": {"ModelCheckpoint{'monitor': 'val/f1'}": {
                    "monitor": "val/f1", "current_score": torch.tensor(float("nan")),
                    "best_model_score": torch.tensor(0.5)}}}, path)
    return path


def test_export_records_the_epoch_and_only_finite_scores(tmp_path):
    from dislotrack.train.export import export_checkpoint

    export_checkpoint(_checkpoint(tmp_path / "e.ckpt"), tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in a strict-JSON card"))
    assert card["training"]["checkpoint_epoch"] == 3 and card["training"]["steps"] == 40
    assert card["metrics"]["checkpoint"] == {"val/f1 (best model score)": 0.5}
    # From Python as from the CLI, an existing (perhaps calibrated) model is kept unless asked.
    (tmp_path / "m.json").write_text(json.dumps({**card, "decode_threshold": 0.35}))
    with pytest.raises(FileExistsError, match=r"m.safetensors exists: choose another output or pass "
                                              r"overwrite=True"):
        export_checkpoint(tmp_path / "e.ckpt", tmp_path / "m")
    assert json.loads((tmp_path / "m.json").read_text())["decode_threshold"] == 0.35
    export_checkpoint(tmp_path / "e.ckpt", tmp_path / "m", overwrite=True)
    assert "decode_threshold" not in json.loads((tmp_path / "m.json").read_text())


def test_a_setting_since_removed_does_not_hide_a_real_mismatch(tmp_path):
    from dislotrack.train.cli import _nested_setting, checkpoint_mismatch

    path = _checkpoint(tmp_path / "e.ckpt", extra={"a_setting_since_removed": 1})
    why = checkpoint_mismatch(path, UNetConfig(base_channels=8, depth=2))
    assert why and "base_channels 4 in the checkpoint, 8 here" in why
    # A nested setting of a class that is no dataclass: no nearest name to offer.
    msg = "Option 'pathh' is not accepted ... class_path 'dislotrack.train.export.ExportModel'"
    assert _nested_setting(msg) is None


def test_sizes_that_do_not_fit_the_network_are_refused_for_validate_too(tmp_path, capsys, monkeypatch):
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    run = ["--config", "cpu", *_TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "r")]
    assert main(["train", "fit", *run, "--data.eval_size", "18"]) == 2
    assert "takes multiples of 4 px, e.g. 16 or 20" in capsys.readouterr().err
    assert main(["train", "fit", *run, "--data.eval_size", "3"]) == 2
    assert "--data.eval_size 3: size must be >= 16 px, got 3" in capsys.readouterr().err
    assert main(["train", "validate", *run, "--data.eval_size", "30"]) == 2
    assert "--data.eval_size 30: the network (depth 2) takes multiples of 4 px" in capsys.readouterr().err


def test_the_cluster_config_trains_under_real_ddp_with_two_processes(tmp_path):
    # Two CPU ranks (gloo) as `srun` would start them on a node: Lightning's launcher
    # starts the second process by running the command again, so the test runs the
    # command line in a subprocess of its own.
    import subprocess
    import sys

    from dislotrack.models.io import load_model

    run = tmp_path / "run"
    command = [sys.executable, "-m", "dislotrack.infer.cli", "train", "fit", "--config", "cluster",
               "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.num_nodes=1",
               "--trainer.strategy=ddp", "--trainer.precision=32-true",
               "--trainer.sync_batchnorm=false", *_TINY_RUN, "--trainer.max_epochs=2",
               "--data.n_val=4", "--trainer.default_root_dir", str(run)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    net, card = load_model(run / "model")  # exported once, by rank 0
    assert card["architecture"]["base_channels"] == 4
    (metrics,) = run.glob("lightning_logs/version_*/metrics.csv")
    logged = pd.read_csv(metrics).dropna(subset=["val/f1"])
    assert logged["epoch"].tolist() == [0, 1]  # pooled over the ranks: one row per epoch
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_validation_scores_are_nan_where_undefined_but_f1_stays_a_number():
    module = DislocationModule(UNet(UNetConfig(base_channels=4, depth=2)))
    logged: dict[str, float] = {}
    module.log_dict = lambda metrics, **kw: logged.update(metrics)
    module._tallies = {"all": DetectionTally(tp=0, fp=0, fn=3)}  # nothing found of 3 cores
    module._epoch_end("val")
    assert logged["val/f1"] == 0.0  # picks checkpoints: a number
    assert logged["val/recall"] == 0.0 and np.isnan(logged["val/precision"])  # 0 / 0
    assert np.isnan(logged["val/rmse_nm"]) and np.isnan(logged["val/h_accuracy"])
    module._tallies = {"all": DetectionTally(tp=0, fp=2, fn=0)}  # a perfect lattice, 2 false
    module._epoch_end("val")
    assert logged["val/precision"] == 0.0 and np.isnan(logged["val/recall"])


def test_losses_without_targets_are_a_plain_zero_tied_to_the_network():
    # No annotated rock salt (a lab's frames) or no core with h: zero, not -0.0 (printed
    # as "train/rs=-0.00"), and still part of the graph (DDP needs every output used).
    from dislotrack.train.losses import bce_dice_loss, h_cosine_loss

    logit = torch.full((2, 1, 8, 8), -3.0, requires_grad=True)
    rs = bce_dice_loss(logit, torch.zeros_like(logit), known=torch.zeros(2))
    h = h_cosine_loss(torch.full((2, 2, 8, 8), -1.0, requires_grad=True), torch.ones(2, 2, 8, 8),
                      torch.zeros(2, 1, 8, 8))
    for loss in (rs, h):
        assert loss.item() == 0 and not torch.signbit(loss) and loss.requires_grad
    rs.backward()
    assert (logit.grad == 0).all()
    # With a known mask it is the BCE plus Dice of those samples.
    assert bce_dice_loss(logit, torch.zeros_like(logit), known=torch.tensor([1, 0])).item() > 0


def test_training_into_a_log_writes_one_line_per_epoch(tmp_path, monkeypatch, capsys):
    # A redrawn tqdm bar is one ever-growing line in a SLURM or nohup log: where no bar
    # would be seen, each epoch ends with one line instead (pytest's stderr is no terminal).
    from dislotrack.train import cli

    monkeypatch.chdir(tmp_path)
    tiny = ["--config", config_path("cpu"), "--model.net.init_args.config.base_channels=4",
            "--model.net.init_args.config.depth=2", "--data.batch_size=2", "--data.num_workers=0",
            "--data.size=32", "--data.eval_size=32", "--data.n_val=2", "--data.samples_per_epoch=4",
            "--trainer.log_every_n_steps=1", "--trainer.logger=false", "--trainer.max_epochs=2"]
    train_main(["fit", *tiny, "--trainer.default_root_dir=a"])
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "Sanity Checking" not in out + err  # Lightning's bar: stdout
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(" (")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("train/loss=" in ln and "val/f1=" in ln for ln in lines)
    # Epochs without validation show no stale scores of an earlier one.
    train_main(["fit", *tiny, "--trainer.default_root_dir=d", "--trainer.check_val_every_n_epoch=2"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and "val/" not in lines[0] and "val/f1=" in lines[1]
    # The config's choice stands: no progress at all...
    train_main(["fit", *tiny, "--trainer.default_root_dir=b", "--trainer.enable_progress_bar=false"])
    assert "epoch 1/2" not in capsys.readouterr().err
    # ...and where a bar is seen (a terminal, a notebook), Lightning's bar as before.
    monkeypatch.setattr(cli, "bar_is_seen", lambda: True)
    train_main(["fit", *tiny, "--trainer.default_root_dir=c"])
    out, err = capsys.readouterr()
    assert "epoch 1/2 (" not in err and "\r" in out  # the control: the bar redraws on stdout


def test_epoch_line_counts_epochs_from_one():
    from dislotrack.train.progress import epoch_line

    assert epoch_line(0, 48, 81.4, {"v_num": 0, "train/loss": 0.33912, "val/f1": torch.tensor(0.61)}) \
        == "epoch 1/48 (81 s): train/loss=0.3391, val/f1=0.61"
    assert epoch_line(2, -1, 1.25, {}) == "epoch 3 (1.2 s)"


def test_calibration_drops_cores_without_a_direction_as_validation_and_infer_do(monkeypatch):
    # A peak where the h field is zero has no direction: validation and infer drop it, so
    # the threshold chosen on validation must not count it either (the one decoding).
    from dislotrack.train import calibrate

    class PeakWithoutH(torch.nn.Module):
        def forward(self, x):
            out = torch.full((len(x), 4, *x.shape[-2:]), -20.0)
            yy, xx = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
            out[:, 0] = 40 * torch.exp(-((xx - 20.0) ** 2 + (yy - 20.0) ** 2) / 8.0) - 20
            out[:, 1:3] = 0.0  # h field zero everywhere
            return out

    monkeypatch.setattr(calibrate, "prepare_for_inference", lambda net: net)
    ds = FixedSynthetic(GeneratorConfig(size=64, perfect_fraction=1.0), n=2, seed=1)
    assert all(cores_from_batch(ds[i]["cores"][None])[0].empty for i in range(2))  # perfect lattices
    scores = calibrate.threshold_scores(PeakWithoutH(), ds, thresholds=[0.3])
    assert scores[0.3]["fp"] == 0


def test_a_checkpoint_holding_pickled_objects_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    # LightningCLI reads --ckpt_path's hyperparameters with weights_only=True (safe); what
    # that refuses is said in one line, not a 26-line UnpicklingError traceback.
    import fractions

    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": fractions.Fraction(1, 3)}}, foreign)
    run = [*_TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "r")]
    assert main(["train", "validate", "--config", "cpu", *run, "--ckpt_path", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds objects other than tensors" in err, err


@pytest.mark.parametrize("name", ["cpu", "cpu_stage2", "cpu_stage3", "cpu_fine", "cpu_inplane", "gpu",
                                  "cluster"])
def test_each_configs_best_checkpoints_are_named_as_the_messages_say(name):
    # `--ckpt_path best`'s message sends users to epochNN-f1_*.ckpt: every config writes them.
    import yaml

    callbacks = yaml.safe_load(open(config_path(name)))["trainer"]["callbacks"]
    best = [c["init_args"] for c in callbacks
            if c["class_path"].endswith("ModelCheckpoint") and c["init_args"].get("monitor")]
    assert best and all(b["filename"] == "epoch{epoch:02d}-f1_{val/f1:.3f}"
                        and b["auto_insert_metric_name"] is False for b in best)


def test_a_mistyped_class_path_in_a_users_config_is_one_line_with_the_nearest_class(tmp_path, capsys):
    # jsonargparse nests it in a Union error of some 1,400 characters for a callback.
    from dislotrack.infer.cli import main

    typo = open(config_path("cpu")).read().replace("callbacks.ModelCheckpoint\n",
                                                   "callbacks.ModelCheckpiont\n")
    assert "ModelCheckpiont" in typo
    (tmp_path / "mine.yaml").write_text(typo)
    assert main(["train", "fit", "--config", str(tmp_path / "mine.yaml"),
                 "--trainer.default_root_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 250, err
    assert ("trainer.callbacks: no class ModelCheckpiont in lightning.pytorch.callbacks (class_path "
            "lightning.pytorch.callbacks.ModelCheckpiont): did you mean "
            "lightning.pytorch.callbacks.ModelCheckpoint?") in err


def test_a_printed_config_keeps_its_paths_and_the_warning_says_how_to_start_one(tmp_path, capsys,
                                                                                monkeypatch):
    # --print_config writes ${trainer.default_root_dir} out: a new root does not move the
    # run's outputs, and the warning names the bundled YAML to copy instead.
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(["fit", "--config", "cpu", "--print_config"])
    (tmp_path / "mine.yaml").write_text(capsys.readouterr().out)
    with pytest.warns(UserWarning, match=r"outside trainer.default_root_dir \(runs/new\): a config "
                                         r"saved by an earlier run or written by --print_config "
                                         r"fixes these paths.*config_path\('cpu'\)"):
        assert main(["train", "fit", "--config", "mine.yaml", *_TINY_RUN,
                     "--trainer.default_root_dir", "runs/new"]) == 0
    assert (tmp_path / "runs/cpu/model.safetensors").is_file() and not (tmp_path / "runs/new").exists()


def test_a_refused_run_never_removes_a_folder_it_did_not_create(tmp_path, monkeypatch):
    # Without a logger, Lightning's log folder is the root itself: a refused run must not
    # remove it (it holds the user's own config, and whatever else they keep there).
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(open(config_path("cpu")).read())
    with pytest.raises(FileNotFoundError):
        train_main(["fit", "--config", "exp/config.yaml", *_TINY_RUN, "--trainer.logger=false",
                    "--trainer.default_root_dir=exp", "--ckpt_path", "nowhere.ckpt"])
    assert (exp / "config.yaml").is_file()


def test_a_requeued_slurm_job_resumes_from_its_hpc_checkpoint_not_last(tmp_path):
    # README's sbatch passes --ckpt_path last and SIGUSR1: Lightning saves hpc_ckpt_N.ckpt
    # at the signal but takes it only without a --ckpt_path, so the part-epoch was lost.
    import os

    from dislotrack.train.cli import requeued_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert requeued_checkpoint("last", tmp_path, ckpts, slurm=True) is None  # a first submission
    (ckpts / "last.ckpt").write_bytes(b"")
    os.utime(ckpts / "last.ckpt", (1000, 1000))
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (2000, 2000))  # saved after the last epoch ended
    assert requeued_checkpoint("last", tmp_path, ckpts, slurm=True) == "hpc"
    assert requeued_checkpoint("last", tmp_path, ckpts, slurm=False) is None  # not under SLURM
    assert requeued_checkpoint("runs/x.ckpt", tmp_path, ckpts, slurm=True) is None  # a file asked for
    os.utime(ckpts / "last.ckpt", (3000, 3000))  # an epoch ended after the signal's save
    assert requeued_checkpoint("last", tmp_path, ckpts, slurm=True) is None
    (ckpts / "last.ckpt").unlink()  # the signal came in the first epoch
    assert requeued_checkpoint("last", tmp_path, ckpts, slurm=True) == "hpc"


def test_the_bar_is_judged_by_stdout_where_lightning_draws_it(monkeypatch):
    # `dislotrack train fit ... | tee train.log` in a terminal: stderr is a terminal, but the
    # bar goes to stdout, into the log.
    import io

    from dislotrack.train import progress

    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delitem(progress.sys.modules, "ipykernel", raising=False)
    for out, err, seen in ((False, True, False), (True, False, True)):
        monkeypatch.setattr(progress.sys, "stdout", Stream(out))
        monkeypatch.setattr(progress.sys, "stderr", Stream(err))
        assert progress.bar_is_seen() is seen
