"""`powerctl sim replay|sweep` through the Typer sub-app: outputs, and clean errors for bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from powerctl.sim.cli_sim import app

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "examples/demo-site.toml"


def test_replay_static_writes_outputs(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = runner.invoke(
        app, ["replay", str(DEMO), "--days", "0.1", "--controller", "static", "--out", str(out), "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "value of compute - fuel" in res.output
    for f in (
        "kpi.json",
        "kpi.txt",
        "series.parquet",
        "power_stack.png",
        "soc.png",
        "gpu_budget.png",
        "genset.png",
    ):
        assert (out / f).exists(), f


def test_replay_bad_inputs_exit_2_with_message(tmp_path: Path) -> None:
    res = runner.invoke(app, ["replay", str(tmp_path / "missing.toml"), "-q"])
    assert res.exit_code == 2 and "missing.toml: cannot read" in res.output
    res = runner.invoke(app, ["replay", str(DEMO), "--days", "400", "-q", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "trace error" in res.output and "covers 2021-01-01" in res.output
    res = runner.invoke(app, ["replay", str(DEMO), "--controller", "magic", "-q"])
    assert res.exit_code == 2 and "choose ours, rule, static or compare" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("hello,world\n1,2\n")
    res = runner.invoke(app, ["replay", str(DEMO), "--trace", str(bad), "-q", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "bad.csv: unknown irradiance format" in res.output


def test_sweep_bad_grid_exit_2(tmp_path: Path) -> None:
    g = tmp_path / "g.toml"
    g.write_text("[grid]\nwind_kw = [1]\n")
    res = runner.invoke(app, ["sweep", str(DEMO), "--grid", str(g), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "grid.wind_kw: unknown key" in res.output
