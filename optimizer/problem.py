"""DispatchProblem: build once, solve with a deadline, fall down the ladder, explain the result.

Ladder: primary solver -> secondary solver -> rule-based dispatch -> safe plan. `Plan.rung` says
which produced the plan and `Plan.notes` why the rungs above it did not.

Deadline. A solver call cannot be interrupted from Python, so three things together keep
`solve(inputs, deadline_s)` from blocking the caller past the deadline:
  1. the solver work runs on one worker thread; the caller waits for it at most until the deadline
     minus a small reserve for the rule-based fallback, then abandons it (its late result is
     discarded) and answers with the rule-based plan;
  2. each solver call gets the remaining time as its own time limit (HiGHS, Clarabel and OSQP all
     honour one), so an abandoned solve also ends soon and does not pile up;
  3. the commitment enumeration checks the clock before each candidate and keeps the best so far.
While an abandoned solve is still running the compiled problem is busy, so a solve that arrives
then skips the solver rungs (note says so) rather than queueing behind it.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from dataclasses import dataclass

import numpy as np

from powerctl.optimizer import fallback, validate
from powerctl.optimizer.backend import Backend, CandidatePruned, CvxpyBackend, SolverFailed
from powerctl.optimizer.commitment import (
    Schedule,
    commitment_cost,
    stay_schedule,
    switch_steps,
    switched,
    window_steps,
    windowed,
)
from powerctl.optimizer.direct import DirectBackend
from powerctl.optimizer.milp import CoarseMilp, MilpCommitment, make_milp
from powerctl.optimizer.model import Model, build
from powerctl.optimizer.params import DispatchInputs, Plan, SiteParams
from powerctl.optimizer.solution import (
    Dispatch,
    ParamValues,
    make_plan,
    net_grid,
    param_values,
    price_notes,
    schedule_free_values,
)

# Time kept back from the deadline for the rule-based fallback and plan assembly.
FALLBACK_RESERVE_S = 0.01
# A solution further outside a bound than this (relative to the bound's scale) is not trusted and
# the ladder goes on; smaller excursions (first-order solvers stop at ~1e-4) are clipped and the
# SoC trajectory repaired, so a plan always meets the hard limits exactly.
LIMIT_TOL = 1e-2
# The LP slot that prices the MILP's schedule (apart from the enumeration's slots).
MILP_SLOT = 10_000


@dataclass
class _Solved:
    sched: Schedule
    values: ParamValues
    dispatch: Dispatch
    objective: float
    status: str
    solver: str
    rung: str
    candidates: int
    commitment: str = "enumeration"
    mip_gap: float = float("nan")


def clean_dispatch(p: SiteParams, v: ParamValues, d: Dispatch, tol: float = LIMIT_TOL) -> Dispatch:
    """Clip a solver's powers into their bounds; raise SolverFailed if any was out by more than tol."""

    def clip(name: str, a: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
        lo_a, hi_a = np.broadcast_to(lo, a.shape), np.broadcast_to(hi, a.shape)
        scale = 1.0 + np.maximum(np.abs(lo_a), np.abs(hi_a))
        if not np.all(np.isfinite(a)) or np.any(a < lo_a - tol * scale) or np.any(a > hi_a + tol * scale):
            raise SolverFailed(f"solution out of bounds for {name}")
        return np.clip(a, lo_a, hi_a)

    cmax = np.array([b.max_charge_kw for b in p.batteries])[:, None]
    dmax = np.array([b.max_discharge_kw for b in p.batteries])[:, None]
    rating = np.array([g.rating_kw for g in p.gensets])[:, None]
    gmin = np.array([g.min_load_kw for g in p.gensets])[:, None]
    floors = np.array([c.p_min_kw for c in p.gpu_classes])[:, None]
    ch_net, dis = net_battery(clip("charge", d.ch, 0.0, cmax), clip("discharge", d.dis, 0.0, dmax))
    ch, dis = repair_soc(p, v, ch_net, dis)
    # Charge the repair took off (netting leaves the SoC higher) would spill, and spill may be
    # priced; PV is curtailed by as much instead, which is free.
    pv = curtail(clip("pv", d.pv, 0.0, v.pv_ub), (ch_net - ch).sum(axis=0))
    gpu = clip("gpu", d.gpu, floors, v.gpu_ub)
    # Ramp-up limits: a solver's small excess is taken off the budget (lowering is always allowed).
    rate = np.array([c.ramp_up_kw_per_s for c in p.gpu_classes])
    steps = np.asarray(p.steps_s, dtype=float)
    # The usual case: the solution keeps every ramp-up limit (the model has them as rows), and the
    # step-by-step pass below would return it unchanged (gpu is already at or above its floors).
    if np.any(np.isfinite(rate)) and not (np.all(gpu >= floors) and np.all(
            gpu <= np.concatenate((v.prev[:, None], gpu[:, :-1]), axis=1) + rate[:, None] * steps[None, :])):
        prev = v.prev.copy()
        for t in range(gpu.shape[1]):
            gpu[:, t] = np.maximum(floors[:, 0], np.minimum(gpu[:, t], prev + rate * steps[t]))
            prev = gpu[:, t]
    imp = exp = None
    if v.grid is not None and d.imp is not None and d.exp is not None:
        imp, exp = net_grid(clip("grid import", d.imp, 0.0, v.grid.imp_ub),
                            clip("grid export", d.exp, 0.0, v.grid.exp_ub))
    return Dispatch(pv=pv, ch=ch, dis=dis,
                    g=clip("genset", d.g, gmin * v.avail, rating * v.avail), gpu=gpu, imp=imp, exp=exp)


def curtail(pv: np.ndarray, less_kw: np.ndarray) -> np.ndarray:
    """PV (n_pv, T) lowered by `less_kw` (T,) per step, in proportion to each inverter's share."""
    total = pv.sum(axis=0)
    keep = np.divide(np.maximum(0.0, total - less_kw), total, out=np.ones_like(total), where=total > 0)
    return pv * keep[None, :]


def net_battery(ch: np.ndarray, dis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No battery charges and discharges in the same step: the LP may do both where burning energy
    in the losses pays (a spill penalty, a genset held at minimum load, a negative price), which a
    PCS cannot do. Netting keeps the net power, so the balance holds; it only saves losses, so the
    SoC ends higher (`repair_soc` trims charge where that would pass the top of the window)."""
    both = np.minimum(ch, dis)
    return ch - both, dis - both


def repair_soc(p: SiteParams, v: ParamValues, ch: np.ndarray, dis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trim charge/discharge where a solver's rounding would push the SoC outside its window."""
    ch, dis = ch.copy(), dis.copy()
    dt_h = np.asarray(p.steps_s, dtype=float) / 3600.0
    for i, b in enumerate(p.batteries):
        e = float(v.e0[i])
        e_min, e_max = b.capacity_kwh * b.soc_min_pct / 100.0, b.capacity_kwh * b.soc_max_pct / 100.0
        traj = e + np.cumsum(dt_h * (b.eta_charge * ch[i] - dis[i] / b.eta_discharge))
        # A simplex vertex sits exactly on the window's edge, which the cumulative sum misses by
        # float round-off; that is not worth the step-by-step pass (which rounds the same way).
        eps = 1e-9 * b.capacity_kwh
        if np.all((traj >= e_min - eps) & (traj <= e_max + eps)):
            continue  # the usual case: nothing to repair
        for t in range(dt_h.shape[0]):
            e_new = e + dt_h[t] * (b.eta_charge * ch[i, t] - dis[i, t] / b.eta_discharge)
            if e_new > e_max:
                ch[i, t] = max(0.0, ch[i, t] - (e_new - e_max) / (b.eta_charge * dt_h[t]))
            elif e_new < e_min:
                dis[i, t] = max(0.0, dis[i, t] - (e_min - e_new) * b.eta_discharge / dt_h[t])
            e = e + dt_h[t] * (b.eta_charge * ch[i, t] - dis[i, t] / b.eta_discharge)
    return ch, dis


class DispatchProblem:
    """The dispatch optimizer for one site: compiled once, re-solved with new inputs."""

    def __init__(self, params: SiteParams, backend: str = "auto") -> None:
        validate.check_site(params)
        self.params = params
        self.steps_s = np.asarray(params.steps_s, dtype=float)
        primary = validate.primary_solver(params)
        self.solvers = [primary, validate.SOLVERS[primary]]
        t0 = time.perf_counter()
        # The simplex form (more bounded variables, fewer rows) suits HiGHS; Clarabel and OSQP are
        # faster on the form with fewer variables (see optimizer.model).
        self.model: Model = build(params, simplex_form=primary == "HIGHS")
        self.backend: Backend = self._make_backend(backend)
        self.compile_time_s = time.perf_counter() - t0
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-solver")
        self._busy = threading.Lock()
        # Winning slot per commitment stage last cycle (tried first next cycle).
        self._last_winner: dict[int, tuple[int, int]] = {}
        # Test hooks: force a rung by making solvers fail ("primary", "secondary", "rule", "milp").
        self.force_fail: set[str] = set()
        self.milp, self.milp_note = self._make_milp()
        self._last_milp_on: np.ndarray | None = None  # the last MILP schedule, the next one's warm start
        # How many plans each commitment rung decided (bench and telemetry).
        self.commitment_counts: dict[str, int] = {}
        self._free: tuple[DispatchInputs, ParamValues] | None = None  # (inputs, their schedule-free values)

    def _make_backend(self, kind: str) -> Backend:
        if kind in ("auto", "direct"):
            try:
                return DirectBackend(self.model, self.params)
            except Exception:
                if kind == "direct":
                    raise
        return CvxpyBackend(self.model)

    def _make_milp(self) -> tuple[MilpCommitment | CoarseMilp | None, str]:
        """The exact commitment when configured and possible, else None and why not."""
        p = self.params
        if p.commitment != "milp" or not p.gensets:
            return None, ""
        if self.solvers[0] != "HIGHS" or not isinstance(self.backend, DirectBackend):
            return None, "milp: needs HiGHS on the compiled linear model; commitment by enumeration"
        try:
            return make_milp(self.backend, p), ""
        except Exception as exc:  # a model the MILP cannot take still plans by enumeration
            return None, f"milp: {type(exc).__name__}: {exc}; commitment by enumeration"

    def _milp_commit(self, x: DispatchInputs, solver: str, rung: str, deadline_at: float) -> _Solved:
        """The MILP's schedule, priced by the LP path for that fixed schedule (see optimizer.milp)."""
        assert self.milp is not None
        p = self.params
        if "milp" in self.force_fail:
            raise SolverFailed("forced failure")
        left = deadline_at - time.perf_counter()
        limit = min(p.milp_time_limit_s, 0.6 * left)
        if limit <= 1e-3:
            raise SolverFailed("no time left")
        v0 = param_values(p, x, stay_schedule(x.genset_on, self.steps_s.shape[0]))
        res = self.milp.solve(v0, x, limit, p.milp_gap, warm=self._last_milp_on)
        v, d, obj = self._solve_one(x, res.sched, solver, deadline_at - time.perf_counter(), slot=MILP_SLOT)
        self._last_milp_on = res.sched.on
        return _Solved(res.sched, v, d, obj, "optimal", solver, rung, 1, commitment="milp", mip_gap=res.gap)

    # -- one convex solve ---------------------------------------------------------------------

    def _solve_one(self, x: DispatchInputs, sched: Schedule, solver: str, time_limit_s: float,
                   slot: int = 0, best: float = np.inf) -> tuple[ParamValues, Dispatch, float]:
        """Solve for one schedule; with `best`, a backend may give up (CandidatePruned) once it has
        proved the total cost cannot get below it."""
        if self._free is None or self._free[0] is not x:
            self._free = (x, schedule_free_values(self.params, x))  # the same for every candidate of x
        v = param_values(self.params, x, sched, self._free[1])
        fixed = commitment_cost(self.params.gensets, sched, x.genset_on, self.steps_s)
        fixed_cost = fixed["fuel_idle"] + fixed["start_cost"]
        d, obj, _status = self.backend.solve(v, solver, time_limit_s, slot, bound=best - fixed_cost)
        d = clean_dispatch(self.params, v, d)
        return v, d, obj + fixed_cost

    def _enumerate(self, x: DispatchInputs, solver: str, rung: str, deadline_at: float) -> _Solved:
        """Commitment by coordinate search over candidate schedules (see optimizer.commitment).

        Stage 0 tries "stay" and genset 0's switches and windows; stage i > 0 genset i's switches
        and windows from the incumbent. Within a stage the order does not change the result (the best one wins), so the
        slot that won last cycle goes first: it usually wins again, and its cost lets the backend
        prune the others by bounds instead of solving them.
        """
        p = self.params
        T = self.steps_s.shape[0]
        best: _Solved | None = None
        tried = 0
        incumbent = stay_schedule(x.genset_on, T)
        for i in range(max(1, len(p.gensets))):
            # (key, slot, schedule): the key names the candidate's position (for "last winner
            # first"), the slot the solver state it shares.
            stage: list[tuple[tuple[int, int], int, Schedule]] = [((0, 0), 0, incumbent)] if i == 0 else []
            if p.gensets:
                on0 = bool(x.genset_on[i])
                state_s = float(x.genset_state_s[i])
                ks = sorted(switch_steps(p.gensets[i], on0, state_s, self.steps_s, p.commitment_candidates),
                            reverse=True)
                # Each candidate position ("slot") keeps its own solver state: from one cycle to the
                # next a slot sees the same kind of schedule, so a hot-started simplex needs few pivots.
                first = 1 + i * p.commitment_candidates
                slot_of = {k: first + j for j, k in enumerate(ks)}
                stage += [((slot_of[k], 0), slot_of[k], switched(incumbent, i, on0, k)) for k in ks]
                # Windows (switch at k1, back at k2) get a slot per (k1 position, window length):
                # a slot's own prices from last cycle are what usually prunes it without a solve.
                K = p.commitment_candidates
                win_first = 1 + len(p.gensets) * K + i * K * K
                for k1, k2, j in window_steps(p.gensets[i], on0, state_s, self.steps_s, K):
                    slot = win_first + (slot_of[k1] - first) * K + j
                    stage.append(((slot, 0), slot, windowed(incumbent, i, on0, k1, k2)))
            stage.sort(key=lambda sc: sc[0] != self._last_winner.get(i))
            for key, slot, cand in stage:
                left = deadline_at - time.perf_counter()
                if left <= 0:
                    if best is None:
                        raise SolverFailed("no time left for the first candidate")
                    best.status = "optimal_commitment_truncated"
                    return best
                tried += 1
                try:
                    v, d, obj = self._solve_one(x, cand, solver, left, slot,
                                                best=np.inf if best is None else best.objective)
                except CandidatePruned:
                    continue
                except SolverFailed:
                    if slot == 0 and len(stage) == 1:
                        raise
                    continue  # a candidate the solver cannot do is simply not chosen
                if best is None or obj < best.objective - 1e-9:
                    best = _Solved(cand, v, d, obj, "optimal", solver, rung, tried)
                    self._last_winner[i] = key
            if best is None:
                raise SolverFailed("no commitment candidate could be solved")
            best.candidates = tried
            incumbent = best.sched
        assert best is not None
        return best

    def _solver_rungs(self, x: DispatchInputs, deadline_at: float) -> tuple[_Solved | None, list[str]]:
        notes: list[str] = []
        for rung, solver in zip(("primary", "secondary"), self.solvers, strict=True):
            if rung in self.force_fail:
                notes.append(f"{rung} ({solver}): forced failure")
                continue
            if time.perf_counter() >= deadline_at:
                notes.append(f"{rung} ({solver}): no time left")
                continue
            if self.milp is not None and rung == "primary" and solver == "HIGHS":
                try:
                    return self._milp_commit(x, solver, rung, deadline_at), notes
                except Exception as exc:  # the enumeration is the next rung
                    notes.append(f"milp ({solver}): {type(exc).__name__}: {exc}; commitment by enumeration")
            elif self.milp_note:
                notes.append(self.milp_note)
            try:
                return self._enumerate(x, solver, rung, deadline_at), notes
            except SolverFailed as exc:
                notes.append(f"{rung} ({solver}): {exc}")
            except Exception as exc:  # numerics inside a solver must never reach the control loop
                notes.append(f"{rung} ({solver}): {type(exc).__name__}: {exc}")
        return None, notes

    def _locked_rungs(self, x: DispatchInputs, deadline_at: float) -> tuple[_Solved | None, list[str]]:
        try:
            return self._solver_rungs(x, deadline_at)
        finally:
            self._busy.release()

    # -- public -------------------------------------------------------------------------------

    def solve(self, inputs: DispatchInputs, deadline_s: float = 1.0) -> Plan:
        """Plan for `inputs` within `deadline_s`. Raises only InputError (bad inputs)."""
        t0 = time.perf_counter()
        x = validate.check_inputs(self.params, inputs)
        deadline_at = t0 + max(0.0, deadline_s)
        solver_deadline = deadline_at - FALLBACK_RESERVE_S
        solved: _Solved | None = None
        notes: list[str] = []
        if not self._busy.acquire(blocking=False):
            notes.append("solvers: still busy with an abandoned late solve")
        else:
            fut = self._pool.submit(self._locked_rungs, x, solver_deadline)
            try:
                solved, notes = fut.result(timeout=max(0.0, solver_deadline - time.perf_counter()))
            except cf.TimeoutError:
                notes.append(f"solvers: deadline {deadline_s * 1e3:.0f} ms passed, late result abandoned")
            except Exception as exc:
                notes.append(f"solvers: {type(exc).__name__}: {exc}")
        if self.params.grid is not None:
            notes += price_notes(x)
        if solved is not None:
            plan = make_plan(self.params, x, solved.values, solved.sched, solved.dispatch,
                             status=solved.status, solver=solved.solver, rung=solved.rung,
                             solve_time_s=time.perf_counter() - t0, notes=notes)
            plan.commitment = solved.commitment if self.params.gensets else "none"
            plan.mip_gap = solved.mip_gap
        else:
            plan = self._fallback(x, notes, t0)
            plan.commitment = ("rule" if plan.rung == "rule" else "none") if self.params.gensets else "none"
        self.commitment_counts[plan.commitment] = self.commitment_counts.get(plan.commitment, 0) + 1
        return plan

    def _fallback(self, x: DispatchInputs, notes: list[str], t0: float) -> Plan:
        if "rule" not in self.force_fail:
            try:
                sched, v, d = fallback.rule_dispatch(self.params, x)
                return make_plan(self.params, x, v, sched, d, status="rule_based", solver="rules", rung="rule",
                                 solve_time_s=time.perf_counter() - t0, notes=notes)
            except Exception as exc:
                notes.append(f"rule: {type(exc).__name__}: {exc}")
        else:
            notes.append("rule: forced failure")
        sched, v, d = fallback.safe_dispatch(self.params, x)
        return make_plan(self.params, x, v, sched, d, status="safe", solver="none", rung="safe",
                         solve_time_s=time.perf_counter() - t0, notes=notes)

    def close(self) -> None:
        """Stop the worker thread (does not wait for an abandoned solve)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
