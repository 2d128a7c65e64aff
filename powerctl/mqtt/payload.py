"""Decoding device payloads received over MQTT into one number.

Formats (``format`` in a profile's ``mqtt`` section or per signal):

- ``plain``: the payload is a number (``"230.5"``), or ``true``/``false``/``on``/``off``;
- ``json``: a JSON document and a dotted ``path`` to the value (``"a.b.0.c"``, list indices allowed);
- ``venus``: Victron Venus OS ``{"value": <v>}``; ``{"value": null}`` = the value is invalid; an empty
  payload = the device has gone (victronenergy/dbus-flashmq README);
- ``tasmota``: Tasmota ``tele/<topic>/SENSOR`` JSON, path inside it (default ``ENERGY.Power``);
- ``shelly``: Shelly Gen2+ component status JSON (``<prefix>/status/em1:0``), path default ``act_power``.

``decode`` never raises for bad input: it returns a ``Decoded`` whose ``value`` is ``None`` and whose
``problem`` says why (``gone`` when the device has announced its departure).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

FORMATS = ("plain", "json", "venus", "tasmota", "shelly")
DEFAULT_PATH = {"tasmota": "ENERGY.Power", "shelly": "act_power"}
_WORDS = {"true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0, "online": 1.0, "offline": 0.0}


@dataclass(frozen=True, slots=True)
class Decoded:
    value: float | None
    problem: str = ""  # "" when value is good
    gone: bool = False  # the device said it is gone (Venus empty payload)


def _number(v: Any, where: str) -> Decoded:
    if isinstance(v, bool):
        return Decoded(1.0 if v else 0.0)
    if isinstance(v, int | float):
        try:
            f = float(v)
        except OverflowError:  # a JSON integer beyond float range (1e309 as digits)
            return Decoded(None, f"{where}: number out of range")
        return Decoded(f) if math.isfinite(f) else Decoded(None, f"{where}: not finite ({v!r})")
    if isinstance(v, str):
        word = _WORDS.get(v.strip().lower())
        if word is not None:
            return Decoded(word)
        try:
            f = float(v)
        except ValueError:
            return Decoded(None, f"{where}: not a number ({v[:40]!r})")
        return Decoded(f) if math.isfinite(f) else Decoded(None, f"{where}: not finite ({v!r})")
    if v is None:
        return Decoded(None, f"{where}: null")
    return Decoded(None, f"{where}: not a number ({type(v).__name__})")


def json_path(doc: Any, path: str) -> Any:
    """Follow a dotted path through dicts and lists; KeyError naming the missing step."""
    cur = doc
    for step in path.split(".") if path else []:
        if isinstance(cur, dict) and step in cur:
            cur = cur[step]
        elif isinstance(cur, list) and step.lstrip("-").isdigit() and -len(cur) <= int(step) < len(cur):
            cur = cur[int(step)]
        else:
            raise KeyError(step)
    return cur


def decode(fmt: str, payload: bytes, path: str | None = None) -> Decoded:
    """One payload in ``fmt`` to a number (see module docstring)."""
    if fmt == "venus" and not payload.strip():
        return Decoded(None, "device has gone (empty payload)", gone=True)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Decoded(None, "payload is not UTF-8")
    if fmt == "plain":
        return _number(text.strip(), "plain payload")
    if fmt not in FORMATS:
        return Decoded(None, f"unknown payload format {fmt!r}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return Decoded(None, f"not JSON: {exc.msg} at {exc.pos}")
    except RecursionError:
        return Decoded(None, "not JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer over Python's 4300-digit conversion limit
        return Decoded(None, f"not JSON: {str(exc)[:60]}")
    if fmt == "venus":
        if not isinstance(doc, dict) or "value" not in doc:
            return Decoded(None, 'venus payload without "value"')
        if doc["value"] is None:
            return Decoded(None, "device reports the value invalid (null)")
        return _number(doc["value"], "value")
    p = path if path is not None else DEFAULT_PATH.get(fmt, "")
    try:
        v = json_path(doc, p)
    except KeyError as exc:
        return Decoded(None, f"path {p!r}: no {exc.args[0]!r}")
    return _number(v, f"path {p!r}")
