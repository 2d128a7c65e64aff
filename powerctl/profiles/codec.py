"""Register codec: raw 16-bit registers <-> numbers, pure functions.

Word order is per value (``big`` = most significant word first, as SunSpec; ``little`` = least
significant word first, as Sungrow and Datakom). Bytes inside a word are always big-endian.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

WordOrder = Literal["big", "little"]

# type -> (registers, struct format for the big-endian byte string)
_TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "sunssf": (1, ">h"),
    "enum16": (1, ">H"),
    "bitfield16": (1, ">H"),
    "acc16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "enum32": (2, ">I"),
    "bitfield32": (2, ">I"),
    "acc32": (2, ">I"),
    "float32": (2, ">f"),
    "int64": (4, ">q"),
    "uint64": (4, ">Q"),
    "acc64": (4, ">Q"),
    "float64": (4, ">d"),
}

INTEGER_TYPES = frozenset(t for t, (_, f) in _TYPES.items() if f[-1] not in "fd")

# SunSpec "not implemented" values per type (pysunspec2 mb.py), as raw unsigned register values.
SUNSPEC_SENTINELS: dict[str, int] = {
    "int16": 0x8000,
    "sunssf": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "int32": 0x80000000,
    "uint32": 0xFFFFFFFF,
    "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF,
    "int64": 0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF,
    "float32": 0x7FC00000,
    "float64": 0x7FF8000000000000,
}


class CodecError(ValueError):
    """Registers that cannot be decoded (wrong length, bad type)."""


def register_count(dtype: str, length: int | None = None) -> int:
    """Registers a value of ``dtype`` occupies (``string`` needs ``length`` in registers)."""
    if dtype == "string":
        if not length or length < 1:
            raise CodecError("string points need a length in registers")
        return length
    try:
        return _TYPES[dtype][0]
    except KeyError:
        raise CodecError(f"unknown data type {dtype!r}") from None


def _ordered(regs: list[int], word_order: WordOrder) -> list[int]:
    return list(reversed(regs)) if word_order == "little" else list(regs)


def raw_unsigned(regs: list[int], word_order: WordOrder = "big") -> int:
    """The registers as one unsigned integer, most significant word first after ordering."""
    out = 0
    for r in _ordered(regs, word_order):
        out = (out << 16) | (r & 0xFFFF)
    return out


def decode(regs: list[int], dtype: str, word_order: WordOrder = "big") -> int | float | str:
    """Decode registers into an int, float or str. Raises CodecError on a length mismatch."""
    if dtype == "string":
        data = b"".join(struct.pack(">H", r & 0xFFFF) for r in regs)
        return data.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    n, fmt = _TYPES.get(dtype, (0, ""))
    if not n:
        raise CodecError(f"unknown data type {dtype!r}")
    if len(regs) != n:
        raise CodecError(f"{dtype} needs {n} registers, got {len(regs)}")
    for r in regs:
        if not 0 <= r <= 0xFFFF:
            raise CodecError(f"register value {r} outside 0..65535")
    data = b"".join(struct.pack(">H", r) for r in _ordered(regs, word_order))
    value: int | float = struct.unpack(fmt, data)[0]
    return value


def encode(value: int | float | str, dtype: str, word_order: WordOrder = "big", length: int | None = None) -> list[int]:
    """Encode a raw value (already scaled to register units) into registers."""
    if dtype == "string":
        n = register_count(dtype, length)
        data = str(value).encode("latin-1")[: 2 * n].ljust(2 * n, b"\x00")
        return [struct.unpack(">H", data[i : i + 2])[0] for i in range(0, 2 * n, 2)]
    n, fmt = _TYPES.get(dtype, (0, ""))
    if not n:
        raise CodecError(f"unknown data type {dtype!r}")
    if fmt[-1] in "fd":
        data = struct.pack(fmt, float(value))
    else:
        iv = int(value)
        try:
            data = struct.pack(fmt, iv)
        except struct.error:
            raise CodecError(f"{value!r} does not fit in {dtype}") from None
    regs = [struct.unpack(">H", data[i : i + 2])[0] for i in range(0, len(data), 2)]
    return _ordered(regs, word_order)


def is_sentinel(regs: list[int], dtype: str, sentinels: frozenset[int], word_order: WordOrder = "big") -> bool:
    """True when the raw register pattern is one of the 'not implemented' markers."""
    if not sentinels or dtype == "string":
        return False
    return raw_unsigned(regs, word_order) in sentinels


def scaled(raw: int | float, scale: float, sf_exp: int | None = None) -> float:
    """Engineering value = raw x scale x 10^sf."""
    v = float(raw) * scale
    if sf_exp is not None:
        v *= 10.0**sf_exp
    return v


def unscaled(value: float, scale: float, sf_exp: int | None, dtype: str) -> int | float:
    """Raw register value for an engineering value (rounded for integer types)."""
    v = value / scale
    if sf_exp is not None:
        v /= 10.0**sf_exp
    if dtype in INTEGER_TYPES:
        if not math.isfinite(v):
            raise CodecError(f"cannot encode {value!r} as {dtype}")
        return round(v)
    return v
