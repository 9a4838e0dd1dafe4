"""The command-line contract, through the real commands: bad input is one ``error:`` line on
stderr, exit code 2, the run dir untouched; a fault during a run is one ``error:`` line, exit
code 1, the last good ``last.ckpt`` kept; a multirun writes each job into its own dir with a
summary; the core install (without the test extras) trains and evaluates."""
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, require, run

TESTS = Path(__file__).resolve().parent


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command: the last line of stderr, the only such line."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("script, overrides, fragments", [
    ("train.py", ["data=imagenet"], ["data=imagenet", "choose one of", "coco", "multiset_mnist", "voc"]),
    ("train.py", ["model.nonexistent_key=1"], ["model.nonexistent_key", "no key 'nonexistent_key'", "policy", "lr"]),
    ("train.py", ["trainer.max_epochs=abc"], ["trainer.max_epochs", "must be an integer"]),
    ("train.py", ["test=maybe"], ["test=maybe", "true or false"]),
    ("train.py", ["trainer.max_epochs=[1,"], ["trainer.max_epochs=[1,", "not a valid override"]),
    ("train.py", ["data.max_digit_size=120"], ["max_digit_size=120", "canvas_size=100"]),
    ("train.py", ["objective.label_loss=ctc"], ["objective.label_loss", "ctc"]),
    ("train.py", ["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path=/nonexistent/last.ckpt", "no checkpoint at"]),
    ("evaluate.py", ["data=imagenet", "ckpt_path=x.ckpt"], ["data=imagenet", "choose one of"]),
    ("evaluate.py", ["ckpt_path=/nonexistent.ckpt"], ["ckpt_path=/nonexistent.ckpt", "no checkpoint at"]),
])
def test_bad_input_is_one_error_line_exit_2_and_no_run_dir(tmp_path, script, overrides, fragments):
    out = tmp_path / "run"
    tiny = [*TINY, "logger=none"] if script == "train.py" else []
    proc = run(script, *tiny, f"paths.output_dir={out}", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().count("\n") == 0, f"more than one line on stderr:\n{proc.stderr[-3000:]}"
    line = error_line(proc)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_bad_input_leaves_an_existing_run_dir_unchanged(tmp_path):
    """A resumed run with a bad value: no .hydra/, no log, the files there untouched."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (out / "metrics.json").write_text("{}\n")
    before = snapshot(out)
    for bad in ("data.max_digit_size=120", "model.nonexistent_key=1"):
        proc = run("train.py", *TINY, "logger=none", f"paths.output_dir={out}", "ckpt_path=last", bad, check=False)
        assert proc.returncode == 2 and bad.split("=")[0].split(".")[-1] in error_line(proc)
        assert snapshot(out) == before


def _fault_env(tmp_path: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "disabled"}


# 4 optimiser steps per epoch, last.ckpt after every step
FAULT_RUN = [*TINY, "logger=none", "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_steps=1",
             "callbacks.heatmap_metrics.num_images=8", "trainer.enable_progress_bar=false"]


def test_faults_during_a_run_exit_1_with_one_line_and_keep_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    # every weight turns NaN before step 2: the run stops at step 2; last.ckpt is step 2's, finite
    proc = run("train.py", *FAULT_RUN, f"paths.output_dir={out}", "+callbacks.fault._target_=faults.NanWeightsAtStep",
               "+callbacks.fault.step=2", env=_fault_env(tmp_path), check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "at global step 2, epoch 0" in error_line(proc)
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    from glimpse.module import load_checkpoint

    load_checkpoint(str(last))  # usable as it is

    # a full disk (here: a file-size limit smaller than a checkpoint) when resuming from it
    good = last.read_bytes()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) // 2, len(good) // 2))

    proc = run("train.py", *FAULT_RUN, f"paths.output_dir={out}", "ckpt_path=last", env=_fault_env(tmp_path),
               check=False, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc)
    assert "could not write checkpoint" in line and "File too large" in line, line
    assert last.read_bytes() == good, "the last good last.ckpt is kept"
    assert not list(last.parent.glob(".*tmp*")), "no temporary file left behind"


def test_multirun_writes_each_job_into_its_own_dir_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    run("train.py", "-m", *TINY, "data.train_size=64", "logger=wandb", "trainer.enable_progress_bar=false", "seed=0,1",
        f"hydra.sweep.dir={sweep}")
    metrics = []
    for job in ("0", "1"):
        job_dir = sweep / job
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        assert list((job_dir / "wandb").glob("offline-run-*")), "each job keeps its own W&B run"
        assert f"seed={job}" in (job_dir / ".hydra" / "overrides.yaml").read_text()
        metrics.append(json.loads((job_dir / "metrics.json").read_text()))
    assert metrics[0] != metrics[1], "the two seeds ran as two runs"
    summary = (sweep / "summary.md").read_text().splitlines()
    rows = [line for line in summary if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(rows) == 2 and "`seed=0`" in rows[0] and "`seed=1`" in rows[1]
    f1_column = summary[2].split(" | ").index("`test/multiset/f1`")
    for row, job_metrics in zip(rows, metrics):
        assert float(row.split(" | ")[f1_column]) == pytest.approx(job_metrics["test/multiset/f1"], abs=5e-5)
    assert (sweep / "summary.csv").read_text().count("\n") == 3


BLOCKER = '''
import sys

BLOCKED = {"captum", "pytorch_grad_cam", "torchcam", "hypothesis"}


class Hide:
    """The core install: the test extras are not found (find_spec gives None, import fails)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
'''


def test_core_install_trains_and_evaluates_without_the_test_extras(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    probe = subprocess.run([sys.executable, "-c", "import captum"], env={**os.environ, **env}, capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "No module named 'captum'" in probe.stderr, "the blocker is in place"
    out = tmp_path / "run"
    run("train.py", "experiment=smoke", "data.train_size=64", "data.val_size=32", "data.test_size=32",
        "model.policy.hidden=32", "logger=none", "callbacks.heatmap_metrics.num_images=8",
        "callbacks.heatmaps.num_images=1", f"paths.output_dir={out}", env=env)
    assert (out / "heatmaps").is_dir(), "the attribution heatmaps are drawn without captum and pytorch-grad-cam"
    evaluation = tmp_path / "eval"
    run("evaluate.py", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data.test_size=32", "data.num_workers=0",
        "heatmaps.max_images=8", f"paths.output_dir={evaluation}", env=env)
    assert json.loads((evaluation / "metrics.json").read_text())["attribution/gradcam/pointing_game"] >= 0


def test_require_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require("no_such_module_glimpse")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require("no_such_module_glimpse")
    assert require("json") is json
