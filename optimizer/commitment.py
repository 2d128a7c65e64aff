"""Genset commitment: candidate on/off schedules, warm-up availability and the costs they fix.

On/off is not convex, so the commitment is decided by enumeration: each candidate schedule fixes
on/off per genset and step, the convex problem is solved for it (only Parameters change), and the
cheapest total (convex objective + idle fuel + start costs) wins.

Why a small candidate set is enough for one to three gensets:
  * The plan is receding-horizon: only its first step is applied, and the whole thing is re-solved
    every few seconds with fresh forecasts. The only commitment decision that takes effect now is
    "switch this genset now or not"; every later switch is re-decided when it comes near.
  * So per genset the candidates need to contain "switch now", "stay as is" and a few "switch
    later at step k" (to price waiting correctly). Candidate times are spaced geometrically
    (now, +H/32, +H/16, ... +H/2) because near-term timing matters most and is revisited anyway.
  * "Switch now" alone is not enough when switching back is what makes it pay: a running genset
    that could stop while PV carries the day must restart for the night, and "stop now, never
    restart" cannot carry it. So windows are offered too: switch at k1 and back at k2 (stop and
    restart for a running genset, start and stop for a stopped one), k1 among the earliest
    switch steps and k2 - k1 one of H/2, H/4, H/8 (at least the minimum down/up time the window
    needs; a restart leaves at least the minimum up time before the horizon's end).
  * Minimum up/down times only restrict the earliest switch step, so every candidate respects them
    by construction (a genset that has not yet met its minimum up time is not offered a stop before
    it has; likewise for starts and minimum down time).
  * With n gensets we do not enumerate the product of candidates (exponential); we improve one
    genset at a time holding the others at their incumbent schedule (coordinate search). Gensets
    on one bus are near-substitutes whose ordering is dominated by their fuel curves, so one pass
    in merit order finds the sensible schedules; the cost is at most 1 + n * (K + 12) convex
    solves (K switches, up to 4 x 3 windows), which for n <= 3 and K ~ 6 stays within the
    deadline. More gensets would want a MILP or a priority list.
  * Most candidates are not solved at all: last cycle's winner is tried first, and the others are
    pruned by a lower bound from stored dual prices (exact, see optimizer.highs_lp), so a cycle
    usually costs one or two full convex solves whatever K is (with HiGHS, plus a few simplex runs
    that a near-tie lets stop early at the objective bound). Each window has its own slot, so its
    own prices from last cycle bound it. The tests check that pruning never changes the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerctl.optimizer.params import BoolArray, FloatArray, GensetParams

# Window lengths per switch step (H/2, H/4, H/8 of the horizon H): shorter off-windows rarely pay
# for a restart, and every length adds one candidate per switch step.
WINDOW_LENGTHS = 3
# Windows open only at the earliest switch steps: a window opening late is re-decided before it.
WINDOW_STARTS = 4


@dataclass(frozen=True)
class Schedule:
    """On/off per genset (n_gen, T) and a label saying how it was built."""

    on: BoolArray
    label: str


def step_starts_s(steps_s: FloatArray) -> FloatArray:
    """Time of the start of each step relative to now."""
    return np.concatenate(([0.0], np.cumsum(steps_s)[:-1]))


def stay_schedule(on0: BoolArray, T: int) -> Schedule:
    """Every genset keeps its current state over the whole horizon."""
    return Schedule(on=np.repeat(np.asarray(on0, dtype=bool)[:, None], T, axis=1), label="stay")


def switch_steps(gen: GensetParams, on0: bool, state_s: float, steps_s: FloatArray, k_max: int) -> list[int]:
    """Candidate steps at which to switch (start if off, stop if on), respecting min up/down times."""
    t_start = step_starts_s(steps_s)
    horizon_s = float(np.sum(steps_s))
    earliest_s = max(0.0, (gen.min_up_s if on0 else gen.min_down_s) - state_s)
    feasible = np.nonzero(t_start >= earliest_s - 1e-9)[0]
    if feasible.size == 0 or k_max <= 0:
        return []
    first = int(feasible[0])
    targets = [t_start[first]] + [t_start[first] + horizon_s * 2.0 ** -(k_max - i) for i in range(1, k_max)]
    ks = {int(np.searchsorted(t_start, tt - 1e-9)) for tt in targets}
    return sorted(k for k in ks if first <= k < steps_s.shape[0])


def window_steps(gen: GensetParams, on0: bool, state_s: float, steps_s: FloatArray,
                 k_max: int) -> list[tuple[int, int, int]]:
    """(k1, k2) pairs for a switch at k1 and a switch back at k2 (a window), on a coarse grid.

    k1 is from `switch_steps`; k2 is k1 plus H/2, H/4, H/8 of the horizon H (`WINDOW_LENGTHS`), but at
    least the minimum time the window itself needs (min down for an off-window of a running
    genset, min up for an on-window of a stopped one). An off-window's restart runs to the end of
    the horizon and must leave it at least its minimum up time there; an on-window's stop must
    fall inside the horizon (the genset then stays off, which min down cannot violate).
    Returns (k1, k2, j) with j the index of the window length on the grid (1: H/2), which stays
    the same from one cycle to the next while k1 and k2 move with the clock.
    """
    steps = np.asarray(steps_s, dtype=float)
    T = steps.shape[0]
    t_start = step_starts_s(steps)
    horizon_s = float(np.sum(steps))
    window_min_s = gen.min_down_s if on0 else gen.min_up_s
    pairs: dict[tuple[int, int], int] = {}
    for k1 in switch_steps(gen, on0, state_s, steps, k_max)[:WINDOW_STARTS]:
        for j in range(1, min(WINDOW_LENGTHS, k_max - 1) + 1):
            t2 = t_start[k1] + max(window_min_s, horizon_s * 2.0 ** -j)
            k2 = int(np.searchsorted(t_start, t2 - 1e-9))
            if k2 >= T or k2 <= k1:
                continue
            if on0 and horizon_s - t_start[k2] < gen.min_up_s - 1e-9:
                continue
            pairs.setdefault((k1, k2), j)
    return sorted((k1, k2, j) for (k1, k2), j in pairs.items())


def windowed(base: Schedule, gen_idx: int, on0: bool, k1: int, k2: int) -> Schedule:
    """`base` with genset `gen_idx` in state `on0` except during steps k1..k2-1, where it is flipped."""
    on = base.on.copy()
    on[gen_idx, :] = on0
    on[gen_idx, k1:k2] = not on0
    verb = "off" if on0 else "on"
    tag = f"g{gen_idx}:{verb}@{k1}-{k2}"
    return Schedule(on=on, label=tag if base.label == "stay" else f"{base.label}+{tag}")


def switched(base: Schedule, gen_idx: int, on0: bool, k: int) -> Schedule:
    """`base` with genset `gen_idx` kept in its current state `on0` before step k and flipped from k on."""
    on = base.on.copy()
    on[gen_idx, :k] = on0
    on[gen_idx, k:] = not on0
    verb = "stop" if on0 else "start"
    return Schedule(on=on, label=f"g{gen_idx}:{verb}@{k}" if base.label == "stay" else f"{base.label}+g{gen_idx}:{verb}@{k}")


def available_fraction(gen: GensetParams, on: BoolArray, on0: bool, state_s: float,
                       steps_s: FloatArray) -> FloatArray:
    """Fraction of each step the genset can carry load: 0 when off or warming up, else 1.

    A run that started before now has been on for `state_s`; a run that starts at step k begins
    its warm-up at the start of step k. A step partly inside the warm-up gets the remaining fraction.
    """
    steps = np.asarray(steps_s, dtype=float)
    on_b = np.asarray(on, dtype=bool)
    end_s = np.cumsum(steps)  # end of each step, from now
    prev_on = np.concatenate(([bool(on0)], on_b[:-1]))
    # Start time of the run each step belongs to: the latest run start so far, or -state_s for the
    # run that was already going at time 0 (vectorised: this runs once per commitment candidate).
    starts = np.where(on_b & ~prev_on, end_s - steps, -np.inf)
    run_start_s = np.maximum.accumulate(starts)
    run_start_s = np.where(np.isneginf(run_start_s), -float(state_s), run_start_s)
    frac = np.clip((end_s - run_start_s - gen.warmup_s) / steps, 0.0, 1.0)
    return np.where(on_b, frac, 0.0)


def commitment_cost(gens: list[GensetParams], sched: Schedule, on0: BoolArray, steps_s: FloatArray) -> dict[str, float]:
    """Idle fuel (f0 while on, including warm-up) and start costs: fixed once the schedule is fixed."""
    dt_h = steps_s / 3600.0
    idle = 0.0
    starts = 0.0
    for i, g in enumerate(gens):
        row = sched.on[i]
        idle += g.fuel_price_per_l * g.f0_l_per_h * float(dt_h @ row)
        prev = np.concatenate(([bool(on0[i])], row[:-1]))
        starts += g.start_cost * float(np.sum(row & ~prev))
    return {"fuel_idle": idle, "start_cost": starts}
