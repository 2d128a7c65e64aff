"""Baselines of the controller comparison, as planners for the same ``ControlLoop``.

``StaticPlanner``: every GPU at one fixed cap, battery left to the grid-forming inverter, genset
started at or below ``start_soc_pct`` and stopped at or above ``stop_soc_pct`` (mean SoC, worst case
when stale). It never plans; the loop's guard still fits its caps to the supply.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from powerctl.config import SiteConfig
from powerctl.control.core import Commands, DispatchMode, Forecaster, Overrides
from powerctl.control.split import GpuSlot
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage


class StaticPlanner:
    forecaster: Forecaster | None = None

    def __init__(self, cfg: SiteConfig, slots: Sequence[GpuSlot], *, cap_w: float | None = None,
                 start_soc_pct: float = 30.0, stop_soc_pct: float = 80.0) -> None:
        self.cfg = cfg
        self.slots = list(slots)
        self.cap_w = cfg.gpu.safe_cap_w if cap_w is None else cap_w
        self.start_soc, self.stop_soc = start_soc_pct, stop_soc_pct
        self.batteries = [d.name for d in cfg.by_nature(Nature.BATTERY)]
        self.run = dict.fromkeys((d.name for d in cfg.by_nature(Nature.GENSET)), False)

    def plan(self, now_s: float, image: ProcessImage, deadline_s: float | None = None) -> None:
        return None

    def on_clock_step(self, step_s: float) -> None:
        return None

    def dispatch(self, now_s: float, image: ProcessImage, overrides: Overrides | None = None) -> Commands:
        lims = {b: self.cfg.device(b).limits for b in self.batteries}
        socs = [image.worst(b, "soc_pct", now_s, low=lims[b].soc_min_pct, high=lims[b].soc_max_pct)
                for b in self.batteries]
        soc = float(np.mean(socs)) if socs else 100.0
        for g in self.run:
            if soc <= self.start_soc:
                self.run[g] = True
            elif soc >= self.stop_soc:
                self.run[g] = False
        budget = {c.name: 0.0 for c in self.cfg.gpu.classes}
        for s in self.slots:
            budget[s.klass] += self.cap_w / 1000.0
        return Commands(
            t_s=now_s, battery_kw=dict.fromkeys(self.batteries, 0.0), genset_run=dict(self.run),
            gpu_budget_kw=budget, gpu_caps_w={s.index: self.cap_w for s in self.slots}, mode=DispatchMode.STATIC,
        )
