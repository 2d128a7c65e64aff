"""Simulated GPUs: power follows min(cap, demand) with a first-order lag.

No threads: the model integrates up to the injected clock whenever it is read or set (or when
``advance(t_s)`` is called), so a replay with a simulated clock is exact and fast.

Physics (gpu-power.md §5, §7, §10.6/10.8, guesses until measured per SKU): the firmware moves power
towards ``min(cap, demand)`` with time constant ``tau_s`` (~0.5 s); at the floor the GPU may draw a
little more than its cap (A40 drew 4-21 % over a 100 W cap), modelled as ``floor_overshoot``.

With ``state_path`` the "driver state" (the caps) lives in a JSON file, so separate processes (the
daemon, the watchdog, ``apply-safe-caps``) act on the same simulated GPUs, as they would on real ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from powerctl.gpu.base import READBACK_TOL_W, CapResult, Clock, DemandFn, GpuInfo

if TYPE_CHECKING:
    from powerctl.config import GpuPool

_MAX_SUBSTEP_S = 0.05  # demand is sampled at this resolution while integrating


class SimulatedGpus:
    """N identical simulated GPUs (see module docstring)."""

    name = "simulated"

    def __init__(
        self,
        count: int,
        min_w: float,
        max_w: float,
        *,
        idle_w: float = 60.0,
        default_w: float | None = None,
        clock: Clock = time.monotonic,
        demand_w: DemandFn | None = None,
        tau_s: float = 0.5,
        floor_overshoot: float = 0.03,
        state_path: str | Path | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        if not 0 < min_w < max_w:
            raise ValueError(f"need 0 < min_w < max_w (got {min_w}, {max_w})")
        self.count = count
        self.min_w = float(min_w)
        self.max_w = float(max_w)
        self.idle_w = float(idle_w)
        self.default_w = float(default_w if default_w is not None else max_w)
        self.tau_s = tau_s
        self.floor_overshoot = floor_overshoot
        self._clock = clock
        self._demand: DemandFn = demand_w or (lambda _i, _t: 0.95 * self.max_w)
        self._state_path = Path(state_path) if state_path else None
        # After boot or driver reload a GPU comes up at its default limit (gpu-power.md §9).
        self._caps_w = [self.default_w] * count
        self._outside_w: list[float | None] = [None] * count
        self._load_state()
        self._t_s = clock()
        self._p_w = [self._target_w(i, self._t_s) for i in range(count)]
        self._e_j = [0.0] * count
        self.set_calls = 0  # for tests and benches: how many set_cap_w calls reached the "driver"

    @classmethod
    def from_pool(
        cls, gpu_cfg: GpuPool, *, clock: Clock = time.monotonic, demand_w: DemandFn | None = None
    ) -> SimulatedGpus:
        return cls(
            gpu_cfg.count,
            gpu_cfg.min_w,
            gpu_cfg.max_w,
            idle_w=gpu_cfg.idle_w,
            clock=clock,
            demand_w=demand_w,
            state_path=getattr(gpu_cfg, "sim_state_file", None),
        )

    # --- model ------------------------------------------------------------------------------

    def enforced_w(self, index: int) -> float:
        """The limit the GPU obeys: the lower of our cap and any outside limiter."""
        outside = self._outside_w[index]
        cap = self._caps_w[index]
        return cap if outside is None else min(cap, outside)

    def _target_w(self, index: int, t_s: float) -> float:
        demand = max(self.idle_w, float(self._demand(index, t_s)))
        cap = self.enforced_w(index)
        if demand <= cap:
            return demand
        if cap <= self.min_w * 1.02:
            return cap * (1.0 + self.floor_overshoot)
        return cap

    def advance(self, t_s: float) -> None:
        """Integrate power and energy up to time ``t_s`` (earlier times are ignored)."""
        while self._t_s < t_s:
            dt = min(_MAX_SUBSTEP_S, t_s - self._t_s)
            decay = math.exp(-dt / self.tau_s)
            for i in range(self.count):
                target = self._target_w(i, self._t_s)
                p0 = self._p_w[i]
                self._e_j[i] += target * dt + (p0 - target) * self.tau_s * (1.0 - decay)
                self._p_w[i] = target + (p0 - target) * decay
            self._t_s += dt

    def set_outside_limit(self, index: int, limit_w: float | None) -> None:
        """Emulate another limiter (BMC, DCGM) holding the GPU below our cap."""
        self._outside_w[index] = limit_w

    def set_demand(self, demand_w: DemandFn) -> None:
        self.advance(self._clock())
        self._demand = demand_w

    # --- protocol ----------------------------------------------------------------------------

    def list_gpus(self) -> list[GpuInfo]:
        return [
            GpuInfo(i, "Simulated GPU", f"GPU-sim-{i:04d}", self.min_w, self.max_w, self.default_w)
            for i in range(self.count)
        ]

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"GPU {index} does not exist (have {self.count})")

    def read_power_w(self, index: int) -> float:
        self._check(index)
        self.advance(self._clock())
        return self._p_w[index]

    def read_energy_j(self, index: int) -> float:
        self._check(index)
        self.advance(self._clock())
        return self._e_j[index]

    def read_limits_w(self, index: int) -> tuple[float, float]:
        self._check(index)
        self._load_state()
        return self._caps_w[index], self.enforced_w(index)

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        self._check(index)
        self.set_calls += 1
        if not (self.min_w <= cap_w <= self.max_w):  # NaN fails this too
            # Like NVML's INVALID_ARGUMENT: an out-of-range limit is refused, not clamped.
            return CapResult(
                index, cap_w, self._caps_w[index], self.enforced_w(index), False,
                f"GPU {index}: {cap_w:g} W is outside its range [{self.min_w:g}, {self.max_w:g}] W",
            )
        self.advance(self._clock())
        self._load_state()
        self._caps_w[index] = float(cap_w)
        self._save_state()
        readback, enforced = self._caps_w[index], self.enforced_w(index)
        outside = enforced < readback - READBACK_TOL_W
        msg = f"GPU {index}: enforced limit {enforced:g} W below requested {readback:g} W (outside limiter)" if outside else ""
        return CapResult(index, cap_w, readback, enforced, True, msg, outside)

    # --- shared state file -------------------------------------------------------------------

    def _load_state(self) -> None:
        if self._state_path is None or not self._state_path.exists():
            return
        try:
            caps = json.loads(self._state_path.read_text())["caps_w"]
        except (OSError, ValueError, KeyError):
            return  # a torn or foreign file: keep what we have
        if isinstance(caps, list) and len(caps) == self.count:
            self._caps_w = [float(c) for c in caps]

    def _save_state(self) -> None:
        if self._state_path is None:
            return
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"caps_w": self._caps_w, "writer_pid": os.getpid()}))
        os.replace(tmp, self._state_path)  # atomic: a reader never sees half a file


def step_demand(before_w: float, after_w: float, at_s: float) -> Callable[[int, float], float]:
    """A demand that steps from ``before_w`` to ``after_w`` at ``at_s`` (tests, benches)."""
    return lambda _i, t: before_w if t < at_s else after_w
