"""Decode one SunSpec model's registers with its official definition.

Rules (the SunSpec Information Model Specification, as sunspec/pysunspec2 does it):
- decode only the points that fit inside the length L the device reports (trust the device);
- per-type "not implemented" sentinels, and a sunssf of 0x8000, give ``None`` (never a number);
- engineering value = raw x 10^sf; the scale factor is read from the same block as the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from powerctl.profiles.codec import SUNSPEC_SENTINELS, CodecError, decode, raw_unsigned
from powerctl.sunspec.models import ModelDef, ModelPoint

# types we decode as numbers with the codec (pad is skipped, strings and addresses handled apart)
_NUMERIC = {
    "int16", "uint16", "acc16", "enum16", "bitfield16", "raw16", "count", "sunssf",
    "int32", "uint32", "acc32", "enum32", "bitfield32", "float32",
    "int64", "uint64", "acc64", "bitfield64", "float64",
}
TYPE_ALIAS = {"raw16": "uint16", "count": "uint16", "bitfield64": "uint64"}


@dataclass(frozen=True, slots=True)
class PointValue:
    """A decoded point: ``value`` is None when not implemented / not trusted (``reason`` says why)."""

    name: str
    value: float | int | str | None
    units: str = ""
    raw: int | str | None = None
    symbol: str | None = None  # enum symbol name (or set bit names for bitfields)
    reason: str = ""


def _sentinel(dtype: str, raw: int) -> bool:
    if dtype in ("acc16", "acc32", "acc64"):
        return False  # acc = 0 is both "nothing yet" and "not implemented": keep the 0
    s = SUNSPEC_SENTINELS.get(TYPE_ALIAS.get(dtype, dtype))
    if dtype == "bitfield64":
        s = 0xFFFFFFFFFFFFFFFF
    return s is not None and raw == s


def _string(regs: list[int]) -> str | None:
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    if not any(data):
        return None
    return data.split(b"\x00", 1)[0].decode("latin-1").strip()


def decode_point(p: ModelPoint, regs: list[int], sfs: dict[str, int | None]) -> PointValue:
    """Decode one point from its registers; ``sfs`` maps sunssf point names to exponents."""
    if p.dtype == "pad":
        return PointValue(p.name, None, reason="pad")
    if p.dtype == "string":
        s = _string(regs)
        return PointValue(p.name, s, raw=s, reason="" if s is not None else "not implemented (all NUL)")
    if p.dtype in ("ipaddr", "ipv6addr", "eui48"):
        raw_int = raw_unsigned(regs)
        blank = raw_int == 0 or (p.dtype == "eui48" and raw_int & 0xFFFFFFFFFFFF == 0xFFFFFFFFFFFF)
        return PointValue(p.name, None if blank else hex(raw_int), raw=raw_int, reason="not implemented" if blank else "")
    if p.dtype not in _NUMERIC:
        return PointValue(p.name, None, reason=f"type {p.dtype} not supported")
    raw_int = raw_unsigned(regs)
    if _sentinel(p.dtype, raw_int):
        return PointValue(p.name, None, p.units, raw=raw_int, reason="not implemented")
    try:
        raw = decode(regs, TYPE_ALIAS.get(p.dtype, p.dtype))
    except CodecError as exc:
        return PointValue(p.name, None, p.units, raw=raw_int, reason=str(exc))
    if isinstance(raw, float) and not math.isfinite(raw):
        return PointValue(p.name, None, p.units, raw=raw_int, reason=f"non-finite float {raw}")
    assert not isinstance(raw, str)
    if p.dtype == "sunssf":
        ok = -10 <= int(raw) <= 10
        return PointValue(p.name, int(raw) if ok else None, raw=raw_int, reason="" if ok else f"scale factor {raw} out of -10..10")
    symbol = None
    if p.symbols and p.dtype.startswith("enum"):
        symbol = next((n for n, v in p.symbols if v == raw), None)
    elif p.symbols and p.dtype.startswith("bitfield"):
        symbol = ",".join(n for n, v in p.symbols if int(raw) >> v & 1) or None
    exp: int | None = None
    if isinstance(p.sf, int):
        exp = p.sf
    elif p.sf is not None:
        exp = sfs.get(p.sf)
        if exp is None:
            return PointValue(p.name, None, p.units, raw=raw_int, reason=f"scale factor {p.sf} not implemented")
    value: float | int = raw if exp is None else float(raw) * 10.0**exp
    if exp is not None and exp >= 0 and isinstance(raw, int):
        value = raw * 10**exp
    return PointValue(p.name, value, p.units, raw=raw_int, symbol=symbol)


def decode_model(model: ModelDef, regs: list[int], length: int | None = None) -> dict[str, PointValue]:
    """Decode a model from its registers starting at its ID register.

    ``length`` is the L the device reported (defaults to ``len(regs) - 2``); points that do not
    fit inside it are left out, as the device does not have them.
    """
    n = len(regs) - 2 if length is None else min(length, len(regs) - 2)
    points = [p for p in model.layout() if p.offset + p.size <= n + 2]
    sfs: dict[str, int | None] = {}
    for p in points:
        if p.dtype == "sunssf":
            sfs[p.name] = decode_point(p, regs[p.offset : p.offset + p.size], {}).value  # type: ignore[assignment]
    return {p.name: decode_point(p, regs[p.offset : p.offset + p.size], sfs) for p in points}
