"""GPU cluster: per-GPU caps, demand per workload class, power = min(cap, demand) with a lag.

Each GPU belongs to one workload class of the config (``gpu.classes``, in order: class 0's GPUs
first). Each step the demand function says how many watts each GPU *would* draw uncapped; the
drawn power follows ``min(cap, demand)`` through a first-order lag of ``tau_s`` (the NVML 1 s
average and the power-management loop).

Throughput: relative throughput of a GPU drawing ``p`` W is read from a cap-vs-throughput curve
(the rows of the site's ``gpu.model`` in powerctl/data/gpu-cap-curves.csv, normalised to the
GPU's ``max_w``): the work it does per hour is ``rel_tput(p)`` times what it does at full power. Value of compute per hour for a GPU =
``value_per_kwh x max_w/1000 x rel_tput(p)``, i.e. ``value_per_kwh`` is the value of one kWh of IT
energy at full throughput (config ``WorkloadClass.value_per_kwh``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from powerctl.config import GpuPool
from powerctl.throughput import throughput_curve


class Curve:
    """Relative throughput as a function of power as a fraction of the GPU's max (0..1)."""

    def __init__(
        self, frac: Sequence[float] | np.ndarray, tput: Sequence[float] | np.ndarray, name: str = ""
    ) -> None:
        f = np.asarray(frac, dtype=float)
        t = np.asarray(tput, dtype=float)
        order = np.argsort(f)
        f, t = f[order], t[order]
        if len(f) < 1 or np.any(np.diff(f) <= 0) or np.any(np.diff(t) < 0) or np.any(t < 0):
            raise ValueError(f"curve {name!r}: needs strictly increasing caps and non-decreasing throughput")
        if f[0] > 0:
            f, t = np.concatenate([[0.0], f]), np.concatenate([[0.0], t])
        self.name, self.frac, self.tput = name, f, t

    def __call__(self, frac: np.ndarray | float) -> np.ndarray:
        return np.interp(np.clip(frac, 0.0, self.frac[-1]), self.frac, self.tput)


def get_curve(gpu_model: str, name: str) -> Curve:
    """The measured curve of ``name`` for ``gpu_model``: the one lookup, ``powerctl.throughput``."""
    frac, tput = throughput_curve(gpu_model, name)
    # Measurement noise aside, a higher cap never does less work (the GPU may run the lower cap's
    # clocks), so a dip in the measured points is flattened for the plant.
    return Curve(frac, np.maximum.accumulate(tput), name=name)


DemandFn = Callable[[float], "Mapping[str, float] | Sequence[float] | float"]


class GpuCluster:
    """All GPUs of the site. Caps and powers in W per GPU; totals in kW."""

    def __init__(self, pool: GpuPool, demand_fn: DemandFn | None = None, tau_s: float = 1.0) -> None:
        self.pool = pool
        self.class_names = [c.name for c in pool.classes]
        self.class_of = np.concatenate([np.full(c.gpus, i, dtype=int) for i, c in enumerate(pool.classes)])
        self.n = len(self.class_of)
        self.max_w, self.min_w = pool.max_w, pool.min_w
        self.caps_w = np.full(self.n, pool.safe_cap_w, dtype=float)
        self.power_w = np.full(self.n, min(pool.idle_w, pool.safe_cap_w), dtype=float)
        self.demand_w = np.full(self.n, pool.max_w, dtype=float)
        self.demand_fn = demand_fn
        self.idle_w = pool.idle_w
        # GPUs whose work is shed (paused by a hook): they idle and do no work until released again
        self.released = np.zeros(self.n, dtype=bool)
        self._rel_key: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see rel_throughput
        self.tau_s = tau_s
        self.curves = [get_curve(pool.model, c.curve) for c in pool.classes]
        self.value_per_kwh = np.array([c.value_per_kwh for c in pool.classes], dtype=float)
        # counters
        self.e_kwh = 0.0
        self.work_gpu_h = np.zeros(len(pool.classes))  # full-throughput GPU-hours done, per class
        self.value = 0.0

    def set_caps_w(self, caps_w: Sequence[float] | np.ndarray) -> np.ndarray:
        """Set per-GPU caps (clamped to [min_w, max_w], like NVML); return the enforced caps."""
        caps = np.asarray(caps_w, dtype=float)
        if caps.shape != (self.n,):
            raise ValueError(f"set_caps_w: expected {self.n} caps, got {caps.shape}")
        if not np.all(np.isfinite(caps)):
            raise ValueError("set_caps_w: caps must be finite")
        self.caps_w = np.clip(caps, self.min_w, self.max_w)
        return self.caps_w.copy()

    def set_class_caps_w(self, caps_by_class: Mapping[str, float]) -> None:
        caps = self.caps_w.copy()
        for name, cap in caps_by_class.items():
            caps[self.class_of == self.class_names.index(name)] = cap
        self.set_caps_w(caps)

    def set_released(self, indices: Sequence[int] | np.ndarray) -> None:
        """Mark GPUs whose workload is shed (paused): they draw idle power and do no work."""
        mask = np.zeros(self.n, dtype=bool)
        mask[np.asarray(list(indices), dtype=int)] = True
        self.released = mask

    def _demand(self, t_s: float) -> np.ndarray:
        if self.demand_fn is None:
            return np.full(self.n, self.max_w)
        d = self.demand_fn(t_s)
        if isinstance(d, Mapping):
            per_class = np.array([float(d.get(c, self.max_w)) for c in self.class_names])
            out = per_class[self.class_of]
        elif isinstance(d, int | float):
            out = np.full(self.n, float(d))
        else:
            out = np.asarray(d, dtype=float)
            if out.shape != (self.n,):
                raise ValueError(f"GPU demand: expected {self.n} values, got {out.shape}")
        out = np.clip(out, 0.0, self.max_w)
        if self.released.any():
            out = np.where(self.released, np.minimum(out, self.idle_w), out)
        return out

    def advance(self, t_s: float, dt_s: float) -> None:
        """Move powers toward min(cap, demand) over ``dt_s`` (the step's held power)."""
        self.demand_w = self._demand(t_s)
        target = np.minimum(self.caps_w, self.demand_w)
        if dt_s > 0:
            a = 1.0 - math.exp(-dt_s / self.tau_s) if self.tau_s > 0 else 1.0
            self.power_w = self.power_w + (target - self.power_w) * a

    def book(self, dt_s: float, served_frac: float = 1.0) -> None:
        """Count energy, work and value of the last ``dt_s``; only the ``served_frac`` of the
        load that the supply carried did useful work (an unserved share means a tripped bus)."""
        h = dt_s / 3600.0
        self.e_kwh += self.power_kw() * h * served_frac
        rel = self.rel_throughput()
        work = np.bincount(self.class_of, weights=rel, minlength=len(self.class_names)) * h * served_frac
        self.work_gpu_h += work
        self.value += float(np.sum(work * self.value_per_kwh) * self.max_w / 1000.0)

    def rel_throughput(self) -> np.ndarray:
        """Per-GPU relative throughput at the current power (1 = full power)."""
        # booked and then recorded each step: computed once per (power, released) pair; both are
        # replaced, never changed in place, so identity says whether they moved
        key = self._rel_key
        if key is not None and key[0] is self.power_w and key[1] is self.released:
            return key[2]
        frac = self.power_w / self.max_w
        out = np.empty(self.n)
        for i, curve in enumerate(self.curves):
            m = self.class_of == i
            out[m] = curve(frac[m])
        out[self.released] = 0.0
        self._rel_key = (self.power_w, self.released, out)
        return out

    def value_rate_per_h(self) -> float:
        """Value of compute per hour at the current powers."""
        rel = self.rel_throughput()
        return float(np.sum(rel * self.value_per_kwh[self.class_of]) * self.max_w / 1000.0)

    def power_kw(self) -> float:
        return float(self.power_w.sum()) / 1000.0

    def class_power_kw(self) -> dict[str, float]:
        sums = np.bincount(self.class_of, weights=self.power_w, minlength=len(self.class_names))
        return {n: float(s) / 1000.0 for n, s in zip(self.class_names, sums, strict=True)}
