"""What the daemon's last cycles did: ``Status`` (read by the status line, the live table and
tests), filled from the process image and the loop after each dispatch and guard tick."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        socs = [image.value(d.name, "soc_pct", now) for d in cfg.by_nature(Nature.BATTERY)]
        self.soc_pct = socs[0] if socs else None
        run = [image.value(d.name, "running", now) for d in cfg.by_nature(Nature.GENSET)]
        self.genset_running = None if not run or run[0] is None else bool(run[0])
        self.gpu_kw = image.value(GPU_DEVICE, "p_kw", now)
        self.gpu_budget_kw = dict(cmd.gpu_budget_kw)
        caps = list(loop.caps_w.values())
        self.caps_w_min, self.caps_w_max = min(caps), max(caps)
        self.caps_w_mean = sum(caps) / len(caps)
        self.stale = [f"{d}.{s}" for d, s, sig in image.not_good(now) if sig.quality is not Quality.MISSING]

    def after_guard(self, d: GuardDecision) -> None:
        self.available_kw = d.available_kw
        self.guard_cycles += 1
        self.guard_cuts += int(d.cut)

    def line(self) -> str:
        def f(v: float | None, unit: str) -> str:
            return "  n/a" if v is None else f"{v:6.1f}{unit}"

        solve = "n/a" if self.last_solve_ms is None else f"{self.last_solve_ms:.0f} ms {self.plan_rung}"
        return (
            f"[{self.mode}] pv {f(self.pv_kw, ' kW')} soc {f(self.soc_pct, ' %')} bat {f(self.battery_kw, ' kW')} "
            f"gen {f(self.genset_kw, ' kW')} gpu {f(self.gpu_kw, ' kW')} "
            f"caps {self.caps_w_min:.0f}-{self.caps_w_max:.0f} W "
            f"avail {f(self.available_kw, ' kW')} solve {solve} stale {len(self.stale)}"
        )
