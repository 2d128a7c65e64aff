"""Exact genset commitment: the compiled LP plus on/off binaries, solved as one MILP by HiGHS.

The LP (optimizer.model, compiled by optimizer.direct) takes the genset availability a[i, t] as a
Parameter: it enters the right-hand side b = b0 + J a (the genset's bounds, the reserve rows and,
through the stopped-genset reserve of `solution.standby_kw`, the extra reserve). The MILP makes a
a variable expression of the commitment:

  u[i, t] in {0, 1}  on;   s[i, t] in [0, 1] start;   z[i, t] in [0, 1] stop
  a[i, t] = u[i, t] - sum_k L_i[k, t] s[i, k]     L: the part of step t lost to a warm-up begun at
                                                   step k (the same rule as commitment.available_fraction)
  A x - J a + slack = b0                           the LP's rows, exactly as compiled
  s_t >= u_t - u_{t-1},  z_t >= u_{t-1} - u_t      (u_{-1} = the current state)
  sum_{k: start_t - start_k < min_up} s_k <= u_t  min up;  likewise z and 1 - u_t for min down
  u fixed where the current run or rest has not yet met its minimum time (as the enumeration does)
  cost: the LP's  + idle fuel f0 dt u + start_cost s

Steps may have any lengths (the windows are in seconds). s and z need no integrality: with u
binary their rows make them 0 or 1 at any optimum that matters (a larger s only loses availability).
The schedule found is then priced by the LP path for that fixed schedule (DispatchProblem), so the
plan's numbers come from the same code as every other plan; the MILP only chooses the schedule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from powerctl.optimizer.backend import SolverFailed
from powerctl.optimizer.commitment import Schedule, stay_schedule, step_starts_s
from powerctl.optimizer.direct import DirectBackend
from powerctl.optimizer.model import build
from powerctl.optimizer.params import BoolArray, DispatchInputs, FloatArray, GensetParams, SiteParams
from powerctl.optimizer.solution import ParamValues, param_values

# A schedule found when the time limit struck is used if its proven gap is at most this; further
# from the optimum, the enumeration (the next rung) is trusted more.
USABLE_GAP = 0.01


@dataclass
class MilpResult:
    sched: Schedule
    objective: float  # the MILP's objective (LP part + idle fuel + starts)
    gap: float  # HiGHS's relative MIP gap at the end
    status: str
    nodes: int = 0  # branch-and-bound nodes HiGHS explored


def warmup_loss(gen: GensetParams, steps_s: FloatArray) -> FloatArray:
    """L[k, t]: the part of step t not available after a start at the beginning of step k."""
    steps = np.asarray(steps_s, dtype=float)
    start = step_starts_s(steps)
    end = start + steps
    frac = np.clip((end[None, :] - start[:, None] - gen.warmup_s) / steps[None, :], 0.0, 1.0)
    loss = 1.0 - frac
    return np.where(np.arange(steps.size)[None, :] >= np.arange(steps.size)[:, None], loss, 0.0)


def window(starts_s: FloatArray, length_s: float) -> sp.csr_matrix:
    """W[t, k] = 1 where step k starts within `length_s` before (or at) step t's start."""
    d = starts_s[:, None] - starts_s[None, :]
    return sp.csr_matrix(((d >= 0) & (d < length_s - 1e-9)).astype(float))


class MilpCommitment:
    """The MILP over a `DirectBackend`'s compiled LP (HiGHS; linear model only)."""

    def __init__(self, backend: Any, params: SiteParams) -> None:
        import highspy

        self._hs = highspy
        self.be = backend
        self.p = params
        m = backend.model
        if m.avail is None or backend.P.nnz != 0:
            raise SolverFailed("MILP: needs gensets and a linear model")
        self.T = params.horizon_steps
        self.n_gen = len(params.gensets)
        steps = np.asarray(params.steps_s, dtype=float)
        B = sp.lil_matrix((backend.m, backend.n_theta + 1))
        B[backend._b_index, :] = backend.B
        B = sp.csc_matrix(B)
        av = backend.param_cols[m.avail.id]
        J = B[:, av:av + self.n_gen * self.T].tolil()  # column i + n_gen t (cvxpy's F order)
        ex = backend.param_cols[m.extra.id]
        J_ex = B[:, ex:ex + self.T]
        for i, g in enumerate(params.gensets):
            if g.warmup_s <= params.reserve_duration_s:
                # extra = given - rating (1 - a): d extra / d a = +rating (solution.standby_kw)
                cols = i + self.n_gen * np.arange(self.T)
                J[:, cols] = sp.csc_matrix(J[:, cols]) + g.rating_kw * J_ex
        self.J = sp.csc_matrix(J)
        # Per genset: u columns, s columns; a = u - L' s.
        n = self.T
        blocks_u, blocks_s = [], []
        for i, g in enumerate(params.gensets):
            Ji = self.J[:, i + self.n_gen * np.arange(n)]
            blocks_u.append(-Ji)
            blocks_s.append(Ji @ sp.csc_matrix(warmup_loss(g, steps).T))
        self.A_bin = sp.hstack(blocks_u + blocks_s + [sp.csc_matrix((backend.m, self.n_gen * n))]).tocsc()
        self.starts_s = step_starts_s(steps)
        self.dt_h = steps / 3600.0
        self.steps_s = steps
        self.stats = {"solved": 0, "failed": 0}
        self.n_all = backend.n_x + 3 * self.n_gen * n
        # The commitment rows never change; only their right-hand sides (the current state) do.
        eye = sp.eye(n, format="csr")
        shift = sp.eye(n, k=-1, format="csr")  # (shift u)_t = u_{t-1}
        blocks: list[sp.spmatrix] = [sp.hstack([backend.A, self.A_bin]).tocsr()]
        for i, g in enumerate(params.gensets):
            for parts in ([(1, eye), (0, shift - eye)], [(2, eye), (0, eye - shift)],
                          [(1, window(self.starts_s, g.min_up_s)), (0, -eye)],
                          [(2, window(self.starts_s, g.min_down_s)), (0, eye)]):
                mat = sp.lil_matrix((n, self.n_all))
                for kind, blk in parts:
                    mat[:, self._idx(kind, i)] = blk
                blocks.append(sp.csr_matrix(mat))
        A = sp.vstack(blocks).tocsc()
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_all, A.shape[0]
        lp.col_cost_ = np.zeros(self.n_all)
        lp.col_lower_, lp.col_upper_ = np.full(self.n_all, -inf), np.full(self.n_all, inf)
        lp.row_lower_, lp.row_upper_ = np.full(A.shape[0], -inf), np.full(A.shape[0], inf)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        integ = [highspy.HighsVarType.kContinuous] * self.n_all
        for k in range(backend.n_x, backend.n_x + self.n_gen * n):
            integ[k] = highspy.HighsVarType.kInteger
        lp.integrality_ = integ
        self.lp = lp
        # HiGHS options of every solve. No restart after the root: with the last plan's schedule as
        # the incumbent, HiGHS's presolve restart cost more than the search it saved (it doubled the
        # bench's p50); pseudo-costs trusted from the first branching instead of strong branching
        # (about half the LP iterations went there) trim the tail (README, optimizer section).
        # No `threads` option: HiGHS has one thread scheduler per process, and an instance asking for
        # another thread count than the one that made it fails its run with an error (the LP's
        # instances, optimizer.highs_lp, use the default).
        self.options: dict[str, Any] = {"output_flag": False, "mip_allow_restart": False,
                                        "mip_pscost_minreliable": 0}
        self.n_rows = A.shape[0]
        self.cols = np.arange(self.n_all, dtype=np.int32)
        self.row_idx = np.arange(self.n_rows, dtype=np.int32)

    def _fresh(self) -> Any:
        """A new HiGHS instance holding the model (about 0.2 ms). One per solve, because HiGHS's
        clock runs over an instance's whole life and the LP that completes the warm start is given
        the time limit less that clock: on a reused instance it timed out at once after the first
        second of solves, so the warm start was dropped every time. A fresh instance also carries
        nothing from one solve to the next, so a solve depends only on its inputs."""
        h = self._hs.Highs()
        for name, value in self.options.items():
            h.setOptionValue(name, value)
        h.passModel(self.lp)
        return h

    def _idx(self, kind: int, i: int) -> np.ndarray:
        """Columns (after the LP's) of u (kind 0), s (1) or z (2) of genset i."""
        base = self.be.n_x + (kind * self.n_gen + i) * self.T
        return base + np.arange(self.T)

    def solve(self, v: ParamValues, x: DispatchInputs, time_limit_s: float, gap: float,
              warm: BoolArray | None = None) -> MilpResult:
        hs = self._hs
        be, p, T, G = self.be, self.p, self.T, self.n_gen
        b, c, d = be._data(v)
        b0 = b - self.J @ v.avail.flatten(order="F")
        n_x = be.n_x
        inf = hs.kHighsInf
        cost = np.zeros(self.n_all)
        cost[:n_x] = c
        lo = np.full(self.n_all, -inf)
        hi = np.full(self.n_all, inf)
        lo[n_x:], hi[n_x:] = 0.0, 1.0
        rl_parts = [np.where(np.arange(be.m) < be.n_zero, b0, -inf)]
        ru_parts = [b0.copy()]
        for i, g in enumerate(p.gensets):
            u, s = self._idx(0, i), self._idx(1, i)
            on0 = float(bool(x.genset_on[i]))
            state_s = float(x.genset_state_s[i])
            cost[u] = g.fuel_price_per_l * g.f0_l_per_h * self.dt_h
            cost[s] = g.start_cost
            first = np.zeros(T)
            first[0] = on0
            # start: s - u + shift u >= -u_{-1} at t = 0; stop: z + u - shift u >= u_{-1} at t = 0;
            # min up: W s - u <= 0; min down: W z + u <= 1
            rl_parts += [-first, first, np.full(T, -inf), np.full(T, -inf)]
            ru_parts += [np.full(T, inf), np.full(T, inf), np.zeros(T), np.ones(T)]
            # The current run or rest keeps its state until its minimum time is met; a run still
            # warming up is not stopped inside its warm-up (its availability is a constant there).
            hold_s = max(0.0, (g.min_up_s if on0 else g.min_down_s) - state_s)
            if on0:
                hold_s = max(hold_s, g.warmup_s - state_s)
            held = self.starts_s < hold_s - 1e-9
            lo[u[held]] = hi[u[held]] = on0
            if on0 and state_s < g.warmup_s:
                # The warm-up left of the current run: a = u - loss0 with u held at 1 there, so
                # A x - J a = b0 becomes A x - J u = b0 - J loss0.
                loss0 = 1.0 - np.clip((self.starts_s + self.steps_s + state_s - g.warmup_s) / self.steps_s, 0.0, 1.0)
                corr = self.J[:, i + G * np.arange(T)] @ loss0
                rl_parts[0] = rl_parts[0] - corr
                ru_parts[0] = ru_parts[0] - corr
        h = self._fresh()
        h.changeColsCost(self.n_all, self.cols, cost)
        h.changeColsBounds(self.n_all, self.cols, lo, hi)
        h.changeRowsBounds(self.n_rows, self.row_idx, np.concatenate(rl_parts), np.concatenate(ru_parts))
        h.setOptionValue("time_limit", max(1e-3, float(time_limit_s)))
        h.setOptionValue("mip_rel_gap", float(gap))
        if warm is not None:
            # The last plan's schedule as a first incumbent (HiGHS completes the rest, or drops it).
            cols = np.concatenate([self._idx(0, i) for i in range(G)]).astype(np.int32)
            vals = np.clip(np.asarray(warm, dtype=float).reshape(-1), lo[cols], hi[cols])
            h.setSolution(cols.size, cols, vals)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        has_sol = int(info.primal_solution_status) == 2  # feasible
        usable = status == hs.HighsModelStatus.kTimeLimit and has_sol and info.mip_gap <= USABLE_GAP
        if status != hs.HighsModelStatus.kOptimal and not usable:
            self.stats["failed"] += 1
            gap_s = f" at gap {info.mip_gap:.1%}" if has_sol else " without a schedule"
            raise SolverFailed(f"MILP: {h.modelStatusToString(status)}{gap_s}")
        sol = np.array(h.getSolution().col_value, dtype=float)
        on = np.stack([sol[self._idx(0, i)] > 0.5 for i in range(G)])
        self.stats["solved"] += 1
        return MilpResult(Schedule(on=on, label="milp"), float(info.objective_function_value) + d,
                          float(info.mip_gap), "optimal" if status == hs.HighsModelStatus.kOptimal else "time_limit",
                          int(info.mip_node_count))


# Decision blocks of the coarse MILP (`CoarseMilp`): at least NEAR_BLOCK_S long while the block
# starts within NEAR_S of now, at least `SiteParams.milp_block_s` after.
NEAR_S = 3600.0
NEAR_BLOCK_S = 300.0


def coarse_blocks(steps_s: FloatArray, block_s: float) -> np.ndarray:
    """Block index per step: consecutive steps merged until a block is long enough (see above)."""
    steps = np.asarray(steps_s, dtype=float)
    out = np.zeros(steps.size, dtype=int)
    k, start_s, length_s = 0, 0.0, 0.0
    for t, dt in enumerate(steps):
        target_s = NEAR_BLOCK_S if start_s < NEAR_S else block_s
        if length_s >= target_s - 1e-9:
            k, start_s, length_s = k + 1, start_s + length_s, 0.0
        out[t] = k
        length_s += dt
    return out


def _block_mean(a: np.ndarray, block: np.ndarray, steps_s: np.ndarray, n: int) -> np.ndarray:
    """Duration-weighted mean over each block along the last axis (energy is kept)."""
    w = np.zeros((n, block.size))
    w[block, np.arange(block.size)] = steps_s
    w /= w.sum(axis=1, keepdims=True)
    return np.asarray(a, dtype=float) @ w.T


def _block_pick(a: np.ndarray, block: np.ndarray, n: int, how: str) -> np.ndarray:
    """The block's min, max or first value along the last axis."""
    a = np.asarray(a)
    first = np.searchsorted(block, np.arange(n))
    if how == "first":
        return a[..., first]
    red = np.minimum if how == "min" else np.maximum
    return red.reduceat(a.astype(float), first, axis=-1)


def coarse_inputs(x: DispatchInputs, block: np.ndarray, steps_s: np.ndarray) -> DispatchInputs:
    """The inputs on the blocks: forecasts and prices as means, limits at their tightest, the
    stale-forecast reserve at its largest, the billing period from each block's first step."""
    n = int(block[-1]) + 1
    T = block.size
    how = {"grid_import_max_kw": "min", "grid_export_max_kw": "min", "reserve_extra_kw": "max",
           "in_billing_period": "first"}
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(x):
        v = getattr(x, f.name)
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[-1] == T and f.name not in (
                "soc_pct", "genset_on", "genset_state_s", "prev_gpu_kw"):
            rule = how.get(f.name, "mean")
            changes[f.name] = (_block_mean(v, block, steps_s, n) if rule == "mean"
                               else _block_pick(v, block, n, rule))
    return dataclasses.replace(x, **changes)


class CoarseMilp:
    """The commitment decided per block (`coarse_blocks`: 5 min in the first hour, then
    `milp_block_s`) on a model of the same site compiled on those blocks, so HiGHS solves a MILP
    of ~35 steps instead of 288. The schedule is mapped back onto the plan's steps (its switching
    times are the blocks' starts, so min up/down times hold there too) and priced there by the LP
    path; `gap` is the coarse MILP's own. Where every step is already a block (hourly steps) it
    is the exact MILP."""

    def __init__(self, params: SiteParams) -> None:
        steps = np.asarray(params.steps_s, dtype=float)
        self.block = coarse_blocks(steps, params.milp_block_s)
        self.steps_s = steps
        self.p = dataclasses.replace(params, steps_s=np.bincount(self.block, weights=steps).astype(float))
        self.inner = MilpCommitment(DirectBackend(build(self.p, simplex_form=True), self.p), self.p)
        self.stats = self.inner.stats
        # HiGHS's sub-MIP heuristics (RINS, RENS, ...) took most of its time here: without them the
        # bench's coarse MILP solved 4-10x faster to the same gap (README, optimizer section).
        for opt in ("mip_heuristic_run_rins", "mip_heuristic_run_rens", "mip_heuristic_run_root_reduced_cost",
                    "mip_heuristic_run_feasibility_jump"):
            self.inner.options[opt] = False
        self.inner.options["mip_heuristic_effort"] = 0.0

    def solve(self, v: ParamValues, x: DispatchInputs, time_limit_s: float, gap: float,
              warm: BoolArray | None = None) -> MilpResult:
        """As `MilpCommitment.solve`; `v` (the plan's own steps) is not needed here."""
        xc = coarse_inputs(x, self.block, self.steps_s)
        n = self.p.horizon_steps
        vc = param_values(self.p, xc, stay_schedule(xc.genset_on, n))
        warm_c = None if warm is None else _block_pick(np.asarray(warm), self.block, n, "first")
        res = self.inner.solve(vc, xc, time_limit_s, gap, warm=warm_c)
        on = res.sched.on[:, self.block]
        return MilpResult(Schedule(on=on, label="milp"), res.objective, res.gap, res.status, res.nodes)


def make_milp(backend: Any, params: SiteParams) -> MilpCommitment | CoarseMilp:
    """The coarse MILP where blocks merge steps (`milp_block_s` > 0), else the exact one on the
    compiled LP of the plan's own steps."""
    steps = np.asarray(params.steps_s, dtype=float)
    if params.milp_block_s > 0 and coarse_blocks(steps, params.milp_block_s)[-1] + 1 < steps.size:
        return CoarseMilp(params)
    return MilpCommitment(backend, params)
