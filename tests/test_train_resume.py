"""Resuming a training run: which checkpoints load and how, and what a resume draws."""

import os
import shutil
import warnings

import pytest
import torch

from dislotrack.infer.cli import main
from dislotrack.train.cli import train_main

#: A network and data small enough for a fit of a few steps in about a second.
TINY = ["--config", "cpu", "--model.net.init_args.config.base_channels=4",
        "--model.net.init_args.config.depth=2", "--data.batch_size=2", "--data.num_workers=0",
        "--data.size=32", "--data.eval_size=32", "--data.n_val=2", "--data.n_test=2",
        "--data.samples_per_epoch=4", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]

#: The variables of a one-task SLURM job (Lightning then selects its SLURMEnvironment).
FAKE_SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
              "SLURM_JOB_NAME": "dislotrack", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


class _Payload:
    """Unpickled, it runs a shell command (creates the marker file)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """A finished tiny run's last checkpoint with a pickled payload added; the payload's
    marker file (created only if the checkpoint is unpickled)."""
    root = tmp_path_factory.mktemp("run")
    train_main(["fit", *TINY, "--trainer.default_root_dir", str(root)])
    ckpt = torch.load(root / "checkpoints/last.ckpt", weights_only=True)
    marker = root / "PWNED"
    ckpt["payload"] = _Payload(marker)
    torch.save(ckpt, root / "evil.ckpt")
    return root / "evil.ckpt", marker


def _refused_in_one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "posix.system" in err  # the global torch blocked
    assert "weights_only` set to `False" not in err  # never torch's advice to unpickle
    return err


def test_no_checkpoint_is_ever_unpickled_whatever_the_environment_says(evil, tmp_path, capsys,
                                                                       monkeypatch):
    # Lightning loads `last` and `hpc` with weights_only=None, which this variable turns
    # into an unpickling load: the payload ran.
    path, marker = evil
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    root = tmp_path / "r"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(path, root / "checkpoints/last.ckpt")
    run = [*TINY, "--trainer.default_root_dir", str(root)]
    err = _refused_in_one_line(capsys, ["train", "fit", *run, "--ckpt_path", "last"])
    assert f"--ckpt_path last ({root}/checkpoints/last.ckpt) holds objects other than tensors" in err
    _refused_in_one_line(capsys, ["train", "validate", *run, "--ckpt_path", "last"])
    _refused_in_one_line(capsys, ["train", "fit", *run, "--ckpt_path", str(path)])  # explicit, as before
    # Lightning's own option to unpickle, which LightningCLI offers: refused.
    assert main(["train", "fit", *run, "--ckpt_path", "last", "--weights_only", "false"]) == 2
    assert "--weights_only false: dislotrack reads checkpoints with weights_only=True only" in \
           capsys.readouterr().err
    # A requeued SLURM job resumes from the hpc checkpoint Lightning saved at the signal.
    for key, value in FAKE_SLURM.items():
        monkeypatch.setenv(key, value)
    shutil.copy(path, root / "hpc_ckpt_1.ckpt")
    err = _refused_in_one_line(capsys, ["train", "fit", *run, "--ckpt_path", "last"])
    assert f"({root}/hpc_ckpt_1.ckpt)" in err
    monkeypatch.delenv("SLURM_NTASKS")
    # train export: one line too (it printed torch's six).
    _refused_in_one_line(capsys, ["train", "export", str(path), "--out", str(tmp_path / "m")])
    assert not marker.exists()


def _recorded_fit(monkeypatch, argv, *, stop_at=None, signal_at=None,
                  signal_in=None) -> list[tuple[int, float, float]]:
    """(global step, sum of the batch's images, loss) of each training step of a fit;
    ``signal_at``: SLURM's time-limit signal after that step (Lightning saves its hpc
    checkpoint), then the job ends; ``signal_in``: the same during that step's
    training_step (before its optimizer step); ``stop_at``: the job ends after that step."""
    import signal

    from dislotrack.train.module import DislocationModule

    steps = []
    training_step = DislocationModule.training_step

    def step_then_signal(module, batch, batch_idx):
        loss = training_step(module, batch, batch_idx)
        if module.trainer.global_step + 1 == signal_in:
            signal.raise_signal(signal.SIGUSR1)
            raise RuntimeError("job ended")
        return loss

    def record(module, outputs, batch, batch_idx):
        step = module.trainer.global_step
        steps.append((step, float(batch["image"].double().sum()), float(outputs["loss"])))
        if step == signal_at:
            signal.raise_signal(signal.SIGUSR1)  # Lightning's handler saves hpc_ckpt_1.ckpt
        if step in (signal_at, stop_at):
            raise RuntimeError("job ended")

    with monkeypatch.context() as patch:
        patch.setattr(DislocationModule, "on_train_batch_end", record, raising=False)
        patch.setattr(DislocationModule, "training_step", step_then_signal)
        if stop_at or signal_at or signal_in:
            with pytest.raises(RuntimeError, match="job ended"):
                train_main(argv)
        else:
            train_main(argv)
    return steps


def test_a_resumed_run_trains_on_the_data_of_an_uninterrupted_one(tmp_path, monkeypatch):
    # A requeued SLURM job resumes in mid-epoch from hpc_ckpt_N.ckpt: it trained again on
    # the images of the epoch's first batches, and never drew the rest of the epoch.
    run = [*TINY, "--data.samples_per_epoch=8", "--trainer.max_epochs=2"]  # 4 steps an epoch
    whole = _recorded_fit(monkeypatch, ["fit", *run, "--trainer.default_root_dir", str(tmp_path / "R")])
    assert [s for s, _, _ in whole] == list(range(1, 9))
    assert len({img for _, img, _ in whole}) == 8
    # Killed at the end of epoch 0 (after its last.ckpt), resumed with --ckpt_path last.
    root = ["--trainer.default_root_dir", str(tmp_path / "E"), "--ckpt_path", "last"]
    resumed = _recorded_fit(monkeypatch, ["fit", *run, *root], stop_at=5)[:4]  # step 5: not saved
    resumed += _recorded_fit(monkeypatch, ["fit", *run, *root])
    assert [s[:2] for s in resumed] == [s[:2] for s in whole]
    assert [s[2] for s in resumed] == pytest.approx([s[2] for s in whole], abs=1e-6)
    # SLURM's signal after step 6 (epoch 1, batch 2 of 4); the requeued job goes on.
    scontrol = tmp_path / "bin/scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text("#!/bin/sh\nexit 0\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}:{os.environ['PATH']}")
    for key, value in FAKE_SLURM.items():
        monkeypatch.setenv(key, value)
    # Or during step 7's training_step: that batch is trained again, as Lightning redoes it.
    for name, at in (("H", {"signal_at": 6}), ("S", {"signal_in": 7})):
        root = ["--trainer.default_root_dir", str(tmp_path / name), "--ckpt_path", "last"]
        with warnings.catch_warnings():  # a first submission under SLURM: no last.ckpt, as expected
            warnings.filterwarnings("error", message="--ckpt_path last")
            resumed = _recorded_fit(monkeypatch, ["fit", *run, *root], **at)
        assert (tmp_path / name / "hpc_ckpt_1.ckpt").is_file()
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*dataloader is not resumable")  # Lightning's
            # README's resume path: the run's own checkpoint folder is not worth a warning.
            warnings.filterwarnings("error", message="Checkpoint directory .* exists and is not empty")
            resumed += _recorded_fit(monkeypatch, ["fit", *run, *root])
        assert [s[:2] for s in resumed] == [s[:2] for s in whole], name  # steps 7, 8: batches 3, 4
        assert [s[2] for s in resumed] == pytest.approx([s[2] for s in whole], abs=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_at_batch_k_is_the_rest_of_the_epochs_stream(workers):
    # Loader workers take turns by batch: after a resume at batch k, worker w goes on with
    # the stream of worker (w + k) % n, so that the order is the uninterrupted one.
    from torch.utils.data import DataLoader

    from dislotrack.data_gen.sample import GeneratorConfig
    from dislotrack.train.data import SyntheticStream

    ds = SyntheticStream(GeneratorConfig(size=32), seed=3, samples_per_epoch=9, batch_size=2)
    images = lambda: [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=workers)]  # noqa: E731
    whole = images()
    assert len(whole) == 5
    for k in (1, 2, 3, 4):
        ds.start_batch = k
        rest = images()
        assert len(rest) == 5 - k and all(torch.equal(a, b) for a, b in zip(rest, whole[k:], strict=True))


def test_a_resume_on_another_number_of_processes_warns_and_the_card_records_it(evil, tmp_path):
    # The checkpoint records the world size; a resume on 1 process of a 2-process run was
    # silent, though each epoch then draws half the samples at half the global batch.
    from dislotrack.models.io import load_model
    from dislotrack.train.module import PROCESSES, SCHEDULE_KEY

    run = evil[0].parent
    assert load_model(run / "model")[1]["training"]["world_size"] == 1
    root = tmp_path / "r"
    shutil.copytree(run, root, ignore=shutil.ignore_patterns("evil.ckpt"))
    ckpt = torch.load(root / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt[SCHEDULE_KEY][PROCESSES] == 1
    ckpt[SCHEDULE_KEY][PROCESSES] = 2  # as written by a run on two GPUs
    torch.save(ckpt, root / "checkpoints/last.ckpt")
    with pytest.warns(UserWarning, match=r"resumed on 1 process but the checkpoint's run used 2 "
                                         r"\(--trainer.devices x --trainer.num_nodes\)"):
        train_main(["fit", *TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"])


@pytest.mark.parametrize(("slurm", "expected"), [
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"},
     "the SLURM job runs 2 tasks per node (#SBATCH --ntasks-per-node=2) but --trainer.devices is 4: "
     "pass --trainer.devices 2"),
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "1"},
     "the SLURM job has 1 node (#SBATCH --nodes=1) but --trainer.num_nodes is 2: pass "
     "--trainer.num_nodes 1"),
    ({"SLURM_NTASKS": "8", "SLURM_NNODES": "2"},
     "#SBATCH --ntasks=8: Lightning needs --nodes and --ntasks-per-node instead"),
])
def test_a_slurm_job_that_does_not_fit_the_config_is_one_line_naming_the_options(
        slurm, expected, tmp_path, capsys, monkeypatch):
    # Lightning raised a 32-line traceback on every rank, its hint in Python (devices=2).
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    for key, value in {**FAKE_SLURM, **slurm}.items():
        monkeypatch.setenv(key, value)
    if "SLURM_NTASKS_PER_NODE" not in slurm:
        monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    assert main(["train", "fit", "--config", "cluster", "--trainer.accelerator", "cpu",
                 "--trainer.precision", "32-true", "--trainer.sync_batchnorm", "false",
                 "--trainer.default_root_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_a_run_stopped_by_max_steps_is_not_resumed_with_another_schedule(tmp_path, capsys, monkeypatch):
    # max_steps sets the one-cycle schedule's length, as max_epochs does: README listed
    # only the latter, and the refusal did not say that such a run is finished.
    monkeypatch.delenv("DISLOTRACK_DEBUG", raising=False)
    run = [*TINY, "--data.samples_per_epoch=8", "--trainer.default_root_dir", str(tmp_path / "r")]
    train_main(["fit", *run, "--trainer.max_steps=2"])  # 4 steps an epoch: stopped in mid-epoch
    assert main(["train", "fit", *run, "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert ("schedule spans 2 steps but this run plans 4 (--trainer.max_steps 2 -> -1); "
            "--trainer.max_steps ends the schedule, so the run it stopped is finished (not paused): "
            "resume with the settings it was trained with, or start a new run from its exported "
            "weights with --model.init_from <model>") in err


def test_an_epoch_cut_short_says_so_in_the_log(tmp_path, capsys):
    # --trainer.max_time (or max_steps) stops in mid-epoch; the line read as a whole epoch.
    run = [a for a in TINY if "enable_progress_bar" not in a]  # pytest's stderr: one line an epoch
    train_main(["fit", *run, "--data.samples_per_epoch=8", "--trainer.max_epochs=2",
                "--trainer.max_steps=3", "--trainer.default_root_dir", str(tmp_path / "r")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2 stopped after 3/4 batches ("), lines
