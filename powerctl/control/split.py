"""Turn GPU budgets into per-GPU caps.

- ``split_budget``: the planner's kW budget per workload class -> per-GPU caps (W), water-filling
  within each GPU's [min, max]; when a class budget is below the sum of its floors, whole GPUs are
  released (parked at their minimum cap and listed for shedding), counting them at idle power.
- ``cut_to_total``: the guard's cut, applied to the caps in force: removes the excess from the
  least important class first (highest priority number), lowering the highest caps first; what
  cannot be removed even with every running GPU at its floor is returned as ``deficit_w``.

Pure functions, no I/O. Budgets are GPU electrical power (facility overhead excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from powerctl.config import GpuPool
    from powerctl.gpu.base import GpuInfo


@dataclass(frozen=True)
class GpuSlot:
    """One GPU as the controller sees it: its class, priority (0 = most important) and cap range."""

    index: int
    klass: str
    priority: int
    min_w: float
    max_w: float


@dataclass(frozen=True)
class SplitResult:
    caps_w: dict[int, float]
    released: tuple[int, ...] = ()  # GPUs whose work should be shed (cap parked at min)
    class_cap_kw: dict[str, float] = field(default_factory=dict)  # sum of caps per class
    deficit_w: float = 0.0  # power the caps could not remove (cut_to_total: shed to cover it)


def slots_from_pool(gpu_cfg: GpuPool, infos: Sequence[GpuInfo] | None = None) -> list[GpuSlot]:
    """GPUs numbered in class order of the config; ranges are the config range narrowed by the
    device's own constraints when known."""
    slots: list[GpuSlot] = []
    idx = 0
    for c in gpu_cfg.classes:
        for _ in range(c.gpus):
            lo, hi = gpu_cfg.min_w, gpu_cfg.max_w
            if infos is not None and idx < len(infos):
                lo, hi = max(lo, infos[idx].min_w), min(hi, infos[idx].max_w)
                if lo > hi:  # the site range and the device range do not overlap: trust the device floor
                    lo = hi = infos[idx].min_w
            slots.append(GpuSlot(idx, c.name, c.priority, float(lo), float(hi)))
            idx += 1
    if infos is not None and len(infos) != idx:
        raise ValueError(f"gpu.classes list {idx} GPUs but the backend found {len(infos)}")
    return slots


def water_fill(budget_w: float, bounds_w: Sequence[tuple[float, float]]) -> list[float]:
    """Caps x_i = clamp(L, lo_i, hi_i) with one level L so that sum x_i = budget (clipped to
    [sum lo, sum hi]). Exact: walks the sorted breakpoints, then interpolates."""
    if not bounds_w:
        return []
    lo_sum = sum(lo for lo, _ in bounds_w)
    hi_sum = sum(hi for _, hi in bounds_w)
    if budget_w <= lo_sum:
        return [lo for lo, _ in bounds_w]
    if budget_w >= hi_sum:
        return [hi for _, hi in bounds_w]

    def total(level: float) -> float:
        return sum(min(hi, max(lo, level)) for lo, hi in bounds_w)

    points = sorted({p for b in bounds_w for p in b})
    prev_level, prev_total = points[0], total(points[0])
    level = points[-1]
    for p in points[1:]:
        t = total(p)
        if t >= budget_w:
            # total() is linear between consecutive breakpoints
            frac = (budget_w - prev_total) / (t - prev_total) if t > prev_total else 0.0
            level = prev_level + frac * (p - prev_level)
            break
        prev_level, prev_total = p, t
    return [min(hi, max(lo, level)) for lo, hi in bounds_w]


def _by_class(gpus: Iterable[GpuSlot]) -> dict[str, list[GpuSlot]]:
    out: dict[str, list[GpuSlot]] = {}
    for g in gpus:
        out.setdefault(g.klass, []).append(g)
    return out


def split_budget(
    budget_kw_by_class: Mapping[str, float],
    gpus: Sequence[GpuSlot],
    *,
    idle_w: float = 0.0,
) -> SplitResult:
    """Per-GPU caps from per-class budgets (kW of GPU power).

    A class missing from ``budget_kw_by_class`` gets 0 kW (all its GPUs released). When a budget is
    below the class's floors, GPUs are released from the highest index down until the rest fit,
    each released GPU counted at ``idle_w`` (its work is to be shed); released GPUs keep their
    minimum cap, because no cap goes lower.
    """
    caps: dict[int, float] = {}
    released: list[int] = []
    class_kw: dict[str, float] = {}
    for name, members in _by_class(gpus).items():
        budget_w = max(0.0, float(budget_kw_by_class.get(name, 0.0)) * 1000.0)
        if budget_w != budget_w:  # NaN: trust nothing, release the class
            budget_w = 0.0
        keep = list(members)
        dropped: list[GpuSlot] = []
        while keep and sum(g.min_w for g in keep) + idle_w * len(dropped) > budget_w:
            dropped.append(keep.pop())
        fill = water_fill(budget_w - idle_w * len(dropped), [(g.min_w, g.max_w) for g in keep])
        for g, cap in zip(keep, fill, strict=True):
            caps[g.index] = cap
        for g in dropped:
            caps[g.index] = g.min_w
            released.append(g.index)
        class_kw[name] = sum(caps[g.index] for g in members) / 1000.0
    return SplitResult(caps, tuple(sorted(released)), class_kw)


def cut_to_total(
    caps_w: Mapping[int, float],
    allowed_w: float,
    gpus: Sequence[GpuSlot],
    *,
    shed_classes: Iterable[str] = (),
    idle_w: float = 0.0,
) -> SplitResult:
    """Lower ``caps_w`` until their sum (shed classes counted at ``idle_w`` per GPU) fits ``allowed_w``.

    Least important class first; inside a class the highest caps come down first (water level).
    Caps are never raised and never go below a GPU's floor; the remaining excess is ``deficit_w``.
    Caps of shed classes are parked at their floor.
    """
    shed = set(shed_classes)
    out: dict[int, float] = {}
    for g in gpus:
        cap = float(caps_w.get(g.index, g.min_w))
        cap = g.min_w if cap != cap else cap
        out[g.index] = g.min_w if g.klass in shed else max(g.min_w, min(g.max_w, cap))
    running = [g for g in gpus if g.klass not in shed]
    load_w = sum(out[g.index] for g in running) + idle_w * (len(gpus) - len(running))
    excess_w = load_w - allowed_w
    if excess_w > 0:
        classes = _by_class(running)
        order = sorted(classes, key=lambda n: (-classes[n][0].priority, n))
        for name in order:
            if excess_w <= 0:
                break
            members = classes[name]
            now_w = sum(out[g.index] for g in members)
            floor_w = sum(g.min_w for g in members)
            take_w = min(excess_w, now_w - floor_w)
            if take_w <= 0:
                continue
            # Lower the top: x_i = clamp(L, min_i, current_i) summing to now - take.
            new = water_fill(now_w - take_w, [(g.min_w, out[g.index]) for g in members])
            for g, cap in zip(members, new, strict=True):
                out[g.index] = min(out[g.index], cap)
            excess_w -= take_w
    class_kw = {n: sum(out[g.index] for g in m) / 1000.0 for n, m in _by_class(gpus).items()}
    return SplitResult(out, (), class_kw, max(0.0, excess_w))
