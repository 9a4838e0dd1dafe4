"""The README's examples run: an example that drifts from the code fails here.

- Every ```python block of README.md is executed as written, and the values its comments state
  (the render shape, the batched env's class, the maps' shape) are compared with what it returns.
- Every command the README or a page of docs/ shows (`python train.py ...`, `python evaluate.py
  ...`, also behind `OMP_NUM_THREADS=1`, `torchrun` or `srun`, in code blocks or inline) is
  composed with Hydra with the same overrides, so a renamed or removed key fails. So is every
  inline override of the README (`data=mnist_multi_4`, `model.lr=2e-3 ...`), against the train
  or the evaluate config.
- The cheap commands run end to end: `train.py` with `experiment=smoke` (its epoch line has the
  fields of the README's sample line), then `evaluate.py` on its checkpoint with no other options,
  which writes the files the README names. They run as written plus `SMALL_*` below, which shrink the data
  and point the output to a temporary dir (the only change made to a README command).

Placeholders in commands: `RUN` is a run dir (the smoke run's, when run), `DIR`, `EXPL`, `OUT` and
`RUN_DIR` are output dirs; `CKPT`-like names stay strings (composing does not open files).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, run

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate"}
# appended to the cheap commands when they run: small data, one epoch, a temporary output dir
SMALL_TRAIN = ["data.train_size=64", "data.val_size=16", "data.test_size=16", "data.batch_size=16",
               "model.policy.hidden=32", "callbacks.heatmaps=null", "callbacks.heatmap_metrics.num_images=4"]
SMALL_EVALUATE = ["data.test_size=16", "heatmaps.max_images=4", "heatmaps.perturbation_steps=2"]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def commands(path: Path) -> list[list[str]]:
    """Every train.py / evaluate.py command of a Markdown file, as [script, *overrides]."""
    text = path.read_text()
    lines = []
    for body in blocks(text, "bash"):
        lines += body.replace("\\\n", " ").splitlines()
    prose = _FENCE.sub("", text)
    lines += [span for span in _SPAN.findall(prose) if re.search(r"\bpython\b", span)]
    found = []
    for line in lines:
        for part in re.split(r"&&|;", line):
            tokens = shlex.split(part, comments=True)
            scripts = [i for i, token in enumerate(tokens) if token in SCRIPTS]
            if scripts:
                i = scripts[0]
                found.append([tokens[i], *[t for t in tokens[i + 1:] if not t.startswith("-")]])
    return found


def readme_override_spans() -> list[list[str]]:
    """Inline spans of the README's prose that are config overrides (`key=value ...`)."""
    prose = _FENCE.sub("", README.read_text())
    spans = []
    for span in _SPAN.findall(prose):
        tokens = span.split()
        if tokens and all(re.fullmatch(r"~?[\w.]+=\S+", t) for t in tokens):
            spans.append(tokens)
    return spans


def placeholders(overrides: list[str], run_dir: Path, out_dir: Path) -> list[str]:
    out = []
    for item in overrides:
        if item.startswith("[") and item.endswith("]"):  # an optional setting, written [key=value]
            item = item[1:-1]
        key, equals, value = item.partition("=")
        if "," in value and not value.startswith(("[", "{", "'", '"')):  # a multirun sweep: its first value
            value = value.split(",")[0]
        if not equals:  # a deletion such as ~callbacks.heatmaps
            out.append(item)
            continue
        value = re.sub(r"^RUN(?=/)", str(run_dir), value)
        if value in ("DIR", "EXPL", "OUT", "RUN_DIR") or value.startswith("$SCRATCH"):
            value = str(out_dir)
        out.append(f"{key}={value}")
    return out


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config, overrides=overrides, return_hydra_config=True)


def test_readme_is_short_and_its_test_command_is_ci_s():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    test_command = [line for body in blocks(text, "bash") for line in body.splitlines() if "pytest" in line]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line and not line.startswith("#")]
    assert test_command and test_command == ci[:1]  # then CI runs the slow tests too


def test_readme_links_point_at_files():
    for path in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.exists() or resolved == ROOT / "docs" / "model.md", f"{path.name} links to a missing {target}"


def test_readme_python_blocks_run_and_return_what_they_state(tmp_path, monkeypatch):
    import torch

    python = blocks(README.read_text(), "python")
    assert len(python) >= 2
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for code in python:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        if "attribute(" in code:
            maps = namespace["maps"]
            methods = re.search(r"attribute\(model, images, targets, (\[[^]]*\])", code).group(1)
            assert sorted(maps) == sorted(eval(methods))
            stated = re.search(r"shape\s+# (torch\.Size\(\[[\d, ]+\]\))", code).group(1)
            assert all(str(m.shape) == stated for m in maps.values()), {k: m.shape for k, m in maps.items()}
            assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in maps.values())
        if "check_env" in code:
            stated_shape, stated_dtype = re.search(r"env\.render\(\)\s+# (\([\d, ]+\)) (\w+)", code).groups()
            frame = namespace["frame"]
            assert str(tuple(frame.shape)) == stated_shape and str(frame.dtype) == stated_dtype
            assert namespace["terminated"] or namespace["truncated"]
            envs = namespace["envs"]
            stated_class = re.search(r"make_vec\(.*num_envs=(\d+)\)\s+# (\w+)", code)
            assert type(envs.unwrapped).__name__ == stated_class.group(2)
            assert envs.num_envs == int(stated_class.group(1))
            observations, _ = envs.reset(seed=0)
            assert observations["image"].shape[0] == envs.num_envs
            envs.close()
            namespace["env"].close()


def _documented_commands():
    return [(path.name, command) for path in [README, *DOCS] for command in commands(path)]


def test_every_documented_command_is_found():
    names = {name for name, _ in _documented_commands()}
    readme = commands(README)
    assert "README.md" in names
    assert ["train.py"] in readme and ["train.py", "experiment=smoke"] in readme
    assert any(c[0] == "evaluate.py" for c in readme)


@pytest.mark.parametrize("source,command", _documented_commands(),
                         ids=[f"{name}:{' '.join(c)}" for name, c in _documented_commands()])
def test_documented_command_composes(source, command, tmp_path):
    """A drifted key (renamed, removed, misspelt) fails Hydra's composition."""
    script, *overrides = command
    cfg = compose(SCRIPTS[script], placeholders(overrides, tmp_path / "run", tmp_path / "out"))
    assert cfg.task_name == SCRIPTS[script]


@pytest.mark.parametrize("overrides", readme_override_spans(), ids=" ".join)
def test_readme_override_composes(overrides, tmp_path):
    """The README's inline settings compose with the train config or, if they are evaluation
    settings, with the evaluate config."""
    overrides = placeholders(overrides, tmp_path / "run", tmp_path / "out")
    errors = []
    for config in ("train", "evaluate"):
        try:
            extra = ["ckpt_path=x.ckpt"] if config == "evaluate" else []
            compose(config, overrides + extra)
            return
        except Exception as error:  # noqa: BLE001 - reported below if neither config takes it
            errors.append(f"{config}: {error}")
    pytest.fail(f"{' '.join(overrides)} composes with neither config:\n" + "\n".join(errors))


def test_readme_cheap_commands_run_end_to_end(tmp_path):
    readme = commands(README)
    trains = [c for c in readme if c[0] == "train.py" and "experiment=smoke" in c]
    evaluates = [c for c in readme if c[0] == "evaluate.py" and c[1:] and all(o.startswith("ckpt_path=RUN/") for o in c[1:])]
    assert trains and evaluates
    run_dir = tmp_path / "run"
    for script, *overrides in trains:
        proc = run(script, *placeholders(overrides, run_dir, run_dir), *SMALL_TRAIN, f"paths.output_dir={run_dir}")
        # the epoch line the README shows: the same fields in the same order
        shown = [body for body in blocks(README.read_text(), "") if body.startswith("epoch ")]
        printed = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
        assert shown and printed
        fields = lambda line: [part.rsplit(" ", 1)[0] for part in line.split(" | ")]  # noqa: E731
        assert fields(printed[-1]) == fields(shown[0].strip()), (printed[-1], shown[0])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert {"test/multiset/f1", "test/multiset/exact_match"} <= set(metrics)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for index, (script, *overrides) in enumerate(evaluates):
        out = tmp_path / f"evaluate_{index}"
        run(script, *placeholders(overrides, run_dir, out), *SMALL_EVALUATE, f"paths.output_dir={out}")
        # the files the README says evaluate.py writes
        written = re.findall(r"`([^`]+)`", re.search(r"It writes (.*?) to its", README.read_text(), re.DOTALL).group(1))
        assert "metrics.json" in written
        for name in written:
            assert (out / name).is_file(), name
        metrics = json.loads((out / "metrics.json").read_text())
        assert "multiset/f1" in " ".join(metrics) and "localisation/glimpse_hit_rate" in " ".join(metrics)
