"""SunSpec model definitions: the official JSON (sunspec/models) turned into register layouts.

The JSON files ship in ``device_profiles/sunspec/models/`` (Apache-2.0, see PROVENANCE.txt there).
A point's offset is the sum of the sizes of the points before it (ID at 0, L at 1); nested groups
follow the fixed points in order and repeat ``count`` times (an int, or the name of a point whose
value the device reports). Offsets are relative to the model's ID register.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from powerctl import device_profiles

MODELS_DIR = Path(device_profiles.__file__).parent / "sunspec" / "models"

END_MODEL_ID = 0xFFFF


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """One point of a model at a fixed offset from the model's ID register."""

    name: str  # dotted for points inside groups: "PFWInj.PF", repeated groups "Crv[1].Pt[2].V"
    offset: int
    dtype: str
    size: int
    sf: str | int | None = None  # dotted name of the sunssf point, or a constant exponent
    units: str = ""
    access: str = "R"
    mandatory: bool = False
    static: bool = False
    label: str = ""
    symbols: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A model's definition: id, name, nominal length L and the parsed JSON."""

    id: int
    name: str
    label: str
    length: int  # L as defined by the JSON (registers after ID and L) for one group instance
    raw: dict[str, Any]

    def layout(self, count_of: Callable[[str], int] | None = None) -> list[ModelPoint]:
        """Points with offsets; ``count_of(point_name)`` resolves repeat counts given by a point."""
        return layout(self.raw["group"], count_of)

    def point(self, name: str) -> ModelPoint:
        for p in self.layout():
            if p.name == name:
                return p
        raise KeyError(f"SunSpec model {self.id} has no point {name!r}")


def _sf_name(sf: Any, prefix: str, scope: list[tuple[str, set[str]]]) -> str | int | None:
    """Resolve a point's ``sf`` to the dotted name of a sunssf point (same group or a parent)."""
    if sf is None:
        return None
    if isinstance(sf, int):
        return sf
    try:
        return int(sf)
    except ValueError:
        pass
    for group_prefix, names in reversed(scope):
        if sf in names:
            return group_prefix + sf
    return prefix + sf  # not found: keep the name; decoding reports it unavailable


def layout(group: dict[str, Any], count_of: Callable[[str], int] | None = None) -> list[ModelPoint]:
    """Flatten a model's top-level group into points with offsets (see module docstring)."""
    out: list[ModelPoint] = []

    def walk(g: dict[str, Any], off: int, prefix: str, scope: list[tuple[str, set[str]]]) -> int:
        names = {p["name"] for p in g.get("points", [])}
        scope = [*scope, (prefix, names)]
        for p in g.get("points", []):
            out.append(
                ModelPoint(
                    name=prefix + p["name"],
                    offset=off,
                    dtype=p["type"],
                    size=int(p["size"]),
                    sf=_sf_name(p.get("sf"), prefix, scope),
                    units=str(p.get("units", "")),
                    access=str(p.get("access", "R")),
                    mandatory=p.get("mandatory") == "M",
                    static=p.get("static") == "S",
                    label=str(p.get("label", "")),
                    symbols=tuple((str(s["name"]), int(s["value"])) for s in p.get("symbols", [])),
                )
            )
            off += int(p["size"])
        for sub in g.get("groups", []):
            count = sub.get("count", 1)
            if isinstance(count, str):
                count = count_of(prefix + count) if count_of else 1
            count = int(count)
            for i in range(count):
                name = sub["name"] if count == 1 and "count" not in sub else f"{sub['name']}[{i + 1}]"
                off = walk(sub, off, f"{prefix}{name}.", scope)
        return off

    walk(group, 0, "", [])
    return out


@cache
def load_model(model_id: int, models_dir: Path = MODELS_DIR) -> ModelDef | None:
    """The shipped definition of ``model_id``, or None when we do not ship it."""
    path = models_dir / f"model_{model_id}.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    pts = layout(raw["group"])
    length = (pts[-1].offset + pts[-1].size - 2) if pts else 0
    return ModelDef(
        id=int(raw["id"]),
        name=str(raw["group"]["name"]),
        label=str(raw["group"].get("label", raw["group"]["name"])),
        length=length,
        raw=raw,
    )


def shipped_model_ids(models_dir: Path = MODELS_DIR) -> list[int]:
    return sorted(int(p.stem.split("_", 1)[1]) for p in models_dir.glob("model_*.json"))
