"""Fast path: cvxpy compiles the DPP problem once; each solve calls HiGHS/Clarabel/OSQP on updated vectors.

cvxpy's per-solve work for a DPP problem (parameter vector, tensor product, solver interface,
solution unpacking) costs several milliseconds for a 288-step horizon, more than the solve itself.
Our model puts every Parameter in a constraint's constant side or, for grid prices, in the cost
(see optimizer.model), never in the matrix, so after compilation the solver data is

    minimise 1/2 x'Px + c(theta)'x  s.t.  A x + s = b(theta), s in {0}^z x R+^l,
    b(theta) = B [theta; 1],  c(theta) = Q [theta; 1]

with P and A constant; c is constant too unless grid prices (Parameters in the objective) are in
the model, and then HiGHS gets the changed costs, Clarabel and OSQP an update of q. We take A, P
and the affine maps B and Q once from cvxpy's compiled `ParamConeProg` (cvxpy's own tensor, so the
maps are exactly what cvxpy would compute), check on a random parameter draw that B and Q reproduce
cvxpy's b and c, and then per solve do one sparse mat-vec and hand b (and c) to a solver object
that was set up once:
  * HiGHS (dual simplex, LP only): one instance per commitment slot, hot-started from that slot's
    last basis; only changed bounds are passed (optimizer.highs_lp). Fastest here by far.
  * Clarabel (interior point): `update(b=...)` reuses the KKT structure and symbolic factorisation;
    interior-point methods cannot use a warm start, so none is passed.
  * OSQP (ADMM): the same rows as l <= A x <= u (zero cone: l = u = b; non-negative cone: u = b),
    `update(l=..., u=...)` keeps the factorisation, and the previous solution warm-starts the next.
Commitment candidates (LP only): the row prices of earlier solves give every candidate a lower bound
for the price of one dot product (optimizer.highs_lp.Prices); a candidate whose bound is above the
best total so far is not solved at all, and HiGHS stops one early once its dual objective proves it.
If any check fails at build time, DispatchProblem falls back to the plain cvxpy backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import clarabel
import cvxpy as cp
import numpy as np
import osqp
import scipy.sparse as sp
from cvxpy.reductions.solvers.conic_solvers.clarabel_conif import dims_to_solver_cones

from powerctl.optimizer.backend import CandidatePruned, SolverFailed, parameter_pairs
from powerctl.optimizer.highs_lp import PRUNE_MARGIN, Bounds, HighsLp, LpRows, Prices
from powerctl.optimizer.model import Model
from powerctl.optimizer.params import FloatArray, SiteParams
from powerctl.optimizer.solution import Dispatch, ParamValues


class DirectBackend:
    """Solves the compiled problem by calling the solvers on cvxpy's data directly."""

    name = "direct"

    def __init__(self, model: Model, params: SiteParams) -> None:
        self.model = model
        rng = np.random.default_rng(0)
        for prm in model.parameters():
            prm.value = rng.uniform(0.0, 1.0, prm.shape)
        data, _chain, _inv = model.problem.get_problem_data(cp.CLARABEL, ignore_dpp=False)
        prog = data[cp.settings.PARAM_PROB]
        n_theta = int(prog.total_param_size)
        self.n_x = int(prog.x.size)
        red = prog.reduced_A
        red.cache(False)
        mat = sp.csr_matrix(red.reduced_mat)
        indices, indptr, shape = red.problem_data_index
        m = int(shape[0])
        n = int(shape[1]) - 1
        a_end = int(indptr[n])
        if sp.csr_matrix(mat[:a_end, :n_theta]).count_nonzero() != 0:
            raise SolverFailed("direct: constraint matrix depends on parameters")
        # The objective's linear part may depend on Parameters (grid prices): c = Q [theta; 1].
        q_tensor = sp.csc_matrix(prog.q)
        self.Q = sp.csr_matrix(q_tensor)
        self.c_varies = sp.csc_matrix(q_tensor[:, :n_theta]).count_nonzero() != 0
        # b = B @ theta_vec, B scattered from the tensor rows that hold b's entries.
        b_rows = np.asarray(indices[a_end:], dtype=np.int64)
        self.B = sp.csr_matrix(sp.coo_matrix(mat[a_end:, :]).tocsr()[np.argsort(b_rows)])
        self._b_index = np.sort(b_rows)
        self.m = m
        self.A = sp.csc_matrix(data["A"])
        self.c = np.asarray(data["c"], dtype=float)
        P = data.get("P")
        self.P = sp.triu(sp.csc_matrix(P)).tocsc() if P is not None else sp.csc_matrix((self.n_x, self.n_x))
        self.dims = data["dims"]
        self.n_zero = int(self.dims.zero)
        self.param_cols = {int(k): int(v) for k, v in prog.param_id_to_col.items()}
        self.var_cols = {int(k): int(v) for k, v in prog.var_id_to_col.items()}
        self.n_theta = n_theta
        # Check the map against cvxpy on a fresh random draw (guards against any cvxpy change).
        for prm in model.parameters():
            prm.value = rng.uniform(0.0, 2.0, prm.shape)
        check, _, _ = model.problem.get_problem_data(cp.CLARABEL, ignore_dpp=False)
        theta = self._theta({prm.id: np.asarray(prm.value) for prm in model.parameters()})
        if not np.allclose(self._b_from_theta(theta), check["b"], rtol=1e-10, atol=1e-10):
            raise SolverFailed("direct: parameter map does not reproduce cvxpy's data")
        if not np.allclose(self._c_from_theta(theta)[0], check["c"], rtol=1e-10, atol=1e-10):
            raise SolverFailed("direct: cost map does not reproduce cvxpy's data")
        self.d = float(q_tensor[self.n_x, n_theta])  # constant term of the objective (without Parameters)
        self._cost: FloatArray = self.c  # the cost vector of the current solve
        self._clarabel: Any = None
        self._osqp: Any = None
        self._highs: dict[int, HighsLp] = {}
        self._last_highs: HighsLp | None = None
        self._lp_rows: LpRows | None = None
        # Row prices of the last solve per commitment slot and overall (for pruning candidates).
        self._prices: dict[int, Callable[[], Prices | None]] = {}
        self._last_prices: Callable[[], Prices | None] | None = None
        # Candidate pruning by bounds (tests switch it off to compare against full enumeration).
        self.prune = True
        # How candidates ended: solved, pruned by stored prices, stopped by the solver's bound.
        self.stats = {"solved": 0, "pruned_by_prices": 0, "pruned_by_solver": 0}
        self._clarabel_tl = -1.0
        # the schedule-free values of the last theta built in full, and that theta (see _theta_of)
        self._theta_last: tuple[tuple[object, ...], FloatArray] | None = None

    # -- data ----------------------------------------------------------------------------------

    def _theta(self, values: dict[int, FloatArray]) -> FloatArray:
        theta = np.zeros(self.n_theta + 1)
        for pid, col in self.param_cols.items():
            if pid == -1:
                theta[col] = 1.0  # cvxpy's constant-offset column
            else:
                val = np.asarray(values[pid], dtype=float).flatten(order="F")
                theta[col:col + val.size] = val
        return theta

    def _b_from_theta(self, theta: FloatArray) -> FloatArray:
        b = np.zeros(self.m)
        b[self._b_index] = self.B @ theta
        return b

    def _c_from_theta(self, theta: FloatArray) -> tuple[FloatArray, float]:
        """(c, constant) of the objective for these Parameter values."""
        q = self.Q @ theta
        return np.asarray(q[:self.n_x], dtype=float), float(q[self.n_x])

    def _b(self, v: ParamValues) -> FloatArray:
        """The right-hand side b for the values `v`."""
        return self._data(v)[0]

    def _theta_of(self, v: ParamValues) -> FloatArray:
        """theta for `v`. The commitment candidates of one solve share every value but `avail` and
        `extra` (the very same arrays, see optimizer.solution.schedule_free_values), so after the
        first only those two are written into a copy of the last theta. (Values are never changed in
        place, and every `schedule_free_values` call makes `e0` anew, so a new solve never matches.)"""
        m = self.model
        shared = (v.pv_ub, v.gpu_ub, v.other, v.e0, v.prev, v.grid)
        last = self._theta_last
        if last is not None and all(a is b for a, b in zip(last[0], shared, strict=True)):
            theta = last[1].copy()
            for prm, val in ((m.avail, v.avail), (m.extra, v.extra)):
                if prm is not None:
                    col = self.param_cols[prm.id]
                    flat = np.asarray(val, dtype=float).flatten(order="F")
                    theta[col:col + flat.size] = flat
            return theta
        theta = self._theta({prm.id: val for prm, val in parameter_pairs(m, v) if prm is not None})
        self._theta_last = (shared, theta)
        return theta

    def _data(self, v: ParamValues) -> tuple[FloatArray, FloatArray, float]:
        """(b, c, objective constant) for the values `v`."""
        theta = self._theta_of(v)
        if not self.c_varies:
            return self._b_from_theta(theta), self.c, self.d
        c, d = self._c_from_theta(theta)
        return self._b_from_theta(theta), c, d

    def _unpack(self, xsol: FloatArray, v: ParamValues) -> Dispatch:
        T = v.other.shape[0]
        n_bat = v.e0.shape[0]

        def get(var: cp.Variable | None, shape: tuple[int, ...]) -> FloatArray:
            if var is None:
                return np.zeros(shape)
            col = self.var_cols[var.id]
            return xsol[col:col + var.size].reshape(var.shape, order="F").reshape(shape)

        m = self.model
        return Dispatch(pv=get(m.pv, v.pv_ub.shape), ch=get(m.ch, (n_bat, T)), dis=get(m.dis, (n_bat, T)),
                        g=get(m.g, v.avail.shape), gpu=get(m.gpu, v.gpu_ub.shape),
                        imp=None if m.imp is None else get(m.imp, (T,)),
                        exp=None if m.exp is None else get(m.exp, (T,)))

    # -- solvers -------------------------------------------------------------------------------

    def _solve_clarabel(self, b: FloatArray, c: FloatArray,
                        time_limit_s: float) -> tuple[FloatArray, float, FloatArray]:
        if self._clarabel is None:
            st = clarabel.DefaultSettings()
            st.verbose = False
            st.presolve_enable = False  # keeps data updates allowed
            # Iterative refinement doubles the time per iteration on this problem and did not change
            # optima beyond 1e-9 in our tests; every solution is bound-checked afterwards anyway.
            st.iterative_refinement_enable = False
            st.time_limit = time_limit_s
            self._clarabel = clarabel.DefaultSolver(self.P, c, self.A, b, dims_to_solver_cones(self.dims), st)
            self._clarabel_tl = time_limit_s
        else:
            if abs(time_limit_s - self._clarabel_tl) > 1e-3:
                st = self._clarabel.get_settings()
                st.time_limit = time_limit_s
                self._clarabel.update(b=b, q=c, settings=st)
                self._clarabel_tl = time_limit_s
            else:
                self._clarabel.update(b=b, q=c)
        sol = self._clarabel.solve()
        status = str(sol.status)
        if status not in ("Solved", "AlmostSolved"):
            raise SolverFailed(f"CLARABEL: status {status}")
        # Clarabel's z >= 0 prices A x <= b; in the row-bound convention that is -z.
        return np.asarray(sol.x, dtype=float), float(sol.obj_val), -np.asarray(sol.z, dtype=float)

    def _solve_osqp(self, b: FloatArray, c: FloatArray, time_limit_s: float) -> tuple[FloatArray, float, FloatArray]:
        lo = np.full(self.m, -np.inf)
        lo[: self.n_zero] = b[: self.n_zero]
        if self._osqp is None:
            self._osqp = osqp.OSQP()
            self._osqp.setup(self.P, c, self.A, lo, b, verbose=False, eps_abs=1e-4, eps_rel=1e-4,
                             max_iter=20000, polishing=True, warm_starting=True, time_limit=time_limit_s)
        else:
            self._osqp.update(q=c, l=lo, u=b)
            self._osqp.update_settings(time_limit=time_limit_s)
        res = self._osqp.solve(raise_error=False)
        status = str(res.info.status)
        if status not in ("solved", "solved inaccurate"):
            raise SolverFailed(f"OSQP: status {status}")
        return np.asarray(res.x, dtype=float), float(res.info.obj_val), -np.asarray(res.y, dtype=float)

    def _solve_highs(self, bd: Bounds, c: FloatArray, time_limit_s: float, slot: int,
                     obj_bound: float) -> tuple[FloatArray, float]:
        # One HiGHS instance per commitment slot, each hot-started from its own last basis: from one
        # cycle to the next a slot sees the same kind of schedule, so few pivots are needed.
        if slot not in self._highs:
            self._highs[slot] = HighsLp(self._rows())
            # Solve a new slot to the end (no bound) so that it has a basis and prices from now on,
            # starting from the basis solved last (much closer than a cold start).
            obj_bound = np.inf
            if self._last_highs is not None:
                self._highs[slot].h.setBasis(self._last_highs.h.getBasis())
        lp = self._highs[slot]
        self._last_highs = lp
        try:
            return lp.solve(bd, time_limit_s, obj_bound, cost=c)
        finally:
            if lp.solved:
                # Prices are fetched from HiGHS only if pruning asks for them.
                self._prices[slot] = self._last_prices = lambda: lp.prices

    def _lazy_prices(self, y: FloatArray) -> Callable[[], Prices | None]:
        """Prices from y, built on first use (most solves never need them)."""
        cache: list[Prices] = []

        def get() -> Prices | None:
            if not cache:
                cache.append(Prices(self._rows(), y, self._cost))
            return cache[0]

        return get

    def _rows(self) -> LpRows:
        if self._lp_rows is None:
            self._lp_rows = LpRows(self.A, self.c, self.n_zero)
        return self._lp_rows

    def _prune(self, b: FloatArray, slot: int, obj_bound: float) -> None:
        """Raise CandidatePruned if stored row prices prove the LP optimum is above `obj_bound`."""
        own = self._prices.get(slot)
        # the slot solved last has the last prices too: one bound from them is enough
        sources = [src for src in (own, None if self._last_prices is own else self._last_prices) if src is not None]
        # Prices priced for another cost vector (grid prices of an earlier cycle) are re-priced.
        prices = [pr.for_cost(self._cost) for pr in (src() for src in sources) if pr is not None]
        lb = max((pr.bound(b) for pr in prices), default=-np.inf)
        if lb > obj_bound + PRUNE_MARGIN * (1.0 + abs(obj_bound)):
            self.stats["pruned_by_prices"] += 1
            raise CandidatePruned("Lagrangian bound above the best candidate")

    def solve(self, v: ParamValues, solver: str, time_limit_s: float, slot: int = 0,
              bound: float = np.inf) -> tuple[Dispatch, float, str]:
        """Solve for `v`; the objective returned excludes cvxpy's constant offset (added back here).

        For a linear model and a finite `bound`, a candidate whose objective is proved >= bound
        raises CandidatePruned, often without calling the solver (see optimizer.highs_lp).
        """
        b, c, d = self._data(v)
        self._cost = c
        tl = max(1e-3, float(time_limit_s))
        lp = self.P.nnz == 0
        obj_bound = bound - d if (lp and self.prune) else np.inf
        # A HiGHS slot is solved in full the first time (its basis is what makes later solves cheap).
        if np.isfinite(obj_bound) and (solver != "HIGHS" or slot in self._highs):
            self._prune(b, slot, obj_bound)
        y: FloatArray | None
        if solver == "CLARABEL":
            x, obj, z = self._solve_clarabel(b, c, tl)
            y = z[self._rows().g_rows] if lp else None
            status = "optimal"
        elif solver == "OSQP":
            x, obj, z = self._solve_osqp(b, c, tl)
            y = z[self._rows().g_rows] if lp else None
            status = "optimal"
        elif solver == "HIGHS":
            if not lp:
                raise SolverFailed("HIGHS: only for linear problems (ramp_quad_per_kw2 must be 0)")
            try:
                x, obj = self._solve_highs(self._rows().bounds(b), c, tl, slot, obj_bound)
            except CandidatePruned:
                self.stats["pruned_by_solver"] += 1
                raise
            y, status = None, "optimal"
        else:
            raise SolverFailed(f"unknown solver {solver}")
        if y is not None:
            self._prices[slot] = self._last_prices = self._lazy_prices(y)
        if not np.all(np.isfinite(x)):
            raise SolverFailed(f"{solver}: non-finite solution")
        self.stats["solved"] += 1
        return self._unpack(x, v), obj + d, status
