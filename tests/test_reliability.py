"""Faults survived: kill and resume, SIGTERM, atomic and failing checkpoint writes, non-finite
loss, W&B unavailable, bad checkpoints; determinism; DDP on two CPU processes."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from conftest import ROOT, run

from glimpse.data.sampler import SeededOrder
from glimpse.module import load_checkpoint
from glimpse.errors import RunFault
from glimpse.training.checkpoint_io import AtomicCheckpointIO
from glimpse.training.cpu_budget import CpuBudget
from glimpse.training.finite_gradients import FiniteGradients
from glimpse.training.last_checkpoint import LastCheckpoint

# 4 optimiser steps per epoch, 2 epochs, last.ckpt after every step
SMALL = ["experiment=smoke", "data.train_size=128", "data.val_size=32", "data.test_size=32", "model.policy.hidden=32",
         "callbacks.heatmap_metrics.num_images=8", "logger=none", "callbacks.last_checkpoint.every_n_steps=1",
         "callbacks.heatmaps=null"]


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run("train.py", *SMALL, f"paths.output_dir={out}")
    return out


@pytest.mark.slow  # the kill-and-resume test below already compares two processes' metrics.json exactly
def test_same_config_and_seed_give_identical_metrics(uninterrupted, tmp_path):
    run("train.py", *SMALL, f"paths.output_dir={tmp_path}")
    assert metrics_of(tmp_path) == metrics_of(uninterrupted)


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, f"paths.output_dir={tmp_path}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 1 <= step < 8
    assert not (tmp_path / "metrics.json").exists()
    run("train.py", *SMALL, f"paths.output_dir={tmp_path}", "ckpt_path=last")
    assert metrics_of(tmp_path) == metrics_of(uninterrupted)


def _best_record(out: Path) -> dict:
    """The ModelCheckpoint state in ``out``'s last.ckpt."""
    callbacks = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    return next(v for k, v in callbacks.items() if k.startswith("ModelCheckpoint"))


def test_kill_after_an_epoch_end_save_then_resume_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    """SIGKILL at the first batch of epoch 1: the last save is epoch 0's end, whose best-model
    record must already hold epoch 0's checkpoint (it was written before ModelCheckpoint's)."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "WANDB_MODE": "disabled"}
    proc = run("train.py", *SMALL, f"paths.output_dir={tmp_path}", "+callbacks.fault._target_=faults.KillAtEpochStart",
               "+callbacks.fault.epoch=1", env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    record = _best_record(tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert Path(record["best_model_path"]).name == "epoch_000.ckpt" and Path(record["best_model_path"]).is_file()
    run("train.py", *SMALL, f"paths.output_dir={tmp_path}", "ckpt_path=last")
    assert (tmp_path / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()
    names = lambda out: sorted(p.name for p in (out / "checkpoints").glob("epoch_*.ckpt"))  # noqa: E731
    assert names(tmp_path) == names(uninterrupted) and len(names(tmp_path)) == 1, "one best checkpoint, the same one"
    resumed, reference = _best_record(tmp_path), _best_record(uninterrupted)
    assert Path(resumed["best_model_path"]).name == Path(reference["best_model_path"]).name
    assert float(resumed["best_model_score"]) == float(reference["best_model_score"])


def test_resuming_a_finished_run_tests_again_without_training(uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "finished"
    shutil.copytree(uninterrupted, out)
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    proc = run("train.py", *SMALL, f"paths.output_dir={out}", "ckpt_path=last")
    assert proc.returncode == 0 and "had finished fitting" in proc.stdout
    assert last.read_bytes() == before, "nothing was trained or saved"
    assert (out / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()


def test_sigterm_to_the_whole_process_group_with_a_data_worker_saves_then_exits_143(tmp_path):
    """``timeout``, ``kill -- -PGID`` and SLURM's scancel signal every process of the job, the
    DataLoader worker included; the worker must not die before the main process has saved."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    args = [*SMALL, "data.num_workers=1", f"paths.output_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the process group: main process and worker alike
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, f"exit {proc.returncode}, not 143 (saved, then exited):\n{stderr[-3000:]}"
    assert "SIGTERM: saved" in stderr and "Traceback" not in stderr, stderr[-3000:]
    step = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 1 <= step < 8
    run("train.py", *args, "ckpt_path=last")
    assert metrics_of(tmp_path)["test/multiset/f1"] >= 0


def test_resume_last_without_a_checkpoint_is_a_clear_error(tmp_path):
    proc = run("train.py", *SMALL, f"paths.output_dir={tmp_path}", "ckpt_path=last", check=False)
    assert proc.returncode == 2 and "ckpt_path=last" in proc.stderr and "Traceback" not in proc.stderr


# -- in-process faults on a tiny model ------------------------------------------------------------
class Tiny(pl.LightningModule):
    """A linear model whose loss turns NaN at ``nan_at`` (global step) and which sends itself
    SIGTERM at ``sigterm_at``."""

    def __init__(self, nan_at: int = -1, sigterm_at: int = -1, nan_grad_at: int = -1):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_at, self.sigterm_at, self.nan_grad_at = nan_at, sigterm_at, nan_grad_at

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        if self.global_step == self.nan_grad_at:  # finite loss, infinite gradient
            loss = loss + (self.layer.weight.sum() * 0).sqrt()  # d sqrt(x)/dx at 0 is inf
        if self.global_step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4))
        return torch.utils.data.DataLoader(data, batch_size=8)


def fit_tiny(tmp_path, model, **last_kwargs):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()],
                         callbacks=[LastCheckpoint(tmp_path / "checkpoints", **last_kwargs), FiniteGradients()])
    trainer.fit(model)
    return trainer


def saved_step(tmp_path) -> int:
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_non_finite_loss_stops_naming_step_epoch_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(RunFault, match=r"non-finite training loss .* at global step 11, epoch 1, batch 3"):
        fit_tiny(tmp_path, Tiny(nan_at=11), every_n_steps=2)
    assert saved_step(tmp_path) == 10  # saved after step 10; the bad step 11 is not saved
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def test_non_finite_gradient_stops_before_the_optimiser_step(tmp_path):
    with pytest.raises(RunFault, match=r"non-finite gradient at global step 5, epoch 0, batch 5 .*layer.weight"):
        fit_tiny(tmp_path, Tiny(nan_grad_at=5), every_n_steps=1)
    assert saved_step(tmp_path) == 5
    assert torch.isfinite(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
                          ["state_dict"]["layer.weight"]).all()


def test_sigterm_saves_then_exits_143_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        fit_tiny(tmp_path, Tiny(sigterm_at=2), every_n_steps=None, every_seconds=None)
    assert exit_info.value.code == 143
    assert saved_step(tmp_path) == 3  # the batch that got the signal finished, then the save
    assert signal.getsignal(signal.SIGTERM) == before


def test_checkpoint_holds_rng_states_and_restores_them(tmp_path):
    fit_tiny(tmp_path, Tiny(), every_n_steps=None)
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]["LastCheckpoint"]
    assert {"torch", "numpy", "python"} <= set(states["rng_states"])
    LastCheckpoint(tmp_path).load_state_dict(states)
    assert torch.equal(torch.get_rng_state(), states["rng_states"]["torch"])


@pytest.mark.parametrize("key, value", [("every_n_steps", 0), ("every_n_steps", 2.5), ("every_seconds", -1)])
def test_bad_interval_names_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=f"callbacks.last_checkpoint.{key}={value}"):
        LastCheckpoint(tmp_path, **{key: value})


def test_a_write_that_fails_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RunFault) as err:
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    message = str(err.value)
    assert str(path) in message and "No space left on device" in message and "previous checkpoint there is kept" in message
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temporary file is gone


# -- W&B never stops training -------------------------------------------------------------------
def test_wandb_init_failing_falls_back_to_csv(tmp_path, monkeypatch):
    import wandb

    from glimpse.loggers import wandb_logger

    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    with pytest.warns(UserWarning, match="unreachable.*CSV"):
        logger = wandb_logger(save_dir=str(tmp_path), mode="online")
    assert isinstance(logger, CSVLogger)


def test_wandb_dir_unwritable_falls_back_to_csv(tmp_path):
    """A directory W&B cannot create (its parent is a file; chmod does not stop root)."""
    from glimpse.loggers import wandb_logger

    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match="CSV"):
        logger = wandb_logger(save_dir=str(tmp_path / "file" / "run"), mode="offline")
    assert isinstance(logger, CSVLogger)


def test_wandb_not_logged_in_runs_offline(tmp_path, monkeypatch):
    from glimpse.loggers import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning: W&B itself runs, offline
        logger = wandb_logger(save_dir=str(tmp_path), mode=None)
    try:
        assert logger.experiment.settings.mode == "offline"
    finally:
        logger.experiment.finish()


# -- bad checkpoints ------------------------------------------------------------------------------
def test_checkpoint_of_another_shape_or_non_finite_weights_is_a_clear_error(uninterrupted, tmp_path):
    checkpoint = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=False)
    other = dict(checkpoint, hyper_parameters=dict(checkpoint["hyper_parameters"]))
    other["hyper_parameters"]["policy"] = dict(other["hyper_parameters"]["policy"], hidden=48)
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(str(tmp_path / "other.ckpt"))
    bad = dict(checkpoint, state_dict=dict(checkpoint["state_dict"]))
    name = next(iter(bad["state_dict"]))
    bad["state_dict"][name] = bad["state_dict"][name] * float("nan")
    torch.save(bad, tmp_path / "nan.ckpt")
    with pytest.raises(ValueError, match=f"non-finite.*{name}"):
        load_checkpoint(str(tmp_path / "nan.ckpt"))
    # through the command: one line, exit 2, nothing written
    out = tmp_path / "eval"
    proc = run("evaluate.py", f"ckpt_path={tmp_path / 'other.ckpt'}", f"paths.output_dir={out}", "data.test_size=8",
               "data.num_workers=0", check=False)
    assert proc.returncode == 2 and "does not fit" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


# -- DDP: Lightning's engine on two CPU processes ------------------------------------------------
@pytest.mark.slow
def test_ddp_two_cpu_processes_test_metrics_match_one_process(tmp_path):
    ddp = tmp_path / "ddp"
    run("train.py", *SMALL, "trainer=ddp", "trainer.accelerator=cpu", f"paths.output_dir={ddp}")
    trained = metrics_of(ddp)
    best = next((ddp / "checkpoints").glob("epoch_*.ckpt"))
    single = tmp_path / "single"
    run("evaluate.py", f"ckpt_path={best}", "data.test_size=32", "data.num_workers=0", "heatmaps.max_images=8",
        f"paths.output_dir={single}")
    one = metrics_of(single)
    for key in ("exact_match", "precision", "recall", "f1"):
        assert trained[f"test/multiset/{key}"] == pytest.approx(one[f"multiset/{key}"], abs=1e-6)


# -- bad data and config values -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "data.batch_size=0 must be an integer >= 1"),
    (dict(num_workers=-1), "data.num_workers=-1 must be an integer >= 0"),
    (dict(train_size=0), "size=0: a split needs at least 1 canvas"),
])
def test_bad_data_values_name_the_key(kwargs, message):
    from glimpse.data.mnist_datamodule import MultisetMNISTDataModule

    with pytest.raises(ValueError, match=message):
        MultisetMNISTDataModule(**kwargs).train_dataloader()


def test_empty_split_and_wrong_channel_count_are_clear_errors():
    from glimpse.data.loaders import seeded_loader
    from glimpse.models.backbone import ConvBackbone

    with pytest.raises(ValueError, match="is empty"):
        seeded_loader([], 4, True, 0, 0, False)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, H, W\).*model.backbone.in_channels"):
        ConvBackbone(in_channels=1)(torch.zeros(2, 3, 32, 32))


# -- the training order ---------------------------------------------------------------------------
class OrderProbe(pl.LightningModule):
    def __init__(self, loader):
        super().__init__()
        self.layer, self.loader, self.seen = torch.nn.Linear(1, 1), loader, []

    def training_step(self, batch, batch_idx):
        self.seen += batch.tolist()
        return self.layer(batch.float()[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return self.loader


@pytest.mark.parametrize("num_workers", [0, 1])
def test_seeded_order_is_the_order_of_a_seeded_shuffled_loader_under_lightning(num_workers):
    """The default run keeps the batches it had before SeededOrder (a shuffled DataLoader with a seeded generator)."""
    from glimpse.data.loaders import seeded_loader

    data = list(range(20))
    plain = torch.utils.data.DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(7),
                                        num_workers=num_workers, persistent_workers=num_workers > 0)
    seen = []
    for loader in (plain, seeded_loader(data, 5, True, 7, num_workers, False)):
        probe = OrderProbe(loader)
        pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False).fit(probe)
        seen.append(probe.seen)
    assert seen[0] == seen[1] and len(seen[0]) == 60
    assert sorted(seen[1][20:40]) == data and seen[1][:20] != seen[1][20:40]  # each epoch a new permutation


class _WorkerDraws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        import random
        return torch.tensor([random.random(), torch.rand(()).item(), float(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))])


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the worker keeps the default SIGTERM without sigwaitinfo")
def test_data_workers_block_sigterm_and_keep_lightnings_worker_seeding(monkeypatch):
    """``worker_init`` replaces the worker_init_fn Lightning adds under ``seed_everything(workers=True)``:
    the workers must draw the same random numbers as with Lightning's."""
    from functools import partial

    from lightning.fabric.utilities.seed import pl_worker_init_function

    from glimpse.data.loaders import seeded_loader

    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    ours = torch.cat(list(seeded_loader(_WorkerDraws(), 2, True, 5, 1, False)))
    lightnings = torch.cat(list(torch.utils.data.DataLoader(
        _WorkerDraws(), batch_size=2, sampler=SeededOrder(4, 5, True), generator=torch.Generator().manual_seed(5),
        num_workers=1, worker_init_fn=partial(pl_worker_init_function, rank=0))))
    assert torch.equal(ours[:, :2], lightnings[:, :2])
    assert ours[:, 2].eq(1).all() and lightnings[:, 2].eq(0).all()  # only glimpse's handler leaves SIGTERM to its thread


def test_seeded_order_resumes_mid_epoch():
    from glimpse.data.sampler import SeededOrder

    order = SeededOrder(10, seed=3)
    order.set_epoch(2)
    full = list(order)
    order.start = 4
    assert list(order) == full[4:] and len(order) == 10
    order.set_epoch(3)  # a new epoch starts from its beginning
    assert len(list(order)) == 10 and order.start == 0


def _budget_trainer():
    return SimpleNamespace(should_stop=False, global_step=7,
                           strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))


def _burn_cpu(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(1000))


def test_cpu_budget_counts_cpu_time_not_waiting_and_carries_over_a_resume():
    budget, trainer = CpuBudget(minutes=0.3 / 60), _budget_trainer()
    budget.on_fit_start(trainer, None)
    time.sleep(0.5)  # waiting (another job holding the core) is not CPU time
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    _burn_cpu(0.35)
    budget.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop
    state = budget.state_dict()
    assert 0.35 <= state["used_seconds"] < 2.0
    resumed, trainer = CpuBudget(minutes=0.3 / 60), _budget_trainer()
    resumed.load_state_dict(state)
    resumed.on_fit_start(trainer, None)
    resumed.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop, "a resumed run continues the budget it had used"


@pytest.mark.parametrize("minutes", [0, -1, "10", True])
def test_cpu_budget_rejects_what_is_not_a_positive_number_of_minutes(minutes):
    with pytest.raises(ValueError, match="must be a number of CPU minutes > 0"):
        CpuBudget(minutes=minutes)
