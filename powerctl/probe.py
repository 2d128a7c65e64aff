"""``powerctl check --probe``: connect read-only to every device and show what it reads.

The first thing a commissioning engineer runs: each Modbus device of the site is polled once
with its profile (SunSpec discovery included), nothing is written, and every point is printed
with its engineering value and unit, or the reason it is not trusted. A device that does not
answer is reported with the error; the probe goes on with the others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from powerctl.config import ModbusRtu, ModbusTcp, SiteConfig
from powerctl.io.modbus import ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles.library import device_profile
from powerctl.profiles.values import Reading


@dataclass
class DeviceProbe:
    name: str
    profile: str
    where: str
    ok: bool
    error: str = ""
    readings: dict[str, tuple[Reading, str]] = field(default_factory=dict)  # point -> (reading, unit)
    writes: int = 0  # requests that wrote (must stay 0: the probe is read-only)
    probed: bool = True  # False: not a device the probe can read (MQTT); not a failure


def _where(t: object) -> str:
    if isinstance(t, ModbusTcp):
        return f"modbus_tcp {t.host}:{t.port} unit {t.unit_id}"
    if isinstance(t, ModbusRtu):
        return f"modbus_rtu {t.port} unit {t.unit_id}"
    return type(t).__name__


async def _probe_one(cfg: SiteConfig, i: int) -> DeviceProbe:
    d = cfg.devices[i]
    where = _where(d.transport)
    if not isinstance(d.transport, ModbusTcp | ModbusRtu):
        return DeviceProbe(d.name, d.profile, where, True, "not a Modbus device: not probed (watch its MQTT topics)", probed=False)
    profile = device_profile(d, cfg.control.profiles_dir)
    image = ProcessImage()
    for sig in {p.signal for p in profile.points if p.signal}:
        image.declare(d.name, d.nature, sig, d.signal_max_age_s)
    dev = ModbusDevice(d.name, profile, d.transport, image, stale_after_failures=1)
    try:
        ok = await dev.poll_once()
        units = {p.name: p.unit for p in dev.profile.points}
        return DeviceProbe(
            d.name, d.profile, where, ok, "" if ok else dev.stats.last_error,
            {n: (r, units.get(n, "")) for n, r in dev.readings.items()}, dev.stats.writes,
        )
    finally:
        dev.close()


async def probe_site(cfg: SiteConfig) -> list[DeviceProbe]:
    """Every device once, concurrently (a dead device costs its timeout, not the others')."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_probe_one(cfg, i)) for i in range(len(cfg.devices))]
    results = [t.result() for t in tasks]
    return results


def format_probe(results: list[DeviceProbe]) -> str:
    lines: list[str] = []
    for r in results:
        head = f"{r.name}  {r.profile}  {r.where}  "
        lines.append(head + (f"SKIPPED: {r.error}" if not r.probed else "OK" if r.ok else f"FAILED: {r.error}"))
        for name, (reading, unit) in r.readings.items():
            if reading.value is None:
                lines.append(f"  {name:<28} -- ({reading.reason})")
            elif isinstance(reading.value, str):
                lines.append(f"  {name:<28} {reading.value!r}")
            else:
                lines.append(f"  {name:<28} {reading.value:g} {unit}".rstrip())
    return "\n".join(lines)
