"""Fixtures for the device layer: simulators served by real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from powerctl.config import ModbusTcp
from powerctl.io.modbus import ModbusDevice
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage
from powerctl.profiles.model import Profile
from powerctl.sim.devices import RegisterDevice, SimServer
from tests.servers import free_port


def declare(image: ProcessImage, name: str, profile: Profile, max_age_s: float = 60.0) -> None:
    for sig in SIGNALS[profile.nature]:
        image.declare(name, profile.nature, sig, max_age_s)


def tcp(port: int, unit: int, timeout_s: float = 0.3, framer: str = "socket") -> ModbusTcp:
    return ModbusTcp(kind="modbus_tcp", host="127.0.0.1", port=port, unit_id=unit, timeout_s=timeout_s, framer=framer)  # type: ignore[arg-type]


@asynccontextmanager
async def served(*devices: RegisterDevice, framer: str = "socket") -> AsyncIterator[SimServer]:
    """Serve devices on a free loopback port; checks a known register before handing over."""
    server = SimServer(list(devices), free_port(), framer=framer)
    async with server:
        yield server


def make_driver(
    name: str, profile: Profile, port: int, unit: int, image: ProcessImage, *, clock: Callable[[], float] = time.time, **kw: object
) -> ModbusDevice:
    declare(image, name, profile)
    return ModbusDevice(name, profile, tcp(port, unit, float(kw.pop("timeout_s", 0.3))), image, clock=clock, **kw)  # type: ignore[arg-type]


def on_loopback(site: dict[str, Any], tmp_path: Path) -> None:
    """A site config dict (``SiteConfig.model_dump``) made ready for a test daemon, in place: every
    device on a free loopback port with 1 s timeouts, state and heartbeat under ``tmp_path/run``,
    a plan every 2 s over a 30-minute fine horizon and 3 coarse hours."""
    for x in site["devices"]:
        x["transport"]["port"] = free_port()
        x["transport"]["timeout_s"] = 1.0
    run = tmp_path / "run"
    site["control"].update(mpc_period_s=2.0, horizon=[{"step_s": 60, "count": 30}, {"step_s": 900, "count": 12}],
                           heartbeat_path=str(run / "heartbeat"), state_dir=str(run))


def at_any_hour(site: dict[str, Any], tmp_path: Path, *, prices: bool = True) -> None:
    """Make a grid-tied site dict plan the same at whatever hour the test runs: on the equator at
    the longitude where it is about noon now (the daemon forecasts PV with pvlib's sun for the real
    clock: at night it planned idle GPUs), and prices relative to now, a peak for 4 h then the day
    price, so the batteries have a reason to move now (after the example's evening TOU peak, with
    the cheap night in the horizon, they rightly waited at 0 kW); ``prices`` False keeps the site's
    tariff (an island has no grid to price)."""
    hour_utc = (time.time() % 86400.0) / 3600.0
    site["site"].update(latitude=0.0, longitude=((12.0 - hour_utc + 12.0) % 24.0 - 12.0) * 15.0)
    if not prices:
        return
    now_s = int(time.time())
    csv = tmp_path / "prices.csv"
    csv.write_text("t_s,import_price_per_kwh,export_price_per_kwh\n"
                   f"{now_s - 600},0.34,0.03\n{now_s + 4 * 3600},0.13,0.03\n{now_s + 8 * 3600},0.13,0.03\n")
    site["tariff"]["price_csv"] = str(csv)


def cheaper_to_wear(battery: dict[str, Any], than: dict[str, Any]) -> None:
    """Two batteries with equal costs are one degenerate LP: any split of their sum is optimal, and
    HiGHS may give it all to one; ``battery`` half as dear to wear is used first."""
    battery["limits"]["wear_cost_per_kwh"] = 0.5 * float(than["limits"].get("wear_cost_per_kwh", 0.02))
