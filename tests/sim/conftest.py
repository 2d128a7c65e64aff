"""Shared fixtures for the simulation tests: a demo-like site config built in code."""

from __future__ import annotations

from typing import Any

import pytest

from powerctl.config import SiteConfig, parse_config


def site_dict(
    *,
    kwp: float = 100.0,
    bat_kwh: float = 200.0,
    bat_kw: float = 100.0,
    gen_kw: float = 150.0,
    gpus: tuple[int, int, int] = (32, 16, 16),
    grid_import_kw: float = 0.0,
) -> dict[str, Any]:
    """A site like examples/demo-site.toml: ~100 kWp PV, 200 kWh/100 kW battery, 150 kW genset, 64 GPUs."""

    def tcp(port: int) -> dict[str, Any]:
        return {"kind": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1}

    devices: list[dict[str, Any]] = [
        {
            "name": "pv1",
            "nature": "pv",
            "profile": "sunspec/inverter_103",
            "transport": tcp(15020),
            "limits": {"kwp": kwp, "tilt_deg": 25, "azimuth_deg": 180},
        },
        {
            "name": "bat1",
            "nature": "battery",
            "profile": "sma/sunny_island",
            "transport": tcp(15021),
            "limits": {
                "capacity_kwh": bat_kwh,
                "max_charge_kw": bat_kw,
                "max_discharge_kw": bat_kw,
                "soc_min_pct": 10,
                "soc_max_pct": 95,
            },
        },
        {
            "name": "gen1",
            "nature": "genset",
            "profile": "dse/gencomm",
            "transport": tcp(15022),
            "limits": {
                "rating_kw": gen_kw,
                "min_load_pct": 30,
                "f0_l_per_h_per_kw": 0.015,
                "f1_l_per_kwh": 0.25,
                "warmup_s": 60,
            },
        },
    ]
    if grid_import_kw > 0:
        devices.append(
            {
                "name": "meter1",
                "nature": "meter",
                "profile": "x",
                "transport": tcp(15023),
                "limits": {"max_import_kw": grid_import_kw, "max_export_kw": 0},
            }
        )
    return {
        "site": {
            "id": "demo",
            "module": "m1",
            "latitude": 36.1,
            "longitude": -79.95,
            "timezone": "Etc/GMT+5",
        },
        "devices": devices,
        "gpu": {
            "min_w": 100,
            "max_w": 400,
            "safe_cap_w": 150,
            "idle_w": 60,
            "facility_overhead": 0.08,
            "classes": [
                {
                    "name": "training",
                    "gpus": gpus[0],
                    "priority": 2,
                    "value_per_kwh": 0.4,
                    "curve": "pt_mpt_13b_lg",
                },
                {
                    "name": "inference",
                    "gpus": gpus[1],
                    "priority": 0,
                    "value_per_kwh": 1.0,
                    "curve": "infer_llama_8b",
                    "floor_pct": 25,
                },
                {
                    "name": "finetune",
                    "gpus": gpus[2],
                    "priority": 1,
                    "value_per_kwh": 0.6,
                    "curve": "ft_llama_8b_dolly",
                },
            ],
        },
    }


def make_cfg(**kw: Any) -> SiteConfig:
    return parse_config(site_dict(**kw))


@pytest.fixture
def cfg() -> SiteConfig:
    return make_cfg()
