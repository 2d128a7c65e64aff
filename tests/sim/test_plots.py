"""Plots and the HTML report of `powerctl sim replay --controller compare`: files a person reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
from typer.testing import CliRunner

from powerctl.sim.cli_sim import app
from powerctl.sim.plots import run_title, y_floor

DEMO = Path(__file__).resolve().parents[2] / "examples/demo-site.toml"


def test_titles_name_the_controller() -> None:
    assert "ours" not in run_title({"run": {"controller": "ours", "perfect_foresight": True}})
    assert "perfect foresight" in run_title({"run": {"controller": "ours", "perfect_foresight": True}})
    assert run_title({"run": {"controller": "static", "perfect_foresight": False}}) == "static cap"


def test_compare_writes_comparison_plots_and_one_self_contained_report(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["replay", str(DEMO), "--days", "0.05", "--controller", "compare",
                                   "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for f in ("compare.png", "daily_energy.png", "report.html", "ours/report.html", "static/power_stack.png"):
        assert (out / f).stat().st_size > 1000, f
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 2 + 2 * 4  # comparison + daily energy, then power stack and GPU budget per run
    assert all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing outside the file
    assert "<link" not in page and "<script" not in page
    kpis = json.loads((out / "compare.json").read_text())
    assert f"{kpis['ours']['fuel_cost']:,.2f}" in page  # the KPI table is in the report


def test_a_bar_panel_of_dust_keeps_a_readable_axis() -> None:
    # 1e-5 kWh unserved (solver tolerance) must not fill the panel like a real shortfall
    fig, axes = plt.subplots(1, 4)
    try:
        for ax, v in zip(axes, ([1e-5, 0.0, 2e-6], [0.0, 0.0], [-3e-6, 0.0], [1e-5, 250.0]), strict=True):
            ax.bar(range(len(v)), v)
            y_floor(ax, v)
        assert axes[0].get_ylim() == (0.0, 1.0)
        assert axes[1].get_ylim() == (0.0, 1.0)
        assert axes[2].get_ylim() == (-1.0, 0.0)
        assert axes[3].get_ylim()[1] >= 250.0  # real figures keep matplotlib's own scale
    finally:
        plt.close(fig)
