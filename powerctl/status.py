"""What the daemon's last cycles did: ``Status`` (read by the status line, the live table and
tests), filled from the process image and the loop after each dispatch and guard tick."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from powerctl import site_state
from powerctl.config import SiteConfig
from powerctl.control.core import Commands
from powerctl.control.guard import GuardDecision
from powerctl.control.loop import ControlLoop
from powerctl.gpu_io import GPU_DEVICE
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage, Quality


@dataclass
class Status:
    t_s: float = 0.0
    cycles: int = 0
    guard_cycles: int = 0
    guard_cuts: int = 0
    mode: str = "starting"
    pv_kw: float | None = None
    soc_pct: float | None = None
    battery_kw: float | None = None
    genset_kw: float | None = None
    genset_running: bool | None = None
    gpu_kw: float | None = None
    gpu_budget_kw: dict[str, float] = field(default_factory=dict)
    caps_w_min: float = 0.0
    caps_w_max: float = 0.0
    caps_w_mean: float = 0.0
    last_solve_ms: float | None = None
    plan_rung: str = ""
    plan_status: str = ""
    available_kw: float | None = None
    stale: list[str] = field(default_factory=list)
    written: dict[str, float] = field(default_factory=dict)
    write_errors: int = 0
    cycle_ms: list[float] = field(default_factory=list)
    # every device, not only the first (powerctl.site_state): name -> values
    batteries: dict[str, dict[str, float | None]] = field(default_factory=dict)
    gensets: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def after_dispatch(self, cfg: SiteConfig, image: ProcessImage, loop: ControlLoop, now: float,
                       cmd: Commands) -> None:
        def total(nature: Nature, signal: str) -> float | None:
            vals = [image.value(d.name, signal, now) for d in cfg.by_nature(nature)]
            return None if not vals or any(v is None for v in vals) else float(sum(v for v in vals if v is not None))

        self.t_s, self.cycles = now, self.cycles + 1
        self.mode = cmd.mode
        self.pv_kw = total(Nature.PV, "p_kw")
        self.battery_kw = total(Nature.BATTERY, "p_kw")
        self.genset_kw = total(Nature.GENSET, "p_kw")
        self.batteries = site_state.batteries(cfg, image, now)
        self.gensets = site_state.gensets(cfg, image, now)
        self.soc_pct = site_state.site_soc_pct(cfg, self.batteries)  # all batteries, by capacity
        run = [g["running"] for g in self.gensets.values()]
        self.genset_running = None if not run or None in run else any(run)  # any genset running
        self.gpu_kw = image.value(GPU_DEVICE, "p_kw", now)
        self.gpu_budget_kw = dict(cmd.gpu_budget_kw)
        caps = list(loop.caps_w.values())
        self.caps_w_min, self.caps_w_max = min(caps), max(caps)
        self.caps_w_mean = sum(caps) / len(caps)
        self.classes = site_state.classes(loop.slots, loop.caps_w, self.gpu_budget_kw)
        self.stale = [f"{d}.{s}" for d, s, sig in image.not_good(now) if sig.quality is not Quality.MISSING]

    def after_guard(self, d: GuardDecision) -> None:
        self.available_kw = d.available_kw
        self.guard_cycles += 1
        self.guard_cuts += int(d.cut)

    def doc(self, cfg: SiteConfig) -> dict[str, Any]:
        """The state document: MQTT ``state``, ``/api/state`` (plus alarms and health) and the
        SCADA registers. Totals are over every device; ``batteries``, ``gensets``, ``classes`` list
        each one."""
        return {
            "t_s": self.t_s, "site": cfg.site.id, "module": cfg.site.module, "mode": str(self.mode),
            "pv_kw": self.pv_kw, "soc_pct": self.soc_pct, "battery_kw": self.battery_kw,
            "genset_kw": self.genset_kw, "genset_running": self.genset_running, "gpu_kw": self.gpu_kw,
            "available_kw": self.available_kw, "stale": list(self.stale), "last_solve_ms": self.last_solve_ms,
            "plan_rung": self.plan_rung, "plan_status": self.plan_status, "cycles": self.cycles,
            "guard_cuts": self.guard_cuts, "write_errors": self.write_errors,
            "gpu_budget_kw": dict(self.gpu_budget_kw),
            "caps_w": {"min": self.caps_w_min, "mean": self.caps_w_mean, "max": self.caps_w_max},
            "batteries": self.batteries, "gensets": self.gensets, "classes": self.classes,
        }

    def line(self) -> str:
        def f(v: float | None, unit: str) -> str:
            return "  n/a" if v is None else f"{v:6.1f}{unit}"

        solve = "n/a" if self.last_solve_ms is None else f"{self.last_solve_ms:.0f} ms {self.plan_rung}"
        return (
            f"[{self.mode}] pv {f(self.pv_kw, ' kW')} | {site_state.short_line(self.batteries, self.gensets)} | "
            f"gpu {f(self.gpu_kw, ' kW')} "
            f"caps {self.caps_w_min:.0f}-{self.caps_w_max:.0f} W "
            f"avail {f(self.available_kw, ' kW')} solve {solve} stale {len(self.stale)}"
        )
