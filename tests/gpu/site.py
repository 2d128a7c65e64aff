"""A small test site for the guard: PV, one battery, optionally a genset; GPUs in classes."""

from __future__ import annotations

from typing import Any

from powerctl.config import SiteConfig, parse_config
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage


def site_dict(
    *,
    classes: list[dict[str, Any]] | None = None,
    genset: bool = False,
    max_discharge_kw: float = 8.0,
    gpu: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tcp = {"kind": "modbus_tcp", "host": "127.0.0.1", "port": 15020}
    devices: list[dict[str, Any]] = [
        {"name": "pv1", "nature": "pv", "profile": "sunspec/inverter_103", "transport": tcp,
         "poll_period_s": 0.1, "limits": {"kwp": 25.0}},
        {"name": "bat1", "nature": "battery", "profile": "sma/sunny_island", "transport": tcp,
         "poll_period_s": 0.1,
         "limits": {"capacity_kwh": 50.0, "max_charge_kw": 10.0, "max_discharge_kw": max_discharge_kw,
                    "soc_min_pct": 10.0, "soc_max_pct": 95.0}},
    ]
    if genset:
        devices.append({"name": "gen1", "nature": "genset", "profile": "dse/gencomm", "transport": tcp,
                        "limits": {"rating_kw": 30.0, "f0_l_per_h_per_kw": 0.08, "f1_l_per_kwh": 0.25}})
    pool: dict[str, Any] = {
        "backend": "simulated", "min_w": 100.0, "max_w": 400.0, "safe_cap_w": 150.0, "idle_w": 60.0,
        "facility_overhead": 0.08, "ramp_up_kw_per_s": 2.0,
        "classes": classes or [
            {"name": "prod", "gpus": 24, "priority": 0},
            {"name": "batch", "gpus": 16, "priority": 1},
        ],
    }
    pool.update(gpu or {})
    ctl: dict[str, Any] = {"guard_period_s": 0.2, "supply_margin_kw": 1.0, "supply_margin_pct": 5.0}
    ctl.update(control or {})
    return {"site": {"id": "test", "module": "m1"}, "control": ctl, "devices": devices, "gpu": pool}


def site(**kw: Any) -> SiteConfig:
    return parse_config(site_dict(**kw))


def image_for(cfg: SiteConfig, max_age_s: float = 1.0) -> ProcessImage:
    img = ProcessImage()
    for d in cfg.devices:
        sigs = {Nature.PV: ["p_kw"], Nature.BATTERY: ["p_kw", "soc_pct"],
                Nature.GENSET: ["p_kw", "running"]}.get(d.nature, [])
        for s in sigs:
            img.declare(d.name, d.nature, s, max_age_s)
    return img
