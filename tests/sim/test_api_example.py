"""The notebook-style example (examples/notebook_replay.py) runs on a short window, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_notebook_example_runs_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "nb"
    p = subprocess.run([sys.executable, str(ROOT / "examples/notebook_replay.py"), "--days", "0.05",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "value_minus_fuel" in p.stdout and "report:" in p.stdout
    for f in ("compare.png", "daily_energy.png", "report.html"):
        assert (out / f).stat().st_size > 1000, f
