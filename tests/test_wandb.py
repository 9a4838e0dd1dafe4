"""W&B as its users see it, read back from the offline run files (no server, no mocked logger):
checkpoints as model artifacts, the evaluation table linked to its training run, the runs of
a multirun in one group, and W&B failures that are warnings."""
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from glimpse.loggers import offline_run
from glimpse.evaluation.wandb_table import draw_trajectory, read_table

from conftest import TINY, run


def runs_under(directory: Path) -> list[dict]:
    """Every offline run under ``directory`` (any depth), read from its .wandb file."""
    return [offline_run(d) | {"dir": d} for d in sorted(directory.rglob("offline-run-*")) if d.is_dir()]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `train.py logger=wandb logger.log_model=true` (two epochs), its staging dir its own."""
    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_DATA_DIR", str(out / "wandb_data"))
        run("train.py", "experiment=smoke", *TINY, "trainer.max_epochs=2", "logger=wandb", "logger.log_model=true",
            f"paths.output_dir={out}")
    return out


def test_log_model_keeps_the_best_and_last_checkpoints_as_a_model_artifact(trained):
    (train,) = runs_under(trained / "wandb")
    assert train["run"]["job_type"] == "train"
    assert train["run"]["group"] == f"train-{trained.name}"  # a single run: grouped with its evaluations
    models = [a for a in train["artifacts"] if a["type"] == "model"]
    assert {a["name"] for a in models} == {f"model-{train['run']['id']}"}
    (best,) = (trained / "checkpoints").glob("epoch_*.ckpt")  # save_top_k=1
    by_file = {a["metadata"]["original_filename"]: a for a in models}
    assert set(by_file) == {best.name, "last.ckpt"} and len(models) == 2  # each once, not again after test
    assert set(by_file[best.name]["aliases"]) >= {"best"} and set(by_file["last.ckpt"]["aliases"]) == {"last", "latest"}
    for name, path in ((best.name, best), ("last.ckpt", trained / "checkpoints" / "last.ckpt")):
        staged = by_file[name]["files"]["model.ckpt"]
        assert digest(staged) == digest(path), "the artifact holds the checkpoint as written"
    record = torch.load(best, weights_only=False)["wandb"]  # the checkpoint names its training run
    assert record["id"] == train["run"]["id"] and record["group"] == train["run"]["group"]


def test_evaluation_table_one_row_per_image_linked_to_the_training_run(trained, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    ckpt = trained / "checkpoints" / "last.ckpt"
    run("evaluate.py", f"ckpt_path={ckpt}", "logger=wandb", "wandb.max_rows=5", "data.test_size=12",
        "data.num_workers=0", "heatmaps.methods=[saliency_map]", f"paths.output_dir={tmp_path}")
    (train,) = runs_under(trained / "wandb")
    (evaluation,) = runs_under(tmp_path / "wandb")
    assert evaluation["run"]["job_type"] == "evaluate"
    assert evaluation["run"]["group"] == train["run"]["group"]
    assert evaluation["config"]["training_run"] == train["run"]["id"]
    assert evaluation["config"]["checkpoint"] == str(ckpt)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("multiset/f1", "multiset/exact_match", "localisation/glimpse_hit_rate"):
        assert evaluation["summary"][f"test/{key}"] == pytest.approx(metrics[key])
    assert {"test/report/trajectories", "test/report/worst", "test/report/steps"} <= {
        k.rsplit("/", 1)[0] for k in evaluation["summary"]}

    columns, rows, files = read_table(evaluation["dir"], "test/images")
    assert columns == ["index", "image", "true", "predicted", "exact_match", "f1", "glimpse_hits", "meta_steps",
                       "step_classes"]
    assert len(rows) == 5  # wandb.max_rows of the 12 test images
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["ckpt_path=x", "data.test_size=12", "data.num_workers=0"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    names = datamodule.class_names
    for i, row in enumerate(rows):
        r = dict(zip(columns, row))
        counts = datamodule.datasets["test"][i]["counts"]
        assert r["index"] == i
        assert r["true"] == "{" + ", ".join(names[c] for c in range(len(counts)) for _ in range(int(counts[c]))) + "}"
        assert r["exact_match"] == (r["true"] == r["predicted"]) and (r["f1"] == 1.0) == r["exact_match"]
        steps = r["step_classes"].split(" → ")
        assert r["meta_steps"] == len(steps) and "STOP" not in steps[:-1]
        predicted = sorted(s for s in steps if s != "STOP")
        assert r["predicted"] == "{" + ", ".join(sorted(predicted, key=names.index)) + "}"
        true = Counter(r["true"][1:-1].split(", ")) if r["true"] != "{}" else Counter()
        overlap = sum((true & Counter(predicted)).values())
        assert r["f1"] == pytest.approx(2 * overlap / (true.total() + len(predicted)) if true or predicted else 1.0)
        assert 0 <= r["glimpse_hits"] <= overlap  # a hit needs a right label
        image = r["image"]
        assert Path(files[image["path"]]).is_file() and image["width"] >= 300
        truth = image["boxes"]["ground_truth"]
        assert sorted(b["box_caption"] for b in truth) == sorted(r["true"][1:-1].split(", ")) if truth else r["true"] == "{}"
        assert [b["box_caption"].split(": ")[1] for b in image["boxes"]["meta_steps"]] == [s for s in steps if s != "STOP"]


def test_draw_trajectory_marks_the_cells_and_glimpses_where_they_are():
    image = torch.zeros(1, 10, 10, dtype=torch.uint8)
    # two steps: cell centres (2.5, 2.5) then (7.5, 7.5) in pixels, one glimpse each; the second emits STOP
    drawn = draw_trajectory(image, torch.tensor([[2.5, 2.5], [7.5, 7.5]]), torch.tensor([[[2.5, 2.5]], [[7.5, 7.5]]]),
                            [3, 10], stop_index=10, scale=10)
    assert drawn.shape == (100, 100, 3) and drawn.dtype.name == "uint8"
    assert tuple(drawn[25, 25]) == (31, 119, 180)  # step 1's glimpse dot, tab10 blue, at 10x its centre
    assert tuple(drawn[75, 75]) == (255, 127, 14)  # step 2's glimpse, orange
    assert tuple(drawn[50, 50]) == (255, 255, 255)  # the trajectory line between them
    assert drawn[5, 95].max() == 0  # far from both: the image untouched


def test_a_resumed_run_goes_on_in_its_w_and_b_run_or_beside_it_offline(trained, tmp_path, monkeypatch):
    """train.py ckpt_path=last: online the checkpoint's W&B run goes on (its id, resume="allow");
    offline, where W&B cannot resume, a new run of the same name and group names the first."""
    import shutil

    from glimpse.loggers import resume_arguments

    first = {"id": "abc123", "group": "train-x", "name": "brave-owl-1"}
    assert resume_arguments(first, "online", {"config": {"a": 1}}) == {"config": {"a": 1}, "id": "abc123"}
    assert resume_arguments(first, "online", {"id": "mine"}) == {"id": "mine", "config": {"resumed_from": "abc123"}}
    assert resume_arguments(first, "offline", {}) == {"config": {"resumed_from": "abc123"}}
    assert resume_arguments({}, "online", {"x": 1}) == {"x": 1}

    out = tmp_path / "run"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("wandb_data"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    run("train.py", "experiment=smoke", *TINY, "trainer.max_epochs=3", "logger=wandb", "test=false", "ckpt_path=last",
        f"paths.output_dir={out}")
    (before,) = runs_under(trained / "wandb")
    runs = runs_under(out / "wandb")
    (after,) = [r for r in runs if r["run"]["id"] != before["run"]["id"]]
    assert len(runs) == 2 and after["config"]["resumed_from"] == before["run"]["id"]
    assert after["run"]["group"] == before["run"]["group"] and after["run"]["name"] == before["run"]["name"]
    record = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert record["epoch"] == 2 and record["wandb"]["id"] == after["run"]["id"]  # epoch 3 of 3; a next resume goes on from here


def test_multirun_seeds_share_one_group_named_after_the_sweep(tmp_path):
    sweep = tmp_path / "seeds"
    # each job's files in its sweep subdir (paths.output_dir is otherwise a time stamp per job)
    run("train.py", "-m", "seed=0,1", "experiment=smoke", *TINY, "data.train_size=64", "test=false", "logger=wandb",
        f"hydra.sweep.dir={sweep}", "paths.output_dir=${hydra:runtime.output_dir}")
    runs = runs_under(sweep)
    assert len(runs) == 2 and len({r["run"]["id"] for r in runs}) == 2, "each job its own run"
    assert {r["run"]["group"] for r in runs} == {"train-seeds"}
    assert {r["run"]["job_type"] for r in runs} == {"train"}
    assert sorted(r["config"]["cfg"]["data"]["seed"] for r in runs) == [0, 1]


def test_artifact_reference_offline_and_bad_max_rows_are_one_error_line(trained, tmp_path):
    proc = run("evaluate.py", "ckpt_path=wandb:me/glimpse/model-1a2b3c4d:best", f"paths.output_dir={tmp_path}",
               check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ckpt_path=wandb:me/glimpse/model-1a2b3c4d:best: W&B is offline")
    proc = run("evaluate.py", "ckpt_path=wandb:model-1a2b3c4d", f"paths.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "NAME:ALIAS" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("evaluate.py", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "logger=wandb", "wandb.max_rows=-1",
               f"paths.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "wandb.max_rows=-1" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_failures_are_warnings_and_the_results_stand(trained, tmp_path, monkeypatch):
    """W&B starts but cannot stage files (its data dir is under a file): the artifacts and the
    table are lost with a warning; training and evaluation finish and write their results."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "file" / "wandb"))
    # log_model=all: the upload at each save of the best checkpoint, and of last.ckpt at the end, fail
    proc = run("train.py", "experiment=smoke", *TINY, "logger=wandb", "logger.log_model=all", "test=false",
               f"paths.output_dir={tmp_path / 'train'}")
    assert proc.stderr.count("W&B could not keep the checkpoints as artifacts") == 2, proc.stderr[-3000:]
    assert (tmp_path / "train" / "metrics.json").is_file() and (tmp_path / "train" / "checkpoints" / "last.ckpt").is_file()
    proc = run("evaluate.py", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "logger=wandb", "wandb.max_rows=3",
               "data.test_size=8", "data.num_workers=0", "heatmaps.methods=[saliency_map]",
               f"paths.output_dir={tmp_path / 'eval'}")
    assert "W&B could not keep the evaluation table" in proc.stderr
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "report.md").is_file()
    (evaluation,) = runs_under(tmp_path / "eval" / "wandb")
    assert "test/multiset/f1" in evaluation["summary"], "the summary is written before the table fails"


@pytest.mark.slow
def test_compare_puts_its_runs_and_table_in_one_group(tmp_path):
    import subprocess
    import sys

    runs_dir = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "glimpse.compare", "objectives=[multiset]", "seeds=[0,1]",
                           "budget_minutes=0.03", "data=multiset_mnist", f"overrides={TINY}",
                           f"output={tmp_path / 'table.md'}", f"runs_dir={runs_dir}", "logger=wandb"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_under(runs_dir)
    assert len(runs) == 3 and {r["run"]["group"] for r in runs} == {"compare-cmp"}
    assert sorted(r["run"]["job_type"] for r in runs) == ["compare", "train", "train"]
