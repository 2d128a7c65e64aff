"""``powerctl scan HOST[:PORT] [--unit N]``: discover a SunSpec device and print what it has.

``scan()`` is synchronous (for the CLI); ``ascan()`` is the same inside a running event loop.
Run standalone with ``python -m powerctl.sunspec.scan HOST[:PORT] [--unit N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from powerctl.sunspec.decode import PointValue, decode_model
from powerctl.sunspec.discovery import Chain, DiscoveryError, discover
from powerctl.sunspec.models import load_model

# The points worth a line in the scan output, per model (others are decoded but not printed).
KEY_POINTS: dict[int, tuple[str, ...]] = {
    1: ("Mn", "Md", "Vr", "SN"),
    101: ("W", "Hz", "A", "PhVphA", "WH", "DCW", "St"),
    103: ("W", "Hz", "A", "PhVphA", "WH", "DCW", "St"),
    124: ("WChaMax", "StorCtl_Mod", "ChaState", "InBatV", "ChaSt", "OutWRte", "InWRte"),
    701: ("ACType", "InvSt", "ConnSt", "W", "VA", "Var", "Hz", "TotWhInj", "TotWhAbs"),
    702: ("WMaxRtg", "VAMaxRtg", "WChaRteMaxRtg", "WDisChaRteMaxRtg", "WMax", "WChaRteMax", "WDisChaRteMax"),
    704: ("WMaxLimPctEna", "WMaxLimPct", "WSetEna", "WSetMod", "WSet", "WMaxLimPctRvrtTms"),
    802: ("WHRtg", "WChaRteMax", "WDisChaRteMax", "SoC", "SoH", "V", "A", "W", "ChaSt", "State"),
}


class ScanError(Exception):
    """Cannot reach the device or it is not SunSpec."""


@dataclass(slots=True)
class ScannedModel:
    id: int
    name: str  # definition name, or "unknown"
    address: int
    length: int  # as reported by the device
    defined_length: int | None  # from the JSON (None: no definition shipped)
    points: dict[str, PointValue] = field(default_factory=dict)

    @property
    def length_mismatch(self) -> bool:
        return self.defined_length is not None and self.length != self.defined_length


@dataclass(slots=True)
class ScanResult:
    host: str
    port: int
    unit: int
    base: int
    models: list[ScannedModel]
    end_found: bool
    problems: list[str] = field(default_factory=list)

    def model(self, model_id: int) -> ScannedModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    def value(self, model_id: int, point: str) -> float | int | str | None:
        m = self.model(model_id)
        if m is None or point not in m.points:
            return None
        return m.points[point].value


def decode_chain(chain: Chain) -> list[ScannedModel]:
    """Decode every discovered model that has a shipped definition (others keep no points)."""
    out: list[ScannedModel] = []
    for fm in chain.models:
        md = load_model(fm.id)
        if md is None:
            out.append(ScannedModel(fm.id, "unknown", fm.address, fm.length, None))
            continue
        points = decode_model(md, list(fm.regs), fm.length)
        out.append(ScannedModel(fm.id, md.name, fm.address, fm.length, md.length, points))
    return out


async def ascan(host: str, port: int = 502, unit: int = 1, timeout_s: float = 2.0) -> ScanResult:
    """Connect, discover and decode. Raises ScanError with a readable reason."""
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    try:
        try:
            async with asyncio.timeout(timeout_s + 0.5):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            raise ScanError(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
        if not ok:
            raise ScanError(f"cannot connect to {host}:{port}")

        async def read(address: int, count: int) -> list[int]:
            try:
                async with asyncio.timeout(timeout_s + 0.5):
                    rr = await client.read_holding_registers(address, count=count, device_id=unit)
            except TimeoutError:
                raise ScanError(f"timeout reading {count} registers at {address}") from None
            except ModbusException as exc:
                raise ScanError(f"reading {address}: {exc}") from None
            if rr.isError():
                raise ScanError(f"exception response at {address}: {rr}")
            return list(rr.registers)

        try:
            chain = await discover(read)
        except DiscoveryError as exc:
            raise ScanError(f"{host}:{port} unit {unit}: {exc}") from None
        return ScanResult(host, port, unit, chain.base, decode_chain(chain), chain.end_address is not None, chain.problems)
    finally:
        client.close()


def scan(host: str, port: int = 502, unit: int = 1, timeout_s: float = 2.0) -> ScanResult:
    """Synchronous ``ascan`` (starts its own event loop)."""
    return asyncio.run(ascan(host, port, unit, timeout_s))


def _fmt_value(pv: PointValue) -> str:
    if pv.value is None:
        return f"n/a ({pv.reason})" if pv.reason else "n/a"
    if isinstance(pv.value, float):
        text = f"{pv.value:.6g}"
    else:
        text = str(pv.value)
    if pv.symbol:
        text += f" ({pv.symbol})"
    return f"{text} {pv.units}".rstrip()


def format_scan(result: ScanResult) -> str:
    """Plain-text report: one block per model with its key points and units."""
    lines = [f"SunSpec device at {result.host}:{result.port} unit {result.unit}: marker 'SunS' at {result.base}"]
    for m in result.models:
        length = f"L={m.length}"
        if m.length_mismatch:
            length += f" (definition {m.defined_length}: decoded what fits)"
        lines.append(f"  model {m.id:<5} {m.name:<24} @ {m.address:<5} {length}")
        for name in KEY_POINTS.get(m.id, ()):
            if name in m.points:
                lines.append(f"      {name:<18} {_fmt_value(m.points[name])}")
    lines.append("  end model 0xFFFF found" if result.end_found else "  no end model (chain stopped early)")
    lines.extend(f"  problem: {p}" for p in result.problems)
    return "\n".join(lines)


def parse_target(target: str, default_port: int = 502) -> tuple[str, int]:
    """``HOST[:PORT]`` -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep:
        return target, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {target!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="powerctl scan", description="Discover a SunSpec Modbus TCP device.")
    ap.add_argument("target", help="HOST[:PORT]")
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args(argv)
    try:
        host, port = parse_target(args.target)
        print(format_scan(scan(host, port, args.unit, args.timeout)))
    except (ScanError, ValueError) as exc:
        print(f"scan failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
