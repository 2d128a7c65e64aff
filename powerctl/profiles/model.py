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
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from powerctl import device_profiles
from powerctl.natures import Nature, signal_spec
from powerctl.profiles.codec import INTEGER_TYPES, SUNSPEC_SENTINELS, WordOrder, register_count
from powerctl.profiles.sequences import WriteSequence, check_sequences, parse_sequences

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
    "V": ("V", 1.0),
    "Hz": ("Hz", 1.0),
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
    sunspec: str | None = None  # "<model id>.<point>": where the official model definition has it
    unsourced: bool = False  # a register fact not found in a public source (see Profile.unsourced)

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
    sunspec: str | None = None
    unsourced: bool = False
    after_write_refs: tuple[str | None, ...] = ()  # SunSpec references of after_writes, for relocation
    unit_id: int | None = None  # another unit behind the same gateway (Victron VE.Bus); None = the device's
    site_address: bool = False  # the address depends on the device's configuration: the site names it

    @property
    def count(self) -> int:
        return register_count(self.dtype) * (2 if self.complement else 1)


@dataclass(frozen=True, slots=True)
class Polling:
    max_registers: int = 125
    max_hole: int = 16  # registers we may read across between points (0 = never read holes)
    min_gap_ms: float = 0.0  # quiet time between two requests
    connect_delay_ms: float = 0.0  # wait after connecting before the first request (Huawei)


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
    defaults: dict[str, float | str] = field(default_factory=dict)  # simulator starting values per point
    default_unit_id: int | None = None
    description: str = ""
    sources: tuple[str, ...] = ()
    sequences: dict[str, WriteSequence] = field(default_factory=dict)  # signal -> ordered writes

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

    def supports(self, signal: str) -> bool:
        """Whether the profile can take ``signal``: a setpoint feeds it or a sequence maps it."""
        return signal in self.sequences or any(sp.signal == signal for sp in self.setpoints)

    def for_site(self, registers: Mapping[str, int], where: str) -> Profile:
        """This profile at one site: ``registers`` (point or setpoint name -> PDU address, the
        device entry's ``registers``) moves those registers; a ``site_address`` setpoint the site
        does not name is dropped, with any sequence that writes it, so it is never written at a
        guessed address. ProfileError names ``where`` (the device's field path) and the unknown name."""
        from dataclasses import replace

        if not registers and not any(s.site_address for s in self.setpoints):
            return self
        known = {p.name for p in self.points} | {s.name for s in self.setpoints}
        for name, address in registers.items():
            if name not in known:
                raise ProfileError(f"{where}.registers.{name}: profile {self.key} has no point or setpoint {name!r}"
                                   f" (it has: {', '.join(sorted(known))})")
            if not 0 <= int(address) <= 65535:
                raise ProfileError(f"{where}.registers.{name}: address {address} is not 0..65535")
        points = tuple(replace(p, address=int(registers[p.name])) if p.name in registers else p for p in self.points)
        setpoints = tuple(
            replace(s, address=int(registers[s.name])) if s.name in registers else s
            for s in self.setpoints
            if not s.site_address or s.name in registers
        )
        kept = {s.name for s in setpoints}
        sequences = {
            sig: seq for sig, seq in self.sequences.items()
            if all(st.setpoint in kept for st in seq.steps) and all(name in kept for name, _ in seq.release)
        }
        return replace(self, points=points, setpoints=setpoints, sequences=sequences)

    def relocated(self, model_bases: dict[int, int]) -> Profile:
        """This profile with SunSpec points moved to where discovery found their models.

        ``model_bases`` maps model id -> address of its ID register (``Chain.bases()``). Points
        and setpoints without a ``sunspec`` reference, or whose model was not found, stay put.
        """
        from dataclasses import replace

        from powerctl.sunspec.models import load_model

        def moved(ref: str | None, address: int) -> int:
            if not ref:
                return address
            model_s, name = ref.split(".", 1)
            md = load_model(int(model_s))
            if md is None or int(model_s) not in model_bases:
                return address
            return model_bases[int(model_s)] + md.point(name).offset

        points = tuple(replace(p, address=moved(p.sunspec, p.address)) for p in self.points)
        setpoints = tuple(
            replace(
                s,
                address=moved(s.sunspec, s.address),
                after_writes=tuple(
                    (moved(ref, addr), regs)
                    for (addr, regs), ref in zip(s.after_writes, s.after_write_refs or [None] * len(s.after_writes), strict=True)
                ),
            )
            for s in self.setpoints
        )
        return replace(self, points=points, setpoints=setpoints)


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


def _schema_errors(data: Any, path: Path) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
            lines.append(f"{path}: {loc or '(top level)'}: {e.message}")
        raise ProfileError("\n".join(lines))


def _check_signal(nature: Nature, raw: dict[str, Any], where: str, *, writable: bool) -> None:
    try:
        spec = signal_spec(nature, raw["signal"])
    except KeyError as exc:
        raise ProfileError(f"{where}: {exc.args[0]}") from None
    if writable and not spec.writable:
        raise ProfileError(f"{where}: signal {raw['signal']!r} is not writable")
    if raw["type"] == "string":
        raise ProfileError(f"{where}: a string cannot feed the numeric signal {raw['signal']!r}")
    if "map" not in raw:
        signal_factor(raw.get("unit", ""), spec.unit, where)


def _check_register_kind(raw: dict[str, Any], where: str, *, setpoint: bool) -> None:
    """Table, type, write function and map must agree (a coil is one bit, FC6 one register)."""
    table = raw.get("table", "holding")
    dtype = raw["type"]
    if table == "coil" and dtype != "uint16":
        raise ProfileError(f"{where}: coil entries are single bits: type must be uint16, not {dtype}")
    if "map" in raw and dtype not in INTEGER_TYPES:
        raise ProfileError(f"{where}: map needs an integer type, not {dtype}")
    if "map" in raw and (raw.get("scale", 1) != 1 or raw.get("scale_sf")):
        raise ProfileError(f"{where}: a mapped code cannot also be scaled")
    if not setpoint:
        return
    write = raw.get("write", "fc5" if table == "coil" else "fc16")
    if (table == "coil") != (write == "fc5"):
        raise ProfileError(f"{where}: write {write} does not match table {table} (coils take fc5, registers fc6/fc16)")
    if write == "fc6" and (register_count(dtype) != 1 or raw.get("complement")):
        raise ProfileError(f"{where}: fc6 writes one register; {dtype} needs fc16")


def _check_range_fits(sp: Setpoint, where: str) -> None:
    """The range, once scaled, must be representable by the register type (no silent wrap)."""
    if sp.value_map is not None or sp.scale_sf or sp.dtype not in INTEGER_TYPES:
        return
    bits = 16 * register_count(sp.dtype)
    signed = sp.dtype.startswith("int") or sp.dtype == "sunssf"
    lo_raw, hi_raw = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    for v in (sp.range_min, sp.range_max):
        raw = round(v / sp.scale)
        if not lo_raw <= raw <= hi_raw:
            raise ProfileError(f"{where}: range end {v:g} {sp.unit} does not fit in {sp.dtype} (scale {sp.scale:g})")


def _check_sunspec_ref(
    ref: str, raw: dict[str, Any], address: int, std_bases: dict[int, int], refs: dict[str, str | None], where: str
) -> None:
    """A point that names its SunSpec definition must match it (type, size, scale factor, address)."""
    from powerctl.sunspec.models import load_model

    model_s, _, name = ref.partition(".")
    md = load_model(int(model_s))
    if md is None:
        raise ProfileError(f"{where}: sunspec {ref!r}: no definition of model {model_s} is shipped")
    try:
        mp = md.point(name)
    except KeyError as exc:
        raise ProfileError(f"{where}: sunspec {ref!r}: {exc.args[0]}") from None
    dtype = raw["type"]
    if dtype != mp.dtype and not (dtype == "uint16" and mp.dtype in ("enum16", "bitfield16", "pad")):
        raise ProfileError(f"{where}: sunspec {ref!r} is {mp.dtype}, profile says {dtype}")
    if dtype == "string" and raw.get("length") != mp.size:
        raise ProfileError(f"{where}: sunspec {ref!r} is {mp.size} registers long")
    if isinstance(mp.sf, str) and refs.get(raw.get("scale_sf", "")) != f"{model_s}.{mp.sf}":
        raise ProfileError(
            f"{where}: sunspec {ref!r} scales by {model_s}.{mp.sf}; scale_sf {raw.get('scale_sf')!r} is not that point"
        )
    if int(model_s) in std_bases and address != std_bases[int(model_s)] + mp.offset:
        raise ProfileError(
            f"{where}: sunspec {ref!r} sits at {std_bases[int(model_s)] + mp.offset} in the standard chain, "
            f"profile says {address}"
        )


def _standard_bases(data: dict[str, Any], path: Path) -> dict[int, int]:
    """Model start addresses of ``sunspec_models`` laid out from the SunS marker with JSON lengths."""
    from powerctl.sunspec.models import load_model

    models = data.get("sunspec_models", [])
    if not models:
        return {}
    marker = next((p for p in data.get("points", []) if p["name"] == "SunS"), None)
    if marker is None:
        raise ProfileError(f"{path}: sunspec_models: needs a point named SunS (the marker) to place the models")
    addr = int(marker["address"]) + 2
    out: dict[int, int] = {}
    for mid in models:
        md = load_model(mid)
        if md is None:
            raise ProfileError(f"{path}: sunspec_models: no definition of model {mid} is shipped")
        out.setdefault(mid, addr)
        addr += md.length + 2
    return out


def _point(p: dict[str, Any], default_words: WordOrder, style: str) -> Point:
    vmap = p.get("map")
    return Point(
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
        sunspec=p.get("sunspec"),
        unsourced=bool(p.get("unsourced", False)),
    )


def _setpoint(s: dict[str, Any], default_words: WordOrder) -> Setpoint:
    lo, hi = (float(x) for x in s["range"])
    vmap = s.get("map")
    table = s.get("table", "holding")
    return Setpoint(
        name=s["name"],
        table=table,
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
        write=s.get("write", "fc5" if table == "coil" else "fc16"),
        readback=s.get("readback"),
        keepalive_s=s.get("keepalive_s"),
        complement=bool(s.get("complement", False)),
        value_map={float(k): int(v) for k, v in vmap.items()} if vmap else None,
        after_writes=tuple(
            (int(w["address"]), tuple(int(r) for r in w["registers"])) for w in s.get("after_writes", [])
        ),
        sunspec=s.get("sunspec"),
        unsourced=bool(s.get("unsourced", False)),
        after_write_refs=tuple(w.get("sunspec") for w in s.get("after_writes", [])),
        unit_id=s.get("unit_id"),
        site_address=bool(s.get("site_address", False)),
    )


def _check_points(points: list[Point], raws: list[dict[str, Any]], data: dict[str, Any], path: Path) -> None:
    nature = Nature(data["nature"])
    by_name = {p.name: p for p in points}
    if len(by_name) != len(points):
        dup = sorted({p.name for p in points if sum(q.name == p.name for q in points) > 1})
        raise ProfileError(f"{path}: points: duplicate point names {dup}")
    std = _standard_bases(data, path)
    for i, (p, raw) in enumerate(zip(points, raws, strict=True)):
        where = f"{path}: points[{i}] ({p.name})"
        _check_register_kind(raw, where, setpoint=False)
        if p.signal:
            _check_signal(nature, raw, where, writable=False)
        if p.scale_sf:
            sf = by_name.get(p.scale_sf)
            if sf is None or sf.dtype != "sunssf":
                raise ProfileError(f"{where}: scale_sf {p.scale_sf!r} is not a sunssf point of this profile")
        bits = 16 * p.count
        bad = [s for s in p.sentinels if s >= 2**bits]
        if bad:
            raise ProfileError(f"{where}: sentinel {bad[0]:#x} does not fit in {p.dtype}")
        if p.valid_min is not None and p.valid_max is not None and p.valid_min > p.valid_max:
            raise ProfileError(f"{where}: valid_min {p.valid_min:g} > valid_max {p.valid_max:g}")
        if p.sunspec:
            _check_sunspec_ref(p.sunspec, raw, p.address, std, {q.name: q.sunspec for q in points}, where)
    mx = int(data.get("polling", {}).get("max_registers", 125))
    big = [p for p in points if p.count > mx]
    if big:
        raise ProfileError(f"{path}: polling.max_registers {mx} is smaller than point {big[0].name} ({big[0].count} registers)")
    for name in data.get("defaults", {}):
        if name not in by_name:
            raise ProfileError(f"{path}: defaults: {name!r} is not a point")
    _check_overlaps(points, path)


def _check_setpoints(
    setpoints: list[Setpoint], raws: list[dict[str, Any]], points: list[Point], data: dict[str, Any], path: Path
) -> None:
    nature = Nature(data["nature"])
    by_name = {p.name: p for p in points}
    std = _standard_bases(data, path)
    names = [s.name for s in setpoints]
    if len(set(names)) != len(names):
        raise ProfileError(f"{path}: setpoints: duplicate setpoint names")
    signals = [s.signal for s in setpoints if s.signal]
    if len(set(signals)) != len(signals):
        raise ProfileError(f"{path}: setpoints: two setpoints feed the same signal")
    for i, (sp, raw) in enumerate(zip(setpoints, raws, strict=True)):
        where = f"{path}: setpoints[{i}] ({sp.name})"
        _check_register_kind(raw, where, setpoint=True)
        if sp.signal:
            _check_signal(nature, raw, where, writable=True)
        if sp.range_min > sp.range_max:
            raise ProfileError(f"{where}: range: min {sp.range_min:g} > max {sp.range_max:g}")
        if sp.value_map is not None and not all(sp.range_min <= k <= sp.range_max for k in sp.value_map):
            raise ProfileError(f"{where}: map keys must lie inside range")
        if sp.scale_sf:
            sf = by_name.get(sp.scale_sf)
            if sf is None or sf.dtype != "sunssf":
                raise ProfileError(f"{where}: scale_sf {sp.scale_sf!r} is not a sunssf point of this profile")
        if sp.readback and sp.unit_id is not None:
            raise ProfileError(f"{where}: readback points live on the device's unit, not unit {sp.unit_id}")
        if sp.readback:
            rb = by_name.get(sp.readback)
            if rb is None:
                raise ProfileError(f"{where}: readback {sp.readback!r} is not a point")
            if sp.value_map is None and rb.value_map is None and rb.unit != sp.unit:
                raise ProfileError(f"{where}: readback {rb.name} is in {rb.unit!r}, the setpoint in {sp.unit!r}")
        _check_range_fits(sp, where)
        if sp.sunspec:
            _check_sunspec_ref(sp.sunspec, raw, sp.address, std, {q.name: q.sunspec for q in points}, where)
        for j, w in enumerate(raw.get("after_writes", [])):
            if w.get("sunspec"):
                wraw = {"type": "uint16", "scale_sf": None}
                _check_sunspec_ref(w["sunspec"], wraw, int(w["address"]), std, {}, f"{where}: after_writes[{j}]")
    spans = sorted((s.table, s.address, s.address + s.count, s.name) for s in setpoints)
    for a, b in itertools.pairwise(spans):
        if a[0] == b[0] and b[1] < a[2]:
            raise ProfileError(f"{path}: setpoints {a[3]} and {b[3]} overlap")


def parse_profile(data: Any, key: str, path: Path) -> Profile:
    """Validate a parsed YAML document (schema, then semantics) and build a Profile."""
    _schema_errors(data, path)
    style = data.get("sentinel_style", "none")
    default_words: WordOrder = data.get("word_order", "big")
    raw_points = data.get("points", [])
    points = [_point(p, default_words, style) for p in raw_points]
    _check_points(points, raw_points, data, path)
    raw_sps = data.get("setpoints", [])
    setpoints = [_setpoint(s, default_words) for s in raw_sps]
    _check_setpoints(setpoints, raw_sps, points, data, path)
    polling = data.get("polling", {})
    unsourced = list(data.get("unsourced", []))
    flagged = [p.name for p in points if p.unsourced] + [s.name for s in setpoints if s.unsourced]
    if flagged and not unsourced:
        raise ProfileError(f"{path}: unsourced: {', '.join(flagged)} are flagged unsourced; say why in the unsourced list")
    profile = Profile(
        key=key,
        path=path,
        vendor=data["vendor"],
        model=data["model"],
        nature=Nature(data["nature"]),
        protocol=data.get("protocol", "modbus"),
        points=tuple(points),
        setpoints=tuple(setpoints),
        polling=Polling(
            max_registers=int(polling.get("max_registers", 125)),
            max_hole=int(polling.get("max_hole", 16)),
            min_gap_ms=float(polling.get("min_gap_ms", 0.0)),
            connect_delay_ms=float(polling.get("connect_delay_ms", 0.0)),
        ),
        sunspec_models=tuple(data.get("sunspec_models", [])),
        unsourced=tuple(unsourced),
        mqtt=dict(data.get("mqtt", {})),
        defaults={str(k): v if isinstance(v, str) else float(v) for k, v in data.get("defaults", {}).items()},
        default_unit_id=data.get("default_unit_id"),
        description=str(data.get("description", "")),
        sources=tuple(data.get("sources", [])),
        sequences=parse_sequences(data.get("sequences", {})),
    )
    check_sequences(profile, str(path))
    return profile


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
