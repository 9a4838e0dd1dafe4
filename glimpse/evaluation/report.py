"""The evaluation report: a Markdown page beside metrics.json."""
from __future__ import annotations

from pathlib import Path


def write_report(metrics: dict[str, float], output_dir: str | Path, ckpt_path: str, split: str) -> Path:
    """Write ``report.md``: the metrics of one checkpoint on one split, as a table."""
    path = Path(output_dir) / "report.md"
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
    path.write_text(
        f"# glimpse evaluation\n\ncheckpoint: `{ckpt_path}`  \nsplit: `{split}`\n\n| metric | value |\n|---|---|\n{rows}\n"
    )
    return path
