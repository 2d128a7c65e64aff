"""Every device in the state, not only the first: per battery, per genset and per workload class.

Pure functions from the process image, the caps and the budget to JSON-ready dicts. The status
(``powerctl.status``) keeps them; the MQTT state, ``/api/state``, the SCADA registers, Home
Assistant and the status line all read these, so they show the same devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from powerctl.config import SiteConfig
from powerctl.control.split import GpuSlot
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage


def batteries(cfg: SiteConfig, image: ProcessImage, now: float) -> dict[str, dict[str, float | None]]:
    return {d.name: {"soc_pct": image.value(d.name, "soc_pct", now), "p_kw": image.value(d.name, "p_kw", now)}
            for d in cfg.by_nature(Nature.BATTERY)}


def gensets(cfg: SiteConfig, image: ProcessImage, now: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in cfg.by_nature(Nature.GENSET):
        run = image.value(d.name, "running", now)
        out[d.name] = {"p_kw": image.value(d.name, "p_kw", now), "running": None if run is None else bool(run)}
    return out


def site_soc_pct(cfg: SiteConfig, bats: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """SoC of all batteries together, weighted by capacity; None while any one is unknown."""
    total_kwh = stored_kwh = 0.0
    for d in cfg.by_nature(Nature.BATTERY):
        soc = bats.get(d.name, {}).get("soc_pct")
        if soc is None:
            return None
        total_kwh += d.limits.capacity_kwh
        stored_kwh += d.limits.capacity_kwh * soc / 100.0
    return None if total_kwh <= 0 else 100.0 * stored_kwh / total_kwh


def classes(slots: Sequence[GpuSlot], caps_w: Mapping[int, float], budget_kw: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per workload class: GPUs, budget and the range of its caps."""
    out: dict[str, dict[str, Any]] = {}
    for s in slots:
        c = out.setdefault(s.klass, {"gpus": 0, "budget_kw": budget_kw.get(s.klass), "_caps": []})
        c["gpus"] += 1
        c["_caps"].append(float(caps_w.get(s.index, 0.0)))
    for c in out.values():
        caps = c.pop("_caps")
        c["cap_w_min"], c["cap_w_max"] = min(caps), max(caps)
        c["cap_w_mean"] = sum(caps) / len(caps)
    return out


def short_line(bats: Mapping[str, Mapping[str, Any]], gens: Mapping[str, Mapping[str, Any]]) -> str:
    """``bess 55% -20.5 kW, gen1 off`` for the status line: every device, briefly."""
    def kw(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} kW"

    parts = [f"{n} {'n/a' if b['soc_pct'] is None else format(b['soc_pct'], '.0f') + '%'} {kw(b['p_kw'])}"
             for n, b in bats.items()]
    parts += [f"{n} {'n/a' if g['running'] is None else ('on' if g['running'] else 'off')} {kw(g['p_kw'])}"
              for n, g in gens.items()]
    return ", ".join(parts)
