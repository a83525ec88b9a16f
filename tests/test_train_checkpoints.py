"""Training checkpoints and epochs: keys independent of ``compile``, old checkpoints,
the training stream's epoch without reloading, and resuming after ``init_from`` moved."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from test_train import _TINY_RUN  # tests/ is on sys.path (pytest's rootdir-relative import)
from torch import nn

from dislotrack.models.io import load_model, save_model
from dislotrack.models.unet import UNet, UNetConfig
from dislotrack.train.cli import train_main
from dislotrack.train.data import SyntheticStream
from dislotrack.train.datamodule import SyntheticDataModule
from dislotrack.train.errors import TrainConfigError
from dislotrack.train.module import DislocationModule

TINY_NET = UNetConfig(base_channels=4, depth=2)


def _tiny_data(**kw) -> SyntheticDataModule:
    """Four 64 px training samples per epoch in one batch, two test images, no workers."""
    return SyntheticDataModule(**{"size": 64, "eval_size": 64, "batch_size": 4, "num_workers": 0,
                                  "samples_per_epoch": 4, "n_val": 0, "n_test": 2, **kw})


def _trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(**{"accelerator": "cpu", "devices": 1, "logger": False,
                        "enable_checkpointing": False, "enable_progress_bar": False,
                        "enable_model_summary": False, "limit_val_batches": 0,
                        "num_sanity_val_steps": 0, "default_root_dir": str(tmp_path),
                        "max_epochs": 1, **kw})


class _FakeCompiled(nn.Module):
    """Stands in for ``torch.compile``'s wrapper (an ``_orig_mod`` submodule, as torch's
    ``OptimizedModule``) without compiling, which takes minutes on a CPU."""

    calls = 0

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__()
        self._orig_mod = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return self._orig_mod(x)


def test_checkpoint_keys_do_not_depend_on_compile():
    # The real wrapper (built lazily: nothing compiles until the first forward).
    plain = DislocationModule(UNet(TINY_NET), compile=False)
    compiled = DislocationModule(UNet(TINY_NET), compile=True)
    keys = list(plain.state_dict())
    assert keys and all(k.startswith("net.") for k in keys)
    assert list(compiled.state_dict()) == keys
    compiled.load_state_dict(plain.state_dict())  # strict, both ways
    plain.load_state_dict(compiled.state_dict())
    assert all(torch.equal(v, compiled.state_dict()[k]) for k, v in plain.state_dict().items())


def test_a_compiled_runs_checkpoint_tests_without_compile_and_old_checkpoints_load(
        tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", _FakeCompiled)
    monkeypatch.setattr(_FakeCompiled, "calls", 0)
    torch.manual_seed(0)
    compiled = DislocationModule(UNet(TINY_NET), compile=True)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(compiled, _tiny_data())
    assert _FakeCompiled.calls >= 1  # training ran through the compiled wrapper
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    saved = torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"]
    plain = DislocationModule(UNet(TINY_NET), compile=False)
    assert list(saved) == list(plain.state_dict())  # no _forward._orig_mod.* copies
    _trainer(tmp_path).test(plain, _tiny_data(), ckpt_path=tmp_path / "compiled.ckpt", verbose=False)
    assert all(torch.equal(v, saved[k]) for k, v in plain.state_dict().items())
    # Checkpoints up to 0.1.24 hold the network twice: `_forward.*` (plain runs) or
    # `_forward._orig_mod.*` (compiled runs). Both load into either kind of module.
    ckpt = torch.load(tmp_path / "compiled.ckpt", weights_only=True)
    for prefix in ("_forward.", "_forward._orig_mod."):
        old = {**ckpt, "state_dict": {**saved, **{prefix + k[len("net."):]: v for k, v in saved.items()}}}
        torch.save(old, tmp_path / "old.ckpt")
        for compile in (False, True):
            module = DislocationModule(UNet(TINY_NET), compile=compile)
            _trainer(tmp_path).test(module, _tiny_data(), ckpt_path=tmp_path / "old.ckpt", verbose=False)
            assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
            module.load_state_dict(old["state_dict"])  # a plain load_state_dict too


def test_the_training_stream_follows_the_epoch_without_reloading_the_loader(tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            ds = trainer.train_dataloader.dataset
            seen.append((ds.epoch, ds.config, batch["image"][0].clone()))

    dm = _tiny_data(curriculum_epochs=3)
    # The bundled configs reload the loader each epoch; the Python API's default does not.
    trainer = _trainer(tmp_path, max_epochs=3, reload_dataloaders_every_n_epochs=0,
                       callbacks=[Record()])
    trainer.fit(DislocationModule(UNet(TINY_NET)), dm)
    hp = dm.hparams
    assert [epoch for epoch, _, _ in seen] == [0, 1, 2]
    for epoch, config, image in seen:
        # Each epoch draws its own samples, at its curriculum stage: as a stream made for it.
        want = dm.generator_config(hp.size, hp.pixel_size_jitter, epoch, train=True)
        assert config == want
        stream = SyntheticStream(want, seed=hp.seed, n_variants=hp.n_variants,
                                 samples_per_epoch=hp.samples_per_epoch, batch_size=hp.batch_size)
        stream.set_epoch(epoch)
        assert torch.equal(image, next(iter(stream))["image"])
    assert not torch.equal(seen[0][2], seen[1][2]) and seen[0][1].realism < seen[2][1].realism


def test_a_missing_init_from_is_needed_only_where_no_checkpoint_replaces_it(tmp_path):
    base = tmp_path / "base"
    save_model(UNet(TINY_NET), base, card={"canonical_pixel_size_nm": 0.1, "generator": {},
                                           "training": {}, "metrics": {}})
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(DislocationModule(UNet(TINY_NET), init_from=str(base)), _tiny_data())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    for p in tmp_path.glob("base.*"):
        p.unlink()
    # Testing (or resuming) the run: the checkpoint holds every weight.
    module = DislocationModule(UNet(TINY_NET), init_from=str(base))
    _trainer(tmp_path).test(module, _tiny_data(), ckpt_path=tmp_path / "run.ckpt", verbose=False)
    # A new fit from it, or scoring it, still needs it: said in one line.
    said = rf"--model.init_from {base}: model file {base}.safetensors does not exist"
    for run in (lambda t, m: t.fit(m, _tiny_data()), lambda t, m: t.test(m, _tiny_data(), verbose=False)):
        with pytest.raises(TrainConfigError, match=said):
            run(_trainer(tmp_path), DislocationModule(UNet(TINY_NET), init_from=str(base)))


def test_a_fine_tuned_run_resumes_and_tests_after_its_init_from_model_moved(tmp_path, monkeypatch, capsys):
    from dislotrack.infer.cli import main

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"  # the architecture of cpu.yaml's network, 4 wide and 2 deep
    net = UNet(UNetConfig(base_channels=4, depth=2, norm="batch", fringe_period_px=4.73))
    save_model(net, base, card={"canonical_pixel_size_nm": 0.1, "generator": {}, "training": {},
                                "metrics": {}})
    sha = load_model(base)[1]["sha256"]
    tiny = ["--config", "cpu", *_TINY_RUN, "--model.init_from", str(base), "--trainer.max_epochs=2"]
    run = [*tiny, "--trainer.default_root_dir", str(tmp_path / "r")]

    _interrupt_move_base_and_resume(run, tmp_path, monkeypatch, capsys)
    card = json.loads((tmp_path / "r" / "model.json").read_text())
    assert card["training"]["epochs"] == 2
    assert card["training"]["init_from_sha256"] == sha  # kept in the checkpoint
    assert main(["train", "test", *run, "--ckpt_path", "last"]) == 0, capsys.readouterr().err
    # A new run from it still needs it: refused in one line, before training.
    capsys.readouterr()
    assert main(["train", "fit", *tiny, "--trainer.default_root_dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert f"--model.init_from {base}: model file {base}.safetensors does not exist" in err
    assert err.count("\n") == 1 and not (tmp_path / "r2" / "checkpoints").exists()



def test_export_at_the_end_of_fit_leaves_the_module_its_last_weights(tmp_path):
    # The export loads the best checkpoint into a copy: a `test` after `fit` (in Python, or
    # on DDP ranks other than 0) scores the weights trained last, as Lightning says.
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dislotrack.train.export import ExportModel

    torch.manual_seed(0)
    module = DislocationModule(UNet(TINY_NET))
    first = {k: v.clone() for k, v in module.net.state_dict().items()}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    export = ExportModel(str(tmp_path / "model"))
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt, export])
    early = tmp_path / "epoch0.ckpt"  # stands in for a best epoch that is not the last
    trainer.fit(module, datamodule=_tiny_data())
    last = {k: v.clone() for k, v in module.net.state_dict().items()}
    torch.save({"state_dict": {f"net.{k}": v for k, v in first.items()}, "epoch": 0}, early)
    ckpt.best_model_path = str(early)
    export.on_fit_end(trainer, module)  # as at the end of fit, with that best checkpoint
    assert all(torch.equal(module.net.state_dict()[k], last[k]) for k in last)  # untouched
    exported, _ = load_model(tmp_path / "model")
    assert all(torch.equal(exported.state_dict()[k], first[k]) for k in first)  # the best's
    assert not all(torch.equal(first[k], last[k]) for k in first)  # training changed them


def test_a_run_from_a_fine_tuned_model_keeps_its_record_through_resume_and_export(tmp_path, monkeypatch,
                                                                                  capsys):
    """`train fit --model.init_from` a fine-tuned model: the exported card keeps that model's
    training record (``training.base``: its rounds of fine-tuning), so that evaluate still
    knows the items it learnt from; a resume (the base moved away) and an export of a
    checkpoint keep it too."""
    from dislotrack.infer.cli import main
    from dislotrack.infer.outputs import _finetuned_on

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    tuned = {"data": "/lab/ann", "split": "items", "val_items": ["b.json"], "train_items": ["a.json"],
             "train_items_sha256": ["ab" * 32], "epochs": 3}
    record = {"base": {"recipe": "cpu"}, "finetune": tuned}  # as finetune writes it
    net = UNet(UNetConfig(base_channels=4, depth=2, norm="batch", fringe_period_px=4.73))
    save_model(net, base, card={"canonical_pixel_size_nm": 0.1, "generator": {}, "training": record,
                                "metrics": {}})
    run = ["--config", "cpu", *_TINY_RUN, "--model.init_from", str(base), "--trainer.max_epochs=2",
           "--trainer.default_root_dir", str(tmp_path / "r")]

    _interrupt_move_base_and_resume(run, tmp_path, monkeypatch, capsys)
    card = json.loads((tmp_path / "r" / "model.json").read_text())
    assert card["training"]["base"] == record  # from the checkpoint: the base is gone
    assert _finetuned_on(card) == {k: tuned[k] for k in ("data", "split", "val_items", "train_items",
                                                          "train_items_sha256")}
    (ckpt,) = (tmp_path / "r").rglob("last.ckpt")
    assert main(["train", "export", str(ckpt), "--out", str(tmp_path / "again")]) == 0
    assert load_model(tmp_path / "again")[1]["training"]["base"] == record


def _interrupt_move_base_and_resume(run: list[str], tmp_path, monkeypatch, capsys) -> None:
    """Run ``train fit`` until epoch 0 is checkpointed, move the base model (``base.*``)
    away, and resume from the last checkpoint (which must succeed)."""
    from dislotrack.infer.cli import main

    def crash(module):
        if module.current_epoch == 1:  # epoch 0 done and checkpointed
            raise RuntimeError("interrupted")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="interrupted"):
        patch.setattr(DislocationModule, "on_train_epoch_start", crash, raising=False)
        train_main(["fit", *run])
    for p in tmp_path.glob("base.*"):  # the base model moved away since
        p.rename(tmp_path / f"moved{p.suffix}")
    capsys.readouterr()
    assert main(["train", "fit", *run, "--ckpt_path", "last"]) == 0, capsys.readouterr().err
