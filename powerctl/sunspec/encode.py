"""Build SunSpec register images from the official model definitions (simulators, tests).

Values are given in engineering units per point name; scale factors are given as exponents per
sunssf point name. Unset points get their type's "not implemented" value, as a device that lacks
them would report (acc and pad points get 0, strings all NUL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from powerctl.profiles.codec import SUNSPEC_SENTINELS, encode
from powerctl.sunspec.decode import TYPE_ALIAS as _ALIAS
from powerctl.sunspec.discovery import MARKER
from powerctl.sunspec.models import END_MODEL_ID, ModelDef, load_model


def _sentinel_regs(dtype: str, size: int) -> list[int]:
    raw = SUNSPEC_SENTINELS.get(_ALIAS.get(dtype, dtype), 0)
    if dtype == "bitfield64":
        raw = 0xFFFFFFFFFFFFFFFF
    return [(raw >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def encode_model(
    model: ModelDef,
    values: Mapping[str, float | int | str],
    *,
    length: int | None = None,
) -> list[int]:
    """Registers of one model, ID and L first; ``length`` overrides L (and truncates/pads)."""
    points = model.layout()
    regs: list[int] = []
    sfs = {p.name: int(values[p.name]) for p in points if p.dtype == "sunssf" and p.name in values}
    for p in points:
        if p.name == "ID":
            regs.append(model.id)
            continue
        if p.name == "L":
            regs.append(model.length if length is None else length)
            continue
        if p.name not in values:
            regs.extend([0] * p.size if p.dtype in ("pad", "acc16", "acc32", "acc64", "string") else _sentinel_regs(p.dtype, p.size))
            continue
        v = values[p.name]
        if p.dtype == "string":
            regs.extend(encode(str(v), "string", length=p.size))
            continue
        exp = p.sf if isinstance(p.sf, int) else (sfs.get(p.sf) if p.sf else None)
        if p.sf is not None and exp is None:
            raise ValueError(f"model {model.id}: {p.name} needs scale factor {p.sf} in values")
        raw = float(v) / 10.0**exp if exp is not None else float(v)
        dtype = _ALIAS.get(p.dtype, p.dtype)
        if isinstance(v, int) and exp is None:
            regs.extend(encode(v, dtype))  # exact for 64-bit counters (no float rounding)
        else:
            regs.extend(encode(raw if dtype.startswith("float") else round(raw), dtype))
    if length is not None:
        want = length + 2
        regs = regs[:want] + [0] * max(0, want - len(regs))
    return regs


@dataclass
class ImageSpec:
    """One model in an image: id, values, an optional L override (e.g. 65 for SolarEdge's common)."""

    model_id: int
    values: Mapping[str, float | int | str] = field(default_factory=dict)
    length: int | None = None


def build_image(
    models: Sequence[ImageSpec],
    *,
    base: int = 40000,
    end_length: int | None = 0,
) -> dict[int, int]:
    """``{address: register}`` with the SunS marker at ``base``, the models, and the end model.

    ``end_length=None`` writes the end model's ID only (a device without a valid L there).
    """
    image: dict[int, int] = {base: MARKER[0], base + 1: MARKER[1]}
    addr = base + 2
    for spec in models:
        md = load_model(spec.model_id)
        if md is None:
            raise ValueError(f"no shipped definition for SunSpec model {spec.model_id}")
        for i, r in enumerate(encode_model(md, spec.values, length=spec.length)):
            image[addr + i] = r
        addr += (md.length if spec.length is None else spec.length) + 2
    image[addr] = END_MODEL_ID
    if end_length is not None:
        image[addr + 1] = end_length
    return image


def model_addresses(models: Sequence[ImageSpec], base: int = 40000) -> dict[int, int]:
    """Where each model's ID register lands in ``build_image`` (first occurrence)."""
    out: dict[int, int] = {}
    addr = base + 2
    for spec in models:
        md = load_model(spec.model_id)
        assert md is not None
        out.setdefault(spec.model_id, addr)
        addr += (md.length if spec.length is None else spec.length) + 2
    return out
