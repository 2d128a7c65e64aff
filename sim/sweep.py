"""Sizing sweeps on Dask: replay a grid of sizes x controllers over one trace and rank them.

Grid file (TOML, see examples/sweep.toml)::

    [sweep]
    days = 2                    # replay length per configuration
    start = "06-01"             # first day in the weather year
    controllers = ["ours", "static"]
    rank_by = "net_value"       # any KPI column; net_value = value_minus_energy - capital cost share
    [grid]                      # every combination of these (missing keys keep the site's value)
    pv_kwp = [150, 250]
    battery_kwh = [200, 400]
    battery_kw = [100, 150]
    genset_kw = [80, 120]
    gpus = [96, 128]            # total GPU count, shared over the classes in the site's proportions
    grid_import_kw = [0, 150]   # grid import limit (split over the site's meters; 0 = no import)
    [capex]                     # annualised capital cost per unit and year (0 if absent)
    pv_per_kwp = 60.0
    battery_per_kwh = 35.0
    battery_per_kw = 10.0
    genset_per_kw = 25.0
    gpu_each = 2500.0

``run_sweep`` submits one task per (sizes, controller) to a ``dask.distributed`` cluster: a
``LocalCluster`` by default, or an existing scheduler (``scheduler="tcp://127.0.0.1:8786"``). Each
task rebuilds its own trace (workers need the data files at the same paths) and returns a flat KPI
row; results land in ``sweep.parquet`` + ``sweep.csv`` and ``sweep.png`` (ranked bars). Each run's
row is written to ``points/<key>.json`` as it ends (key: hash of site, sizes, controller, options);
a re-run of the same sweep into the same folder runs only what is missing (a failed or interrupted
sweep keeps what it finished).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from powerctl.config import ConfigError, SiteConfig, load_config, parse_config
from powerctl.natures import Nature

log = logging.getLogger(__name__)

GRID_KEYS = ("pv_kwp", "battery_kwh", "battery_kw", "genset_kw", "gpus", "grid_import_kw")
ZERO_OK = {"grid_import_kw"}  # 0 kW import is a site worth sweeping (islanded, or export only)
CAPEX_KEYS = {"pv_per_kwp", "battery_per_kwh", "battery_per_kw", "genset_per_kw", "gpu_each"}


class SweepError(ValueError):
    """A bad grid file; the message names the file, the key and the problem."""


def load_grid(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{p}: not valid TOML: {exc}") from None
    for key in data:
        if key not in ("sweep", "grid", "capex"):
            raise SweepError(f"{p}: {key}: unknown table (expected sweep, grid, capex)")
    grid = data.get("grid", {})
    for k, v in grid.items():
        if k not in GRID_KEYS:
            raise SweepError(f"{p}: grid.{k}: unknown key (expected one of {', '.join(GRID_KEYS)})")
        low_ok = (lambda x: x >= 0) if k in ZERO_OK else (lambda x: x > 0)
        if not isinstance(v, list) or not v or not all(isinstance(x, int | float) and low_ok(x) for x in v):
            kind = "numbers >= 0" if k in ZERO_OK else "positive numbers"
            raise SweepError(f"{p}: grid.{k}: must be a non-empty list of {kind}")
    for k, v in data.get("capex", {}).items():
        if k not in CAPEX_KEYS:
            raise SweepError(f"{p}: capex.{k}: unknown key (expected one of {', '.join(sorted(CAPEX_KEYS))})")
        if not isinstance(v, int | float) or v < 0:
            raise SweepError(f"{p}: capex.{k}: must be a number >= 0")
    sw = data.get("sweep", {})
    for k in sw:
        if k not in (
            "days",
            "start",
            "controllers",
            "rank_by",
            "step_s",
            "plan_every_s",
            "trace",
            "gpu_trace",
        ):
            raise SweepError(f"{p}: sweep.{k}: unknown key")
    ctrls = sw.get("controllers", ["ours"])
    for c in ctrls:
        if c not in ("ours", "rule", "static"):
            raise SweepError(f"{p}: sweep.controllers: unknown controller {c!r}")
    return {"sweep": sw, "grid": grid, "capex": data.get("capex", {})}


def sized_config(cfg: SiteConfig, sizes: dict[str, float]) -> SiteConfig:
    """The site config with the given sizes (PV kWp scales max AC with it; GPUs keep class shares)."""
    d = cfg.model_dump(mode="json", exclude_none=True)
    for dev in d["devices"]:
        lim = dev["limits"]
        if dev["nature"] == Nature.PV.value and "pv_kwp" in sizes:
            n_pv = len(cfg.by_nature(Nature.PV))
            ratio = sizes["pv_kwp"] / n_pv / lim["kwp"]
            lim["kwp"] = sizes["pv_kwp"] / n_pv
            if "max_ac_kw" in lim:
                lim["max_ac_kw"] = lim["max_ac_kw"] * ratio
        elif dev["nature"] == Nature.BATTERY.value:
            n = len(cfg.by_nature(Nature.BATTERY))
            if "battery_kwh" in sizes:
                lim["capacity_kwh"] = sizes["battery_kwh"] / n
            if "battery_kw" in sizes:
                lim["max_charge_kw"] = lim["max_discharge_kw"] = sizes["battery_kw"] / n
        elif dev["nature"] == Nature.GENSET.value and "genset_kw" in sizes:
            n = len(cfg.by_nature(Nature.GENSET))
            lim["rating_kw"] = sizes["genset_kw"] / n
        elif dev["nature"] == Nature.METER.value and "grid_import_kw" in sizes:
            lim["max_import_kw"] = sizes["grid_import_kw"] / len(cfg.by_nature(Nature.METER))
    if "gpus" in sizes:
        total = cfg.gpu.count
        classes = d["gpu"]["classes"]
        counts = [round(c["gpus"] * sizes["gpus"] / total) for c in classes]
        counts[0] += int(sizes["gpus"]) - sum(counts)  # rounding remainder to the first class
        for c, n in zip(classes, counts, strict=True):
            c["gpus"] = max(n, 0)
    try:
        return parse_config(d, "sweep")
    except ConfigError as exc:
        raise SweepError(f"sizes {sizes}: {exc}") from None


def capex_per_year(cfg: SiteConfig, capex: dict[str, float]) -> float:
    pv = sum(x.limits.kwp for x in cfg.by_nature(Nature.PV))
    bat_kwh = sum(x.limits.capacity_kwh for x in cfg.by_nature(Nature.BATTERY))
    bat_kw = sum(x.limits.max_discharge_kw for x in cfg.by_nature(Nature.BATTERY))
    gen = sum(x.limits.rating_kw for x in cfg.by_nature(Nature.GENSET))
    return (
        capex.get("pv_per_kwp", 0.0) * pv
        + capex.get("battery_per_kwh", 0.0) * bat_kwh
        + capex.get("battery_per_kw", 0.0) * bat_kw
        + capex.get("genset_per_kw", 0.0) * gen
        + capex.get("gpu_each", 0.0) * cfg.gpu.count
    )


def sweep_points(
    base: SiteConfig, grid: dict[str, list[float]], controllers: list[str]
) -> list[dict[str, Any]]:
    keys = [k for k in GRID_KEYS if k in grid]
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        sizes = dict(zip(keys, combo, strict=True))
        for c in controllers:
            points.append({"sizes": sizes, "controller": c})
    return points


def run_point(
    base_cfg_json: dict[str, Any], point: dict[str, Any], opts: dict[str, Any], capex: dict[str, float]
) -> dict[str, Any]:
    """One sweep task (runs on a Dask worker): size the site, replay, flatten the KPIs."""
    from powerctl.sim.kpi import compute_kpis
    from powerctl.sim.replay import simulate
    from powerctl.sim.traces.site_trace import build_site_trace

    base = parse_config(base_cfg_json, "sweep")
    cfg = sized_config(base, point["sizes"])
    tr = build_site_trace(
        cfg, opts["trace"], opts["gpu_trace"], start=opts["start"], days=opts["days"], step_s=opts["step_s"]
    )
    res = simulate(
        cfg, tr, controller=point["controller"], step_s=opts["step_s"], plan_every_s=opts["plan_every_s"]
    )
    k = compute_kpis(res)
    cap_run = capex_per_year(cfg, capex) * opts["days"] / 365.0
    row: dict[str, Any] = {
        **{f"size.{n}": v for n, v in point["sizes"].items()},
        "controller": point["controller"],
    }
    row["label"] = " ".join(f"{n}={v:g}" for n, v in point["sizes"].items()) + f" {point['controller']}"
    for key, v in k.items():
        if isinstance(v, int | float | bool):
            row[key] = float(v)
    row["capex_share"] = cap_run
    row["net_value"] = k["value_minus_energy"] - cap_run  # grid cost and export count on grid-tied sites
    row["plans_primary"] = float(k["controller"].get("plan_rungs", {}).get("primary", 0))
    return row


def point_key(base_json: dict[str, Any], point: dict[str, Any], opts: dict[str, Any],
              capex: dict[str, float]) -> str:
    """Names a finished run by everything that decides its result (site, sizes, controller, options)."""
    blob = json.dumps([base_json, point, opts, capex], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def run_sweep(
    cfg_path: str | Path,
    grid_path: str | Path,
    out_dir: str | Path = "sweep-out",
    *,
    scheduler: str | None = None,
    workers: int = 2,
    days: float | None = None,
    on_result: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run every grid point on Dask; write sweep.parquet, sweep.csv, sweep.png; return the table."""
    from dask.distributed import Client, LocalCluster, as_completed

    from powerctl.sim.traces.site_trace import DATA_DIR

    base = load_config(cfg_path, check_secrets=False)
    g = load_grid(grid_path)
    sw = g["sweep"]
    opts = {
        "days": float(days if days is not None else sw.get("days", 2.0)),
        "start": str(sw.get("start", "06-01")),
        "step_s": float(sw.get("step_s", 60.0)),
        "plan_every_s": float(sw.get("plan_every_s", 300.0)),
        "trace": str(sw.get("trace", DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv")),
        "gpu_trace": sw.get("gpu_trace", str(DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv"))
        or None,
    }
    points = sweep_points(base, g["grid"], list(sw.get("controllers", ["ours"])))
    for p in points:  # fail fast on sizes the config model refuses, before any worker starts
        sized_config(base, p["sizes"])
    rank_by = str(sw.get("rank_by", "net_value"))
    base_json = base.model_dump(mode="json", exclude_none=True)

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="10s")
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    out = Path(out_dir)
    done_dir = out / "points"  # one JSON per finished run: a re-run skips them (keeps what it finished)
    done_dir.mkdir(parents=True, exist_ok=True)
    keys = [point_key(base_json, p, opts, g["capex"]) for p in points]
    rows = [json.loads((done_dir / f"{k}.json").read_text()) for k in keys if (done_dir / f"{k}.json").exists()]
    todo = [(k, p) for k, p in zip(keys, points, strict=True) if not (done_dir / f"{k}.json").exists()]
    if rows:
        log.info("sweep: %d of %d runs already done in %s, %d to run", len(rows), len(points), done_dir, len(todo))
    failed: list[str] = []
    try:
        futs = {client.submit(run_point, base_json, p, opts, g["capex"], pure=False): (k, p) for k, p in todo}
        for i, fut in enumerate(as_completed(list(futs)), 1):
            k, p = futs[fut]
            try:
                row = fut.result()
            except Exception as exc:  # one bad run must not lose the others: named, retried on re-run
                failed.append(f"{p['sizes']} {p['controller']}: {exc}")
                continue
            tmp = done_dir / f"{k}.json.tmp"
            tmp.write_text(json.dumps(row, default=float))
            tmp.replace(done_dir / f"{k}.json")  # written as each run ends, atomically
            rows.append(row)
            if on_result is not None:
                on_result(i, len(futs))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if failed:
        raise SweepError(f"{len(failed)} of {len(points)} runs failed (the {len(rows)} finished are kept in "
                         f"{done_dir}; re-run to retry only the rest): " + "; ".join(failed[:3]))
    df = pd.DataFrame(rows)
    if rank_by not in df.columns:
        raise SweepError(f"{grid_path}: sweep.rank_by: {rank_by!r} is not a KPI column")
    df = df.sort_values(rank_by, ascending=False).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    df.to_parquet(out / "sweep.parquet")
    df.to_csv(out / "sweep.csv", index=False)
    from powerctl.sim.plots import plot_sweep

    plot_sweep(df, rank_by, out / "sweep.png")
    return df
