"""The import rules of pyproject.toml ([tool.importlinter]) hold, and lint-imports notices a break."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}  # the copy of glimpse under root, not an installed one
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("glimpse/objectives.py", "import glimpse.evaluation.report", "training code imports no evaluation or heatmap code"),
    ("glimpse/heatmaps/targets.py", "import glimpse.heatmaps.registry", "heatmap modules are layered"),
    ("glimpse/geometry.py", "import glimpse.models.attention", "glimpse packages are layered"),
    ("glimpse/env/run_policy.py", "import glimpse.heatmaps.registry", "only its callers import the heatmap method registry"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "glimpse", tmp_path / "glimpse", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa: E402\n")
    proc = lint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    broken = [row for row in proc.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), proc.stdout
