"""PNG plots of a replay (matplotlib, Agg backend: no display needed). Runs longer than two days are
plotted as 15-minute means (the Parquet series keeps every step).

- ``power_stack.png``: PV used, battery discharge, genset stacked against the site load; PV available
  dashed; unserved in red;
- ``soc.png``: state of charge of each battery with its window;
- ``gpu_budget.png``: GPU power drawn, the sum of caps, the planner's budget, and the power the site
  could carry (PV available + battery discharge limit + running genset rating, net of overhead);
- ``genset.png``: genset output, run command, and cumulative fuel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_replay(s: pd.DataFrame, plant: Any, out: Path, title: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if len(s) > 1 and (s.index[-1] - s.index[0]) > pd.Timedelta(days=2):
        # minute-scale inference bursts turn a week into a solid band: plot 15-minute means
        s = s.select_dtypes("number").resample("15min").mean()
    t = s.index.tz_localize(None) if getattr(s.index, "tz", None) is not None else s.index
    files = []
    cfg = plant.cfg
    tag = f" ({title})" if title else ""

    fig, ax = plt.subplots(figsize=(12, 4.5))
    dis = s["battery_kw"].clip(lower=0.0)
    ax.stackplot(
        t,
        s["pv_kw"],
        dis,
        s["genset_kw"],
        labels=["PV used", "battery discharge", "genset"],
        colors=["#f2c14e", "#5b8e7d", "#8c6e63"],
        alpha=0.85,
    )
    ax.plot(t, s["load_kw"], color="k", lw=1.0, label="site load")
    ax.plot(t, s["pv_available_kw"], color="#d08c00", lw=0.8, ls="--", label="PV available")
    if (s["unserved_kw"] > 0).any():
        ax.fill_between(t, 0, s["unserved_kw"], color="red", alpha=0.6, label="unserved")
    ax.set_ylabel("kW")
    ax.set_title(f"Power stack{tag}")
    ax.legend(loc="upper left", ncol=6, fontsize=8)
    files.append(_save(fig, out / "power_stack.png"))

    fig, ax = plt.subplots(figsize=(12, 3.5))
    for col in [c for c in s.columns if c.startswith("soc_pct.")]:
        name = col.split(".", 1)[1]
        ax.plot(t, s[col], label=name)
        lim = cfg.device(name).limits
        ax.axhline(lim.soc_min_pct, color="grey", ls=":", lw=0.8)
        ax.axhline(lim.soc_max_pct, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("SoC %")
    ax.set_title(f"Battery state of charge{tag}")
    ax.legend(loc="upper left", fontsize=8)
    files.append(_save(fig, out / "soc.png"))

    fig, ax = plt.subplots(figsize=(12, 4))
    k = 1.0 + cfg.gpu.facility_overhead
    bat_lim = sum(b.max_discharge_kw for b in plant.batteries.values())
    gen_run = np.zeros(len(s))
    for g in plant.gensets.values():
        col = f"genset_status.{g.name}"
        if col in s:
            gen_run += np.where(s[col].to_numpy() == 3, g.rating_kw, 0.0)
    carry = (s["pv_available_kw"].to_numpy() + bat_lim + gen_run) / k
    ax.plot(
        t,
        carry,
        color="#5b8e7d",
        lw=0.8,
        label="power capability / (1 + overhead): PV + battery limit + running genset",
    )
    ax.plot(t, s["gpu_budget_kw"], color="#1f77b4", lw=0.8, ls="--", label="planner GPU budget")
    ax.plot(t, s["gpu_cap_kw"], color="#9467bd", lw=0.8, label="sum of caps")
    ax.plot(t, s["gpu_kw"], color="k", lw=1.0, label="GPU power drawn")
    ax.set_ylabel("kW")
    ax.set_ylim(bottom=0)
    ax.set_title(f"GPU budget vs available{tag}")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    files.append(_save(fig, out / "gpu_budget.png"))

    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.plot(t, s["genset_kw"], color="#8c6e63", label="genset kW")
    ax.fill_between(
        t,
        0,
        s["genset_cmd"] * max(1.0, float(s["genset_kw"].max())),
        color="#8c6e63",
        alpha=0.12,
        step="post",
        label="run command",
    )
    ax.set_ylabel("kW")
    ax2 = ax.twinx()
    ax2.plot(t, s["fuel_l_cum"], color="#444", lw=0.8, ls="--", label="fuel used (L, cumulative)")
    ax2.set_ylabel("L")
    ax.set_title(f"Genset{tag}")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    files.append(_save(fig, out / "genset.png"))
    return files


def plot_sweep(df: pd.DataFrame, kpi: str, out_png: Path, top: int = 30) -> Path:
    """Horizontal bars of the ``top`` configurations ranked by ``kpi`` (best on top)."""
    d = df.sort_values(kpi, ascending=False).head(top)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.3 * len(d) + 1)))
    ax.barh(range(len(d))[::-1], d[kpi].to_numpy(), color="#5b8e7d")
    ax.set_yticks(range(len(d))[::-1], d["label"].tolist(), fontsize=7)
    ax.set_xlabel(kpi)
    ax.set_title(f"Sweep ranked by {kpi}")
    return _save(fig, out_png)
