"""Notebook-style tour of the simulator's Python API (``powerctl.sim.api``): each ``# %%`` is a cell
(VS Code / Jupytext run them one by one). As a script::

    .venv/bin/python examples/notebook_replay.py --days 1 --out replay-notebook

It replays the shipped measured PV power (NREL SERF East, 1-min AC power, Golden CO; licence in
sim/data/licenses) scaled to the demo site's array, compares the controllers, writes the report.
"""

# %% imports and options
from __future__ import annotations

import argparse
from pathlib import Path

from powerctl.sim import api
from powerctl.sim.traces.site_trace import DATA_DIR

ap = argparse.ArgumentParser()
ap.add_argument("--days", type=float, default=1.0)
ap.add_argument("--out", type=Path, default=Path("replay-notebook"))
args = ap.parse_args()
ROOT = Path(__file__).resolve().parents[1]

# %% a site (the demo module), moved to where the PV data was measured
site = api.load_site(ROOT / "examples/demo-site.toml")
site = site.model_copy(update={"site": site.site.model_copy(update={"latitude": 39.742, "longitude": -105.18})})
site = api.sized(site, battery_kwh=300)  # any sweep dimension: pv_kwp, battery_kw, genset_kw, gpus, ...

# %% traces: measured AC power in W, x60 for a ~280 kW array; the file's own time zone (-07:00)
pv = DATA_DIR / "pv_power/pvanalytics_nrel_serf_east_ac_power_202203_1min.csv"
trace = api.load_trace(site, pv_power=f"{pv}:column=ac_power__752,unit=W,scale=60",
                       start="2022-03-18T09:00", days=args.days, warmup_days=0.15)
print(trace.df[["pv_kw", "pv_clear_kw", "other_load_kw"]].describe().round(1))

# %% one replay: KPIs and the time series
run = api.replay(site, trace, controller="ours")
print(f"value - fuel {run.kpis['value_minus_fuel']:,.1f}, unserved {run.kpis['unserved_kwh']:.2f} kWh")

# %% every controller on the same trace, side by side, and the report a person can mail
runs = api.compare(site, trace)
print(api.kpi_table(runs).loc[["value_minus_fuel", "fuel_cost", "unserved_kwh", "genset_hours"]].round(2))
print("report:", api.report(runs, args.out))
