"""glimpse.compare: the table from hand-made runs, bad arguments, and a tiny real comparison."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glimpse.compare import CompareConfig, markdown, max_time, summarise
from glimpse.compare import main as compare_main

ROOT = Path(__file__).resolve().parents[1]
TINY = "[data.train_size=64,data.val_size=16,data.test_size=16,data.batch_size=16,data.num_workers=0,model.policy.hidden=16,~callbacks.heatmap_metrics,~callbacks.heatmaps]"


def compare(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "glimpse.compare", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


def fake_run(objective, seed, f1, hit, wall, failed=False, commit="abc1234"):
    metrics = {} if failed else {"test/multiset/exact_match": f1 / 2, "test/multiset/precision": f1, "test/multiset/recall": f1,
                                 "test/multiset/f1": f1, "test/localisation/glimpse_hit_rate": hit}
    return {"objective": objective, "seed": seed, "metrics": metrics, "wall_time": wall, "returncode": 1 if failed else 0,
            "commit": commit, "steps": round(wall * 10)}


def test_table_is_the_mean_and_spread_over_seeds(tmp_path):
    runs = [fake_run("multiset", 0, 0.8, 0.5, 100.0), fake_run("multiset", 1, 0.9, 0.7, 110.0),
            fake_run("reinforce", 0, 0.2, 0.1, 90.0), fake_run("reinforce", 1, 0.0, 0.0, 0.0, failed=True),
            fake_run("sequence_area", 0, 0.0, float("nan"), 80.0)]  # no right label: no hit rate
    rows = summarise(runs, ["multiset", "reinforce", "sequence_area"])
    mean, std = rows[0]["F1"]
    assert math.isclose(mean, 0.85) and math.isclose(std, math.sqrt(0.005))  # sample std of 0.8, 0.9
    assert rows[0]["wall time (s)"][0] == 105.0 and rows[1]["runs"] == 1 and rows[1]["seeds"] == 2
    text = markdown(CompareConfig(note="smoke budget"), rows, "python -m glimpse.compare", tmp_path)
    assert "| `multiset` | 0.425 ± 0.035 | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.600 ± 0.141 | 1050 ± 71 | 105.0 ± 7.1 | 2/2 |" in text
    assert "| `reinforce` | 0.100 | 0.200 | 0.200 | 0.200 | 0.100 | 900 | 90.0 | 1/2 |" in text  # one seed: no spread
    assert "| `sequence_area` | 0.000 | 0.000 | 0.000 | 0.000 | — | 800 | 80.0 | 1/1 |" in text
    assert "smoke budget" in text and "CPU cores" in text and "- code: commit `abc1234`" in text
    # a comparison resumed after the code changed says which runs came from which commit
    mixed = summarise([fake_run("multiset", 0, 0.8, 0.5, 100.0), fake_run("multiset", 1, 0.9, 0.7, 110.0, commit="def5678")],
                      ["multiset"])
    assert "runs from 2 commits** (read back from earlier runs): multiset: abc1234, def5678" in markdown(
        CompareConfig(), mixed, "python -m glimpse.compare", tmp_path)


def test_budget_is_lightnings_max_time():
    assert max_time(0.05) == "00:00:00:03" and max_time(90) == "00:01:30:00" and max_time(1e-4) == "00:00:00:01"


@pytest.mark.parametrize("args, message", [
    (["objectives=[multiset,nope]"], "objectives=nope is not a config in configs/objective"),
    (["seeds=[0,x]"], "seeds="),
    (["budget_minutes=0"], "budget_minutes=0 must be a number of minutes > 0"),
    (["data=imagenet"], "data=imagenet is not a config in configs/data"),
    (["budget=3"], "budget=3 must be cpu (CPU minutes of each run) or wall"),
    (["jobs=0"], "jobs=0 must be a whole number >= 1"),
    (["threads=two"], "threads=two must be a whole number >= 1"),
    (["epochs=3"], "unknown argument 'epochs=3'"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, args, message, capsys):
    out = tmp_path / "table.md"
    with pytest.raises(SystemExit) as exit_:
        compare_main([*args, f"output={out}", f"runs_dir={tmp_path / 'runs'}"])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and message in stderr and "Traceback" not in stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_command_line_error_exits_2_without_traceback(tmp_path):
    proc = compare("objectives=[multiset,nope]", f"output={tmp_path / 'table.md'}")
    assert proc.returncode == 2 and "objectives=nope is not a config" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compare_two_objectives_two_seeds_on_a_tiny_budget(tmp_path):
    out = tmp_path / "objectives.md"
    proc = compare("objectives=[multiset,reinforce_self_critical]", "seeds=[0,1]", "budget_minutes=0.04",
                   "data=multiset_mnist", f"overrides={TINY}", f"output={out}", f"runs_dir={tmp_path / 'runs'}",
                   "logger=wandb", "note=smoke budget: not a result")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for objective in ("multiset", "reinforce_self_critical"):
        for seed in (0, 1):
            metrics = json.loads((tmp_path / "runs" / objective / f"seed_{seed}" / "metrics.json").read_text())
            assert 0.0 <= metrics["test/multiset/f1"] <= 1.0
            record = json.loads((tmp_path / "runs" / objective / f"seed_{seed}" / "run.json").read_text())
            assert record["steps"] >= 1 and record["settings"]["budget_minutes"] == 0.04
    text = out.read_text()
    assert text.startswith("# Objectives compared") and "smoke budget: not a result" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and all(line.endswith("| 2/2 |") and " ± " in line for line in rows)
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*")), "logger=wandb keeps the table in an offline run"


def test_a_rerun_comparison_updates_its_table_in_place_and_keeps_the_notes_below(tmp_path):
    from glimpse.compare import put_section

    text = ("# Objectives compared\n\n## data=a, 5 CPU min per run\n\n- command: old\n\n| objective | F1 |\n|---|---:|\n"
            "| `multiset` | 0.1 |\n\nNotes on the old table.\n\n## data=b, 5 CPU min per run\n\n| `x` | 1 |\n")
    new = "## data=a, 5 CPU min per run\n\n- command: new\n\n| objective | F1 |\n|---|---:|\n| `multiset` | 0.9 |\n"
    updated = put_section(text, new)
    assert updated == text.replace("- command: old", "- command: new").replace("0.1", "0.9")
    other = "## data=c, 5 CPU min per run\n\n| `y` | 2 |\n"
    assert put_section(text, other) == text + "\n" + other


def test_a_runs_dir_with_other_settings_is_refused_before_anything_runs(tmp_path):
    from glimpse.compare import run_settings

    runs = tmp_path / "runs"
    seed_dir = runs / "multiset" / "seed_0"
    seed_dir.mkdir(parents=True)
    cfg = CompareConfig(objectives=["multiset"], seeds=[0], budget_minutes=6)
    (seed_dir / "run.json").write_text(json.dumps({"settings": run_settings(cfg, "multiset", 0), "returncode": 0,
                                                          "wall_time": 400.0, "commit": "abc1234"}))
    (seed_dir / "metrics.json").write_text(json.dumps({"test/multiset/f1": 0.5}))
    out = tmp_path / "table.md"
    with pytest.raises(SystemExit) as exit_:  # the same runs_dir with a 5-minute budget
        compare_main(["objectives=[multiset]", "seeds=[0]", "budget_minutes=5", f"output={out}", f"runs_dir={runs}"])
    assert exit_.value.code == 2 and not out.exists()
    # the same settings: the finished run is read back (nothing trains) and the table is written
    assert compare_main(["objectives=[multiset]", "seeds=[0]", "budget_minutes=6", f"output={out}", f"runs_dir={runs}"]) == 0
    assert "| `multiset` | — | — | — | 0.500 | — | — | 400.0 | 1/1 |" in out.read_text()


def test_a_stopped_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import glimpse.compare as compare_module

    run_dir = tmp_path / "multiset" / "seed_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    seen, real_run = {}, subprocess.run

    def fake_train(argv, **kwargs):
        if not str(argv[1]).endswith("train.py"):
            return real_run(argv, **kwargs)  # git, for the commit
        seen["argv"] = argv
        (run_dir / "metrics.json").write_text(json.dumps({"test/multiset/f1": 0.25}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(compare_module.subprocess, "run", fake_train)
    cfg = CompareConfig(objectives=["multiset"], seeds=[0])
    result = compare_module.run_one(cfg, "multiset", 0, run_dir)
    assert "ckpt_path=last" in seen["argv"] and result["resumed"] and result["metrics"]["test/multiset/f1"] == 0.25
    assert math.isnan(result["steps"])  # the empty file stands for a checkpoint; a real one gives its global step
    record = json.loads((run_dir / "run.json").read_text())
    assert record["returncode"] == 0 and record["settings"]["budget_minutes"] == 10.0
