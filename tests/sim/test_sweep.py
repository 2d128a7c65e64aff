"""Sweeps: a grid of >= 12 configurations on a local Dask cluster; grid file errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from powerctl.sim.sweep import SweepError, load_grid, run_point, run_sweep, sized_config, sweep_points
from powerctl.sim.traces.site_trace import DATA_DIR
from tests.sim.conftest import site_dict

GRID = """
[sweep]
days = 0.05
start = "06-01"
controllers = ["static", "rule"]
rank_by = "net_value"
[grid]
pv_kwp = [60, 120]
battery_kwh = [100, 200, 300]
gpus = [48]
[capex]
pv_per_kwp = 60.0
battery_per_kwh = 35.0
"""


def _site(tmp_path: Path) -> Path:
    d = site_dict()
    lines = [
        '[site]\nid = "demo"\nmodule = "m1"\nlatitude = 36.1\nlongitude = -79.95\ntimezone = "Etc/GMT+5"\n'
    ]
    for dev in d["devices"]:
        t = dev["transport"]
        lim = ", ".join(
            f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in dev["limits"].items()
        )
        lines.append(
            f'[[devices]]\nname = "{dev["name"]}"\nnature = "{dev["nature"]}"\nprofile = "{dev["profile"]}"\n'
            f'transport = {{ kind = "modbus_tcp", host = "127.0.0.1", port = {t["port"]} }}\nlimits = {{ {lim} }}\n'
        )
    g = d["gpu"]
    classes = ", ".join(
        "{ " + ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in c.items()) + " }"
        for c in g["classes"]
    )
    lines.append(
        f"[gpu]\nmin_w = 100.0\nmax_w = 400.0\nsafe_cap_w = 150.0\nidle_w = 60.0\nclasses = [{classes}]\n"
    )
    lines.append("[control]\nhorizon = [{ step_s = 300, count = 24 }]\n")
    p = tmp_path / "site.toml"
    p.write_text("\n".join(lines))
    return p


def test_sweep_12_configs_on_local_dask(tmp_path: Path) -> None:
    site = _site(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "out"
    df = run_sweep(site, grid, out, workers=2)
    assert len(df) == 12
    assert df["net_value"].is_monotonic_decreasing
    assert df["rank"].tolist() == list(range(1, 13))
    assert set(df["controller"]) == {"static", "rule"}
    assert sorted(df["size.battery_kwh"].unique()) == [100, 200, 300]
    for f in ("sweep.parquet", "sweep.csv", "sweep.png"):
        assert (out / f).stat().st_size > 0
    assert len(pd.read_csv(out / "sweep.csv")) == 12
    assert (df["energy_balance_error_pct"] < 0.1).all()
    # capital cost share is what the grid says: (60 x kWp + 35 x kWh) per year x days / 365
    row = df.iloc[0]
    assert row["capex_share"] == pytest.approx(
        (60 * row["size.pv_kwp"] + 35 * row["size.battery_kwh"]) * 0.05 / 365
    )
    # a worker's result equals the same point run here (replay is deterministic)
    from powerctl.config import load_config

    base = load_config(site)
    g = load_grid(grid)
    pt = {
        "sizes": {"pv_kwp": row["size.pv_kwp"], "battery_kwh": row["size.battery_kwh"], "gpus": 48.0},
        "controller": row["controller"],
    }
    opts = {
        "days": 0.05,
        "start": "06-01",
        "step_s": 60.0,
        "plan_every_s": 300.0,
        "trace": str(DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"),
        "gpu_trace": str(DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv"),
    }
    local = run_point(base.model_dump(mode="json", exclude_none=True), pt, opts, g["capex"])
    assert local["value_minus_fuel"] == pytest.approx(row["value_minus_fuel"], rel=1e-9)


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def test_sweep_on_separate_scheduler_and_worker(tmp_path: Path) -> None:
    """`dask scheduler` + `dask worker` started as separate processes on loopback, as in the README."""
    import shutil
    import subprocess
    import sys
    import time

    dask_bin = shutil.which("dask", path=str(Path(sys.executable).parent))
    assert dask_bin, "the dask CLI ships with dask[distributed] in the venv"
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [dask_bin, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(1.0)
        procs.append(
            subprocess.Popen(
                [dask_bin, "worker", addr, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                cwd=str(Path.cwd()),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        grid = tmp_path / "grid.toml"
        grid.write_text('[sweep]\ndays = 0.02\ncontrollers = ["static"]\n[grid]\npv_kwp = [60, 120]\n')
        from dask.distributed import Client

        with Client(addr, timeout="20s") as c:
            c.wait_for_workers(1, timeout=30)
        df = run_sweep(_site(tmp_path), grid, tmp_path / "out", scheduler=addr)
        assert len(df) == 2 and (tmp_path / "out" / "sweep.csv").exists()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def test_sized_config_scales(tmp_path: Path) -> None:
    base = __import__("powerctl.config", fromlist=["load_config"]).load_config(_site(tmp_path))
    cfg = sized_config(base, {"pv_kwp": 50, "battery_kwh": 80, "battery_kw": 40, "genset_kw": 90, "gpus": 32})
    assert cfg.device("pv1").limits.kwp == 50
    assert cfg.device("bat1").limits.capacity_kwh == 80 and cfg.device("bat1").limits.max_charge_kw == 40
    assert cfg.device("gen1").limits.rating_kw == 90
    assert cfg.gpu.count == 32 and [c.gpus for c in cfg.gpu.classes] == [16, 8, 8]
    assert len(sweep_points(base, {"pv_kwp": [1, 2], "gpus": [8, 16, 32]}, ["ours", "static"])) == 12


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("[grid]\npv_kwp = [100]\nbogus = [1]\n", "grid.bogus: unknown key"),
        ("[grid]\npv_kwp = []\n", "grid.pv_kwp: must be a non-empty list of positive numbers"),
        ("[grid]\npv_kwp = [-5]\n", "grid.pv_kwp: must be a non-empty list of positive numbers"),
        ("[sweep]\ncontrollers = ['magic']\n", "sweep.controllers: unknown controller 'magic'"),
        ("[capex]\npv_per_kwp = -1\n", "capex.pv_per_kwp: must be a number >= 0"),
        ("[grid\n", "not valid TOML"),
    ],
)
def test_bad_grid_files(tmp_path: Path, text: str, msg: str) -> None:
    p = tmp_path / "g.toml"
    p.write_text(text)
    with pytest.raises(SweepError, match=msg) as ei:
        load_grid(p)
    assert str(p) in str(ei.value)


def test_grid_import_limit_is_a_sweep_dimension(tmp_path: Path) -> None:
    from powerctl.config import load_config

    base = load_config(Path(__file__).resolve().parents[2] / "examples" / "grid-site.toml")
    for kw in (0.0, 80.0):
        assert sized_config(base, {"grid_import_kw": kw}).device("grid").limits.max_import_kw == kw
    assert len(sweep_points(base, {"grid_import_kw": [0, 75, 150]}, ["ours"])) == 3
    p = tmp_path / "g.toml"
    p.write_text("[grid]\ngrid_import_kw = [0, 150]\n")
    assert load_grid(p)["grid"] == {"grid_import_kw": [0, 150]}
    p.write_text("[grid]\ngrid_import_kw = [-1]\n")
    with pytest.raises(SweepError, match=r"grid\.grid_import_kw: must be a non-empty list of numbers >= 0"):
        load_grid(p)


class _Stop(Exception):
    pass


def test_interrupted_sweep_keeps_what_it_finished_and_reruns_only_the_rest(tmp_path: Path) -> None:
    site = _site(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "out"

    def stop_after_3(i: int, n: int) -> None:
        if i == 3:
            raise _Stop  # the operator's Ctrl-C, or a crash, after three runs ended

    with pytest.raises(_Stop):
        run_sweep(site, grid, out, workers=2, on_result=stop_after_3)
    kept = sorted((out / "points").glob("*.json"))
    assert len(kept) == 3
    seen: list[tuple[int, int]] = []
    df = run_sweep(site, grid, out, workers=2, on_result=lambda i, n: seen.append((i, n)))
    assert len(df) == 12
    assert [n for _, n in seen] == [9] * 9  # only the 9 missing runs were submitted
    assert len(list((out / "points").glob("*.json"))) == 12
    again: list[int] = []
    run_sweep(site, grid, out, workers=2, on_result=lambda i, n: again.append(n))
    assert again == []  # nothing left to run
