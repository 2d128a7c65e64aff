"""InfluxDB line protocol encoding.

One point is one line: ``measurement,tag=v,... field=v,... <ns>``. Escaping follows the InfluxDB
v2 line-protocol reference (the same table the official ``influxdb-client`` uses, plus backslashes
in names so a value ending in ``\\`` cannot swallow the following separator):

- measurement: ``,`` and space;
- tag keys, tag values, field keys: ``,``, ``=`` and space;
- string field values: ``"`` and ``\\``;
- newlines, tabs and carriage returns are written as ``\\n``, ``\\t``, ``\\r`` (a raw newline would
  end the line).

Tags are sorted by key (InfluxDB's canonical series key order), fields by key, so the same point
always encodes to the same bytes: a re-send is byte-identical and therefore idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FieldValue = float | int | bool | str

_ESC_MEASUREMENT = str.maketrans(
    {"\\": "\\\\", ",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESC_KEY = str.maketrans(
    {"\\": "\\\\", ",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESC_STRING = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": r"\n", "\r": r"\r"})


def escape_measurement(name: str) -> str:
    return name.translate(_ESC_MEASUREMENT)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    return name.translate(_ESC_KEY)


def format_tags(tags: Mapping[str, str]) -> str:
    """``,k=v,k=v`` sorted by key; empty keys or values are left out (line protocol forbids them)."""
    return "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if k and v)


def format_field_value(value: FieldValue) -> str | None:
    """One field value in line-protocol syntax; ``None`` for a value that must not be written."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return repr(value)
    if isinstance(value, str):
        return '"' + value.translate(_ESC_STRING) + '"'
    return None


def format_fields(fields: Mapping[str, FieldValue]) -> tuple[str, int]:
    """(``k=v,k=v`` sorted by key, number of fields left out as non-finite or of unknown type)."""
    parts: list[str] = []
    dropped = 0
    for key in sorted(fields):
        text = format_field_value(fields[key]) if key else None
        if text is None:
            dropped += 1
            continue
        parts.append(f"{escape_key(key)}={text}")
    return ",".join(parts), dropped


def ts_ns(ts_s: float) -> int:
    """Seconds (float, Unix epoch) to integer nanoseconds, rounded to the microsecond.

    A float near 1.7e9 s resolves ~0.24 us, so digits below the microsecond are noise; rounding
    there gives clean, deterministic timestamps (the same float always maps to the same ns).
    """
    return round(float(ts_s) * 1e6) * 1000


def format_line(
    measurement: str, tags_text: str, fields: Mapping[str, FieldValue], ts_s: float
) -> tuple[str | None, int]:
    """(line or ``None`` when no field is left, dropped field count). ``tags_text`` from ``format_tags``."""
    fields_text, dropped = format_fields(fields)
    if not fields_text or not measurement:
        return None, dropped
    return f"{escape_measurement(measurement)}{tags_text} {fields_text} {ts_ns(ts_s)}", dropped
