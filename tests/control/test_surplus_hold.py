"""The guard's island surplus hold (powerctl/control/surplus_hold.py): PV curtailed within one
guard pass when the load drops and a full battery cannot take the surplus; it follows the load back
up and lets go; a battery that can charge, or a grid, leaves PV alone.

The demo site (examples/demo-site.toml) is an island: PV 230 kW AC, a 60 kW-charge battery with
soc_max 95 %, a 120 kW genset at 30 % minimum load, supply margin 3 kW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from powerctl.config import load_config
from powerctl.control.core import Commands
from powerctl.control.loop import ControlLoop
from powerctl.control.shed import ShedAction
from powerctl.control.split import GpuSlot, slots_from_pool
from powerctl.control.surplus_hold import SurplusHold
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "examples" / "demo-site.toml")
RATING_KW = 230.0
MARGIN_KW = CFG.control.supply_margin_kw


def _image(now: float, *, pv_kw: float, soc_pct: float | None, running: bool = False) -> ProcessImage:
    img = ProcessImage()
    for d in CFG.devices:
        for sig in SIGNALS[d.nature]:
            img.declare(d.name, d.nature, sig, 60.0)
    img.update("pv1", "p_kw", pv_kw, now)
    if soc_pct is not None:
        img.update("bess", "soc_pct", soc_pct, now)
    img.update("gen1", "running", 1.0 if running else 0.0, now)
    return img


def _pct(kw: float) -> float:
    return round(100.0 * kw / RATING_KW, 1)


def test_full_battery_load_drop_curtails_at_once_then_follows_and_releases() -> None:
    hold = SurplusHold(CFG)
    # PV 120 kW feeds 118 kW of load: within the allowance (load + margin), nothing to do
    assert hold.update(_image(0.0, pv_kw=120.0, soc_pct=95.0), 0.0, 118.0) == {}
    # caps cut: the load falls to 40 kW in one guard pass; the battery is full: PV held to 43 kW
    assert hold.update(_image(0.1, pv_kw=120.0, soc_pct=95.0), 0.1, 40.0) == {"pv1": _pct(40.0 + MARGIN_KW)}
    assert "island surplus" in hold.reason
    # the load comes back: the limit follows it up on the next pass (PV now reads the limited 43 kW)
    assert hold.update(_image(0.2, pv_kw=43.0, soc_pct=95.0), 0.2, 90.0) == {"pv1": _pct(90.0 + MARGIN_KW)}
    # enough load to take the whole rating: released
    assert hold.update(_image(0.3, pv_kw=93.0, soc_pct=95.0), 0.3, 240.0) == {}
    assert hold.limit_kw is None and hold.reason == ""


def test_a_battery_that_can_charge_takes_the_drop() -> None:
    hold = SurplusHold(CFG)
    # SoC 60 %: 60 kW of charge headroom takes 120 - 70 = 50 kW of surplus
    assert hold.update(_image(0.0, pv_kw=120.0, soc_pct=60.0), 0.0, 70.0) == {}
    # beyond the headroom: PV held to load + charge + margin
    assert hold.update(_image(0.1, pv_kw=120.0, soc_pct=60.0), 0.1, 30.0) == {"pv1": _pct(30.0 + 60.0 + MARGIN_KW)}


def test_a_soc_not_read_counts_as_full() -> None:
    hold = SurplusHold(CFG)
    assert hold.update(_image(0.0, pv_kw=120.0, soc_pct=None), 0.0, 70.0) == {"pv1": _pct(70.0 + MARGIN_KW)}


def test_a_running_genset_keeps_its_minimum_load() -> None:
    hold = SurplusHold(CFG)
    floor_kw = 120.0 * 0.30
    got = hold.update(_image(0.0, pv_kw=120.0, soc_pct=95.0, running=True), 0.0, 100.0)
    assert got == {"pv1": _pct(100.0 - floor_kw + MARGIN_KW)}


@pytest.mark.parametrize("meter_fresh", [True, False])
def test_with_a_grid_the_surplus_is_export_not_ours(meter_fresh: bool) -> None:
    cfg = load_config(ROOT / "examples" / "grid-site.toml")
    hold = SurplusHold(cfg)
    img = ProcessImage()
    for d in cfg.devices:
        for sig in SIGNALS[d.nature]:
            if sig not in ("v_v", "f_hz"):  # a meter without them: fresh power alone shows the grid
                img.declare(d.name, d.nature, sig, 60.0)
    pv = next(d.name for d in cfg.devices if d.nature == "pv")
    bess = next(d.name for d in cfg.devices if d.nature == "battery")
    meter = next(d.name for d in cfg.devices if d.nature == "meter")
    img.update(pv, "p_kw", 100.0, 0.0)
    img.update(bess, "soc_pct", 99.0, 0.0)
    if meter_fresh:
        img.update(meter, "p_kw", -60.0, 0.0)
    got = hold.update(img, 0.0, 40.0)
    # a fresh meter: the grid takes it (export_hold caps it); no meter seen: islanded, held here
    assert (got == {}) is meter_fresh


class _Planner:
    """A dispatcher that keeps the plan's PV released (the plan has not seen the drop yet)."""

    forecaster = None

    def __init__(self, cfg: Any, slots: list[GpuSlot]) -> None:
        self.cfg, self.slots = cfg, slots

    def plan(self, now_s: float, image: ProcessImage, deadline_s: float | None = None) -> None:
        return None

    def dispatch(self, now_s: float, image: ProcessImage, overrides: Any = None) -> Commands:
        return Commands(t_s=now_s, gpu_caps_w={s.index: self.cfg.gpu.max_w for s in self.slots},
                        pv_limit_pct={"pv1": 100.0})

    def on_clock_step(self, step_s: float) -> None:
        pass


@dataclass
class _Readings:
    image: ProcessImage
    gpu_w: float = 0.0
    n: int = 1

    def gpu_power_w(self) -> dict[int, float]:
        return dict.fromkeys(range(self.n), self.gpu_w / self.n)


@dataclass
class _Actuators:
    sent: list[Commands] = field(default_factory=list)

    def setpoints(self, cmd: Commands) -> None:
        self.sent.append(cmd)

    def gpu_caps(self, caps_w: Mapping[int, float]) -> None:
        pass

    def release(self, released: tuple[int, ...], actions: Sequence[ShedAction]) -> None:
        pass


def test_the_guard_pass_writes_the_limit_before_the_next_plan() -> None:
    slots = slots_from_pool(CFG.gpu)
    img = _image(0.0, pv_kw=120.0, soc_pct=95.0)
    img.update("bess", "p_kw", 0.0, 0.0)
    img.update("gen1", "p_kw", 0.0, 0.0)
    readings = _Readings(img, gpu_w=110_000.0, n=len(slots))
    out = _Actuators()
    loop = ControlLoop(CFG, slots, _Planner(CFG, slots), readings, out)
    loop.dispatch_tick(0.0)
    loop.guard_tick(0.0)
    assert [c.pv_limit_pct for c in out.sent] == [{"pv1": 100.0}]  # PV all taken: no hold
    readings.gpu_w = 40_000.0  # caps cut: the GPUs fall to 40 kW within a guard period
    d = loop.guard_tick(0.1)
    # the guard pass itself (no plan, no dispatch since) sends the limit: load + margin
    assert out.sent[-1].pv_limit_pct == {"pv1": _pct(d.load_kw + MARGIN_KW)} and d.load_kw < 60.0
    # the next dispatch keeps it (the lower of the plan's 100 % and the hold's)
    assert loop.dispatch_tick(0.2).pv_limit_pct == {"pv1": _pct(d.load_kw + MARGIN_KW)}
