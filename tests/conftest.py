import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
# tiny runs of train.py; the attribution heatmaps are off where they are not under test
TINY = ["data.train_size=128", "data.val_size=32", "data.test_size=32", "data.batch_size=32", "trainer.max_epochs=1",
        "model.policy.hidden=32", "data.num_workers=0", "callbacks.heatmaps=null"]


def run(script: str, *overrides: str, check: bool = True, env: dict | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """Run one of the project's commands (train.py, evaluate.py) as a user would; ``env`` adds
    to the environment, ``kwargs`` go to ``subprocess.run``."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `python train.py experiment=smoke logger=wandb` for every test that reads its output."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run("train.py", "experiment=smoke", "logger=wandb", f"paths.output_dir={out}")
    return out, proc


def require(module: str):
    """``pytest.importorskip(module)``, except under ``CI=true``: there a missing package fails
    the test, so that a cross-check against a reference library cannot silently skip in CI."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        try:
            return importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"{module} cannot be imported ({err}); CI=true runs every cross-check: pip install -e '.[dev]'")
    return pytest.importorskip(module)


def load_benchmark(name: str):
    """A script of ``benchmarks/`` as a module, to test its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
