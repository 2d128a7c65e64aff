"""Plots of a replay a person can read (matplotlib, Agg backend: no display needed), and the HTML
report. Runs longer than 12 h are plotted as 5-minute means, longer than two days as 15-minute means (the Parquet series keeps every step).

- ``power_stack.png``: every flow: sources above zero (PV used, battery discharge, genset, grid
  import), sinks below zero (battery charging, grid export, spilled); site load and PV available as
  lines; unserved in red;
- ``soc.png``: state of charge of each battery with its window;
- ``gpu_budget.png``: the planner's budget (thick, drawn last so it is never hidden), the sum of
  caps, GPU power drawn and demanded, and the power the site could carry;
- ``genset.png``: genset output, run command, and cumulative fuel;
- ``compare.png`` / ``daily_energy.png`` (``plot_compare``): headline KPIs side by side and daily
  energy by source for each controller of ``--controller compare``;
- ``report.html`` (``html_report``): one self-contained file (KPI table + plots as base64 PNG).

Titles name the controller (``run_title``); axes carry units, the currency and the time zone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

CONTROLLER_NAMES = {
    "ours": "ours: optimizer, live forecast",
    "ours_perfect": "optimizer with perfect foresight (upper bound)",
    "rule": "rule-based fallback",
    "static": "static cap",
}


def run_title(kpis: dict[str, Any]) -> str:
    """The controller as a person should read it (perfect foresight is never "ours")."""
    run = kpis.get("run", {})
    ctrl = str(run.get("controller", ""))
    if run.get("perfect_foresight"):
        ctrl = "ours_perfect" if ctrl == "ours" else f"{ctrl} with perfect foresight"
    return CONTROLLER_NAMES.get(ctrl, ctrl)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _time_axis(ax: Any, index: pd.DatetimeIndex) -> None:
    tz = str(index.tz) if index.tz is not None else "local"
    ax.set_xlabel(f"time ({tz})")
    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=index.tz))
    ax.grid(alpha=0.25)


def _col(s: pd.DataFrame, name: str) -> pd.Series:
    return s[name] if name in s else pd.Series(0.0, index=s.index)


def plot_replay(s: pd.DataFrame, plant: Any, out: Path, title: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    span = s.index[-1] - s.index[0] if len(s) > 1 else pd.Timedelta(0)
    if span > pd.Timedelta(hours=12):
        # minute-scale inference bursts turn a day into a solid band: plot 5- or 15-minute means
        s = s.select_dtypes("number").resample("15min" if span > pd.Timedelta(days=2) else "5min").mean()
    t = s.index  # tz-aware: matplotlib draws in the formatter's zone (_time_axis)
    files = []
    cfg = plant.cfg
    tag = f": {title}" if title else ""

    fig, ax = plt.subplots(figsize=(12, 5))
    bat = _col(s, "battery_kw")
    grid = _col(s, "grid_kw")
    up = [s["pv_kw"], bat.clip(lower=0.0), s["genset_kw"], grid.clip(lower=0.0)]
    down = [bat.clip(upper=0.0), grid.clip(upper=0.0), -_col(s, "spill_kw").abs()]
    ax.stackplot(t, *up, labels=["PV used", "battery discharge", "genset", "grid import"],
                 colors=["#f2c14e", "#5b8e7d", "#8c6e63", "#7f7f7f"], alpha=0.85)
    ax.stackplot(t, *down, labels=["battery charging", "grid export", "spilled"],
                 colors=["#4a90d9", "#b0b0b0", "#e76f51"], alpha=0.6)
    ax.plot(t, s["load_kw"], color="k", lw=1.0, label="site load")
    ax.plot(t, s["pv_available_kw"], color="#d08c00", lw=0.8, ls="--", label="PV available")
    if (s["unserved_kw"] > 0).any():
        ax.fill_between(t, 0, s["unserved_kw"], color="red", alpha=0.6, label="unserved")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_ylabel("kW (sources > 0 > sinks)")
    ax.set_title(f"Power stack{tag}")
    ax.legend(loc="upper left", ncol=5, fontsize=8)
    _time_axis(ax, t)
    files.append(_save(fig, out / "power_stack.png"))

    fig, ax = plt.subplots(figsize=(12, 3.5))
    for col in [c for c in s.columns if c.startswith("soc_pct.")]:
        name = col.split(".", 1)[1]
        ax.plot(t, s[col], label=name)
        lim = cfg.device(name).limits
        ax.axhline(lim.soc_min_pct, color="grey", ls=":", lw=0.8)
        ax.axhline(lim.soc_max_pct, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("state of charge %")
    ax.set_title(f"Battery state of charge{tag}")
    ax.legend(loc="upper left", fontsize=8)
    _time_axis(ax, t)
    files.append(_save(fig, out / "soc.png"))

    fig, ax = plt.subplots(figsize=(12, 4.5))
    k = 1.0 + cfg.gpu.facility_overhead
    bat_lim = sum(b.max_discharge_kw for b in plant.batteries.values())
    gen_run = np.zeros(len(s))
    for g in plant.gensets.values():
        col = f"genset_status.{g.name}"
        if col in s:
            gen_run += np.where(s[col].to_numpy() >= 2.5, g.rating_kw, 0.0)
    carry = (s["pv_available_kw"].to_numpy() + bat_lim + gen_run) / k
    ax.plot(t, carry, color="#5b8e7d", lw=0.8, label="site capability / (1 + overhead)")
    ax.plot(t, _col(s, "gpu_demand_kw"), color="#bbbbbb", lw=0.8, label="GPU demand (uncapped)")
    ax.fill_between(t, 0, s["gpu_kw"], color="#333333", alpha=0.25, label="GPU power drawn")
    ax.plot(t, s["gpu_cap_kw"], color="#9467bd", lw=0.9, label="sum of caps")
    # the budget last and thick: where caps follow it exactly it must still be seen
    ax.plot(t, s["gpu_budget_kw"], color="#1f77b4", lw=2.2, ls=(0, (4, 2)), label="planner GPU budget")
    ax.set_ylabel("kW")
    ax.set_ylim(bottom=0)
    ax.set_title(f"GPU budget and power{tag}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, ncol=5)
    _time_axis(ax, t)
    files.append(_save(fig, out / "gpu_budget.png"))

    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.plot(t, s["genset_kw"], color="#8c6e63", label="genset kW")
    ax.fill_between(t, 0, s["genset_cmd"] * max(1.0, float(s["genset_kw"].max())), color="#8c6e63",
                    alpha=0.12, step="post", label="run command")
    ax.set_ylabel("kW")
    ax2 = ax.twinx()
    ax2.plot(t, s["fuel_l_cum"], color="#444", lw=0.8, ls="--", label="fuel used (L, cumulative)")
    ax2.set_ylabel("fuel L")
    ax.set_title(f"Genset{tag}")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    _time_axis(ax, t)
    files.append(_save(fig, out / "genset.png"))
    return files


def daily_energy_kwh(s: pd.DataFrame) -> pd.DataFrame:
    """kWh per calendar day (the series' zone) of each flow: PV used, battery out/in, genset, grid."""
    step_h = float(np.median(np.diff(s["t_s"].to_numpy()))) / 3600.0 if len(s) > 1 else 1 / 60
    bat, grid = _col(s, "battery_kw"), _col(s, "grid_kw")
    flows = pd.DataFrame({
        "PV used": s["pv_kw"], "battery discharge": bat.clip(lower=0), "genset": s["genset_kw"],
        "grid import": grid.clip(lower=0), "battery charging": bat.clip(upper=0),
        "grid export": grid.clip(upper=0), "unserved": s["unserved_kw"],
    }, index=s.index)
    return flows.resample("D").sum() * step_h


_SHORT = {"ours": "ours\n(live forecast)", "ours_perfect": "perfect\nforesight\n(upper bound)",
          "rule": "rule-based\nfallback", "static": "static cap"}
_BARS = [("value_minus_fuel", "value - fuel", "{c}"), ("fuel_cost", "fuel cost", "{c}"),
         ("unserved_kwh", "unserved", "kWh"), ("genset_hours", "genset hours", "h")]


def y_floor(ax: Axes, values: list[float], span: float = 1.0) -> None:
    """Bars all within ``span`` of zero keep an axis ``span`` high: matplotlib would stretch
    1e-5 kWh of solver dust unserved to full height, and it would read like a real shortfall."""
    finite = [x for x in values if np.isfinite(x)]
    if finite and max(abs(x) for x in finite) < span:
        below, above = min(finite) < 0, max(finite) > 0
        ax.set_ylim(-span if below else 0.0, 0.0 if below and not above else span)


def plot_compare(results: dict[str, dict[str, Any]], series: dict[str, pd.DataFrame], out: Path,
                 currency: str = "currency units") -> list[Path]:
    """Headline KPIs side by side, and daily energy by source per controller."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    labels = [_SHORT.get(n, n) for n in names]
    colors = ["#1f77b4", "#ff7f0e", "#7f7f7f", "#2ca02c", "#9467bd"][: len(names)]
    bars = list(_BARS)
    if any("value_minus_energy" in r for r in results.values()):
        bars[0] = ("value_minus_energy", "value - fuel - grid cost + export", "{c}")
    fig, axes = plt.subplots(1, len(bars), figsize=(4.2 * len(bars), 4.2))
    for ax, (key, label, u) in zip(axes, bars, strict=True):
        v = [float(results[n].get(key, np.nan)) for n in names]
        b = ax.bar(range(len(names)), v, color=colors)
        ax.bar_label(b, fmt="{:,.1f}", fontsize=8)
        y_floor(ax, v)
        ax.set_xticks(range(len(names)), labels, fontsize=8)
        ax.set_title(label)
        ax.set_ylabel(u.format(c=currency))
        ax.grid(axis="y", alpha=0.25)
    run = next(iter(results.values())).get("run", {})
    fig.suptitle(f"Controllers compared: {run.get('days', '')} days from {run.get('start', '')}")
    files = [_save(fig, out / "compare.png")]

    daily = {n: daily_energy_kwh(series[n]) for n in names if n in series}
    fig, axes = plt.subplots(len(daily), 1, figsize=(12, 2.6 * len(daily) + 0.6), sharex=True, squeeze=False)
    cols = {"PV used": "#f2c14e", "battery discharge": "#5b8e7d", "genset": "#8c6e63", "grid import": "#7f7f7f",
            "battery charging": "#4a90d9", "grid export": "#b0b0b0", "unserved": "red"}
    for ax, (n, d) in zip(axes[:, 0], daily.items(), strict=True):
        x = np.arange(len(d))
        pos, neg = np.zeros(len(d)), np.zeros(len(d))
        for c, color in cols.items():
            v = d[c].to_numpy()
            base = pos if c not in ("battery charging", "grid export") else neg
            ax.bar(x, v, bottom=base, color=color, label=c, width=0.8)
            base += v
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("kWh per day")
        ax.set_title(CONTROLLER_NAMES.get(n, n), fontsize=9)
        ax.grid(axis="y", alpha=0.25)
    first = next(iter(daily.values()))
    axes[-1, 0].set_xticks(np.arange(len(first)), [f"{i:%m-%d}" for i in first.index], fontsize=7)
    axes[-1, 0].set_xlabel(f"day ({first.index.tz})")
    axes[0, 0].legend(loc="upper left", ncol=7, fontsize=7)
    fig.suptitle("Daily energy by source (charging and export below zero)")
    files.append(_save(fig, out / "daily_energy.png"))
    return files


def _img(p: Path) -> str:
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}"></figure>'


def html_report(title: str, tables: dict[str, str], pngs: list[Path], out_html: Path) -> Path:
    """One self-contained HTML file (no external files or scripts): KPI tables, then the plots."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}pre{background:#f6f6f6;"
             "padding:8px;overflow-x:auto}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, text in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(text)}</pre>")
    parts.append("<h2>Plots</h2>")
    parts.extend(_img(p) for p in pngs if p.exists())
    parts.append("</body></html>")
    out_html.write_text("\n".join(parts))
    return out_html


def plot_sweep(df: pd.DataFrame, kpi: str, out_png: Path, top: int = 30) -> Path:
    """Horizontal bars of the ``top`` configurations ranked by ``kpi`` (best on top)."""
    d = df.sort_values(kpi, ascending=False).head(top)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.3 * len(d) + 1)))
    ax.barh(range(len(d))[::-1], d[kpi].to_numpy(), color="#5b8e7d")
    ax.set_yticks(range(len(d))[::-1], d["label"].tolist(), fontsize=7)
    ax.set_xlabel(kpi)
    ax.set_title(f"Sweep ranked by {kpi}")
    return _save(fig, out_png)
