"""Replays of the grid-tied example (examples/grid-site.toml): grid KPIs, outages, the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerctl.config import load_config
from powerctl.sim.kpi import compare_table, compute_kpis
from powerctl.sim.replay import simulate
from powerctl.sim.traces import build_site_trace
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace
from powerctl.tariffs import TariffPrices

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT / "examples" / "grid-site.toml"
TMY3 = DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
AZURE = DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv"


@pytest.fixture(scope="module")
def trace() -> SiteTrace:
    return build_site_trace(load_config(GRID), TMY3, AZURE, start="06-02", days=0.5, history_days=1)


def test_grid_kpis_and_random_outages(trace: SiteTrace) -> None:
    cfg = load_config(GRID)
    res = simulate(cfg, trace, controller="rule", grid_outages_per_day=12.0, grid_seed=5)
    k = compute_kpis(res)
    s = res.series
    assert k["energy_balance_error_pct"] < 0.1
    out = s["grid_up"].to_numpy(int) == 0
    # Load goes unserved only in the plant steps right after the grid goes away: a 1-minute plant
    # step is longer than the guard needs (tests/faults/test_grid_loss.py runs the loss at 0.2 s).
    lost = np.flatnonzero(out[1:] & ~out[:-1]) + 1
    near_loss = np.zeros(len(s), dtype=bool)
    for i in lost:
        near_loss[max(0, i - 1):i + 3] = True
    assert not np.any((s["unserved_kw"].to_numpy(float) > 1e-6) & ~near_loss)
    assert k["grid_outage_steps"] == int(out.sum()) > 0
    assert np.all(s["grid_kw"].to_numpy(float)[out] == 0.0)  # islanded while the grid is out
    assert k["grid_import_kwh"] > 0.0
    # Cost from the series and the tariff's prices at the trace's local time (an independent sum).
    tariff = cfg.tariff
    assert tariff is not None
    prices = TariffPrices(tariff)
    t_abs = s.index.map(lambda ts: ts.timestamp()).to_numpy(float)
    imp_price = np.array([prices.horizon(t, np.array([60.0])).import_per_kwh[0] for t in t_abs])
    cost = float(np.sum(np.maximum(s["grid_kw"].to_numpy(float), 0.0) * imp_price) / 60.0)
    assert k["energy_cost"] == pytest.approx(cost, rel=1e-9)
    assert 0.0 < k["demand_charge"] < k["demand_charge_full"]  # half a day of a month's charge
    assert k["value_minus_energy"] == pytest.approx(
        k["value_minus_fuel"] - k["energy_cost"] - k["demand_charge"] + k["export_revenue"])
    # The same seed gives the same outages (controllers compare on the same grid).
    again = simulate(cfg, trace, controller="static", grid_outages_per_day=12.0, grid_seed=5)
    assert np.array_equal(again.series["grid_up"].to_numpy(int), s["grid_up"].to_numpy(int))
    table = compare_table({"rule": k, "static": compute_kpis(again)})
    assert "energy_cost" in table and "demand_charge" in table
