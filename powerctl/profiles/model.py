"""Device profiles: YAML files in ``device_profiles/<vendor>/<model>.yaml``.

A profile is data, never code. It lists readable points (address, table, type, word order,
scale, unit, the nature signal it feeds, sentinels) and writable setpoints (range, unit, write
function, read-back point, keep-alive). ``load_profile`` validates the YAML against the JSON
schema shipped in ``device_profiles/profile.schema.json`` and then checks what a schema cannot
(overlapping registers, scale-factor references, signal names of the nature).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import device_profiles
from powerctl.natures import Nature, signal_spec
from powerctl.profiles.codec import SUNSPEC_SENTINELS, WordOrder, register_count

PROFILE_ROOT = Path(device_profiles.__file__).parent
SCHEMA_PATH = PROFILE_ROOT / "profile.schema.json"

# point unit -> (signal unit, multiplier)
_UNIT_TO_SIGNAL: dict[str, tuple[str, float]] = {
    "W": ("kW", 1e-3),
    "kW": ("kW", 1.0),
    "Wh": ("kWh", 1e-3),
    "kWh": ("kWh", 1.0),
    "%": ("%", 1.0),
    "Pct": ("%", 1.0),
    "s": ("s", 1.0),
    "min": ("s", 60.0),
    "h": ("s", 3600.0),
    "": ("", 1.0),
}


class ProfileError(ValueError):
    """A profile that is not valid; the message names the file and field."""


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    table: str  # holding | input | coil
    address: int
    dtype: str
    words: WordOrder = "big"
    length: int | None = None  # registers, strings only
    scale: float = 1.0
    scale_sf: str | None = None  # name of a sunssf point: value x 10^sf
    unit: str = ""
    signal: str | None = None
    sign: float = 1.0  # -1 flips a vendor sign convention into ours
    sentinels: frozenset[int] = frozenset()
    value_map: dict[int, float] | None = None  # raw code -> signal value (e.g. engine state -> running)
    valid_min: float | None = None  # engineering value outside [valid_min, valid_max] = invalid
    valid_max: float | None = None

    @property
    def count(self) -> int:
        return register_count(self.dtype, self.length)

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class Setpoint:
    name: str
    table: str  # holding | coil
    address: int
    dtype: str
    signal: str | None
    words: WordOrder = "big"
    scale: float = 1.0
    scale_sf: str | None = None
    unit: str = ""
    sign: float = 1.0
    range_min: float = 0.0
    range_max: float = 0.0
    write: str = "fc16"  # fc6 | fc16 | fc5
    readback: str | None = None  # point name read back after a write
    keepalive_s: float | None = None  # rewrite at least this often (device forgets it)
    complement: bool = False  # DSE style: write [value, 65535 - value]
    value_map: dict[float, int] | None = None  # command value -> raw code (e.g. 1 -> start key)
    after_writes: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (address, regs) written right after, e.g. an enable word

    @property
    def count(self) -> int:
        return register_count(self.dtype) * (2 if self.complement else 1)


@dataclass(frozen=True, slots=True)
class Polling:
    max_registers: int = 125
    max_hole: int = 16  # registers we may read across between points (0 = never read holes)
    min_gap_ms: float = 0.0


@dataclass(frozen=True)
class Profile:
    key: str  # "<vendor>/<model>"
    path: Path
    vendor: str
    model: str
    nature: Nature
    protocol: str
    points: tuple[Point, ...]
    setpoints: tuple[Setpoint, ...]
    polling: Polling = Polling()
    sunspec_models: tuple[int, ...] = ()
    unsourced: tuple[str, ...] = ()
    mqtt: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, float] = field(default_factory=dict)  # simulator starting values per point

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"{self.key}: no point {name!r}")

    def setpoint(self, name: str) -> Setpoint:
        for s in self.setpoints:
            if s.name == name or s.signal == name:
                return s
        raise KeyError(f"{self.key}: no setpoint {name!r}")

    def signal_points(self) -> list[Point]:
        return [p for p in self.points if p.signal]


def signal_factor(unit: str, signal_unit: str, where: str) -> float:
    """Multiplier from a point's engineering unit into its nature signal's unit."""
    try:
        target, mult = _UNIT_TO_SIGNAL[unit]
    except KeyError:
        raise ProfileError(f"{where}: unit {unit!r} cannot feed a nature signal") from None
    if target != signal_unit:
        raise ProfileError(f"{where}: unit {unit!r} does not convert to the signal's unit {signal_unit!r}")
    return mult


@cache
def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _sentinels(raw: dict[str, Any], dtype: str, style: str) -> frozenset[int]:
    out: set[int] = set()
    if style == "sunspec" and dtype in SUNSPEC_SENTINELS:
        out.add(SUNSPEC_SENTINELS[dtype])
    elif style == "dse" and dtype in ("uint16", "int16", "uint32", "int32"):
        # DSE GenComm: raw -1..-8 masked to the type mean unimplemented / over / under range / fault
        top = {"uint16": 0xFFFF, "int16": 0x7FFF, "uint32": 0xFFFFFFFF, "int32": 0x7FFFFFFF}[dtype]
        out.update(top - k for k in range(8))
    out.update(int(s) for s in raw.get("sentinels", []))
    return frozenset(out)


def parse_profile(data: Any, key: str, path: Path) -> Profile:
    """Validate a parsed YAML document and build a Profile. Raises ProfileError."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
            lines.append(f"{path}: {loc or '(top level)'}: {e.message}")
        raise ProfileError("\n".join(lines))
    nature = Nature(data["nature"])
    style = data.get("sentinel_style", "none")
    default_words: WordOrder = data.get("word_order", "big")
    points: list[Point] = []
    for i, p in enumerate(data.get("points", [])):
        where = f"{path}: points[{i}] ({p['name']})"
        if p.get("signal"):
            try:
                spec = signal_spec(nature, p["signal"])
            except KeyError as exc:
                raise ProfileError(f"{where}: {exc.args[0]}") from None
            signal_factor(p.get("unit", ""), spec.unit, where)
        vmap = p.get("map")
        points.append(
            Point(
                name=p["name"],
                table=p.get("table", "holding"),
                address=int(p["address"]),
                dtype=p["type"],
                words=p.get("words", default_words),
                length=p.get("length"),
                scale=float(p.get("scale", 1.0)),
                scale_sf=p.get("scale_sf"),
                unit=p.get("unit", ""),
                signal=p.get("signal"),
                sign=float(p.get("sign", 1)),
                sentinels=_sentinels(p, p["type"], p.get("sentinel_style", style)),
                value_map={int(k): float(v) for k, v in vmap.items()} if vmap else None,
                valid_min=p.get("valid_min"),
                valid_max=p.get("valid_max"),
            )
        )
    names = {p.name for p in points}
    if len(names) != len(points):
        raise ProfileError(f"{path}: points: duplicate point names")
    for p in points:
        if p.scale_sf and p.scale_sf not in names:
            raise ProfileError(f"{path}: point {p.name}: scale_sf {p.scale_sf!r} is not a point")
        if p.scale_sf and next(q for q in points if q.name == p.scale_sf).dtype != "sunssf":
            raise ProfileError(f"{path}: point {p.name}: scale_sf {p.scale_sf!r} is not of type sunssf")
    _check_overlaps(points, path)
    setpoints: list[Setpoint] = []
    for i, s in enumerate(data.get("setpoints", [])):
        where = f"{path}: setpoints[{i}] ({s['name']})"
        if s.get("signal"):
            try:
                spec = signal_spec(nature, s["signal"])
            except KeyError as exc:
                raise ProfileError(f"{where}: {exc.args[0]}") from None
            if not spec.writable:
                raise ProfileError(f"{where}: signal {s['signal']!r} is not writable")
            signal_factor(s.get("unit", ""), spec.unit, where)
        lo, hi = (float(x) for x in s["range"])
        if lo > hi:
            raise ProfileError(f"{where}: range: min {lo:g} > max {hi:g}")
        if s.get("readback") and s["readback"] not in names:
            raise ProfileError(f"{where}: readback {s['readback']!r} is not a point")
        if s.get("scale_sf") and s["scale_sf"] not in names:
            raise ProfileError(f"{where}: scale_sf {s['scale_sf']!r} is not a point")
        vmap = s.get("map")
        setpoints.append(
            Setpoint(
                name=s["name"],
                table=s.get("table", "holding"),
                address=int(s["address"]),
                dtype=s["type"],
                signal=s.get("signal"),
                words=s.get("words", default_words),
                scale=float(s.get("scale", 1.0)),
                scale_sf=s.get("scale_sf"),
                unit=s.get("unit", ""),
                sign=float(s.get("sign", 1)),
                range_min=lo,
                range_max=hi,
                write=s.get("write", "fc16"),
                readback=s.get("readback"),
                keepalive_s=s.get("keepalive_s"),
                complement=bool(s.get("complement", False)),
                value_map={float(k): int(v) for k, v in vmap.items()} if vmap else None,
                after_writes=tuple(
                    (int(w["address"]), tuple(int(r) for r in w["registers"])) for w in s.get("after_writes", [])
                ),
            )
        )
    polling = data.get("polling", {})
    return Profile(
        key=key,
        path=path,
        vendor=data["vendor"],
        model=data["model"],
        nature=nature,
        protocol=data.get("protocol", "modbus"),
        points=tuple(points),
        setpoints=tuple(setpoints),
        polling=Polling(
            max_registers=int(polling.get("max_registers", 125)),
            max_hole=int(polling.get("max_hole", 16)),
            min_gap_ms=float(polling.get("min_gap_ms", 0.0)),
        ),
        sunspec_models=tuple(data.get("sunspec_models", [])),
        unsourced=tuple(data.get("unsourced", [])),
        mqtt=dict(data.get("mqtt", {})),
        defaults={str(k): float(v) for k, v in data.get("defaults", {}).items()},
    )


def _check_overlaps(points: list[Point], path: Path) -> None:
    by_table: dict[str, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table, pts in by_table.items():
        pts.sort(key=lambda p: p.address)
        for a, b in itertools.pairwise(pts):
            if b.address == a.address and b.count == a.count and b.dtype == a.dtype:
                continue  # an alias: the same register read into another signal (e.g. state code)
            if b.address < a.end:
                raise ProfileError(
                    f"{path}: points {a.name} ({table} {a.address}..{a.end - 1}) and "
                    f"{b.name} ({b.address}) overlap"
                )


def profile_path(key: str, root: Path = PROFILE_ROOT) -> Path:
    if ".." in key.split("/") or key.startswith("/"):
        raise ProfileError(f"profile name {key!r} must be '<vendor>/<model>'")
    return root / f"{key}.yaml"


def load_profile(key: str, root: Path | None = None) -> Profile:
    """Load ``<vendor>/<model>`` from the profile library (or ``root``)."""
    path = profile_path(key, root or PROFILE_ROOT)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"profile {key!r}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    return parse_profile(data, key, path)


def list_profiles(root: Path | None = None) -> list[str]:
    base = root or PROFILE_ROOT
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.glob("*/*.yaml"))
