"""Fast path: cvxpy compiles the DPP problem once; each solve calls Clarabel/OSQP on updated vectors.

cvxpy's per-solve work for a DPP problem (parameter vector, tensor product, solver interface,
solution unpacking) costs several milliseconds for a 288-step horizon, more than the solve itself.
Our model puts every Parameter in a constraint's constant side (see optimizer.model), so after
compilation the solver data is

    minimise 1/2 x'Px + c'x  s.t.  A x + s = b(theta), s in {0}^z x R+^l,    b(theta) = B [theta; 1]

with P, c, A constant. We take A, P, c and the affine map B once from cvxpy's compiled
`ParamConeProg` (cvxpy's own tensor, so the map is exactly what cvxpy would compute), check on a
random parameter draw that B reproduces cvxpy's b, and then per solve do one sparse mat-vec and
hand b to a solver object that was set up once:
  * Clarabel (interior point): `update(b=...)` reuses the KKT structure and symbolic factorisation;
    interior-point methods cannot use a warm start, so none is passed.
  * OSQP (ADMM): the same rows as l <= A x <= u (zero cone: l = u = b; non-negative cone: u = b),
    `update(l=..., u=...)` keeps the factorisation, and the previous solution warm-starts the next.
If any check fails at build time, DispatchProblem falls back to the plain cvxpy backend.
"""

from __future__ import annotations

from typing import Any

import clarabel
import cvxpy as cp
import numpy as np
import osqp
import scipy.sparse as sp
from cvxpy.reductions.solvers.conic_solvers.clarabel_conif import dims_to_solver_cones

from optimizer.backend import SolverFailed, set_parameters
from optimizer.model import Model
from optimizer.params import FloatArray, SiteParams
from optimizer.solution import Dispatch, ParamValues


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
        q_tensor = sp.csc_matrix(prog.q)
        if sp.csc_matrix(q_tensor[:, :n_theta]).count_nonzero() != 0:
            raise SolverFailed("direct: objective depends on parameters")
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
        mine = self._b_from_params({prm.id: np.asarray(prm.value) for prm in model.parameters()})
        if not np.allclose(mine, check["b"], rtol=1e-10, atol=1e-10):
            raise SolverFailed("direct: parameter map does not reproduce cvxpy's data")
        self.d = float(q_tensor[self.n_x, n_theta])  # constant term of the objective
        self._clarabel: Any = None
        self._osqp: Any = None
        self._highs: dict[int, _HighsLp] = {}
        self._clarabel_tl = -1.0

    # -- data ----------------------------------------------------------------------------------

    def _b_from_params(self, values: dict[int, FloatArray]) -> FloatArray:
        theta = np.zeros(self.n_theta + 1)
        for pid, col in self.param_cols.items():
            if pid == -1:
                theta[col] = 1.0  # cvxpy's constant-offset column
            else:
                val = np.asarray(values[pid], dtype=float).flatten(order="F")
                theta[col:col + val.size] = val
        b = np.zeros(self.m)
        b[self._b_index] = self.B @ theta
        return b

    def _b(self, v: ParamValues) -> FloatArray:
        m = self.model
        pairs = [(m.pv_ub, v.pv_ub), (m.gpu_ub, v.gpu_ub), (m.other, v.other), (m.e0, v.e0),
                 (m.avail, v.avail), (m.prev_gpu, v.prev), (m.extra, v.extra)]
        return self._b_from_params({prm.id: val for prm, val in pairs if prm is not None})

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
                        g=get(m.g, v.avail.shape), gpu=get(m.gpu, v.gpu_ub.shape))

    # -- solvers -------------------------------------------------------------------------------

    def _solve_clarabel(self, b: FloatArray, time_limit_s: float) -> tuple[FloatArray, float, str]:
        if self._clarabel is None:
            st = clarabel.DefaultSettings()
            st.verbose = False
            st.presolve_enable = False  # keeps data updates allowed
            # Iterative refinement doubles the time per iteration on this problem and did not change
            # optima beyond 1e-9 in our tests; every solution is bound-checked afterwards anyway.
            st.iterative_refinement_enable = False
            st.time_limit = time_limit_s
            self._clarabel = clarabel.DefaultSolver(self.P, self.c, self.A, b, dims_to_solver_cones(self.dims), st)
            self._clarabel_tl = time_limit_s
        else:
            if abs(time_limit_s - self._clarabel_tl) > 1e-3:
                st = self._clarabel.get_settings()
                st.time_limit = time_limit_s
                self._clarabel.update(b=b, settings=st)
                self._clarabel_tl = time_limit_s
            else:
                self._clarabel.update(b=b)
        sol = self._clarabel.solve()
        status = str(sol.status)
        if status not in ("Solved", "AlmostSolved"):
            raise SolverFailed(f"CLARABEL: status {status}")
        return np.asarray(sol.x, dtype=float), float(sol.obj_val), status

    def _solve_osqp(self, b: FloatArray, time_limit_s: float) -> tuple[FloatArray, float, str]:
        lo = np.full(self.m, -np.inf)
        lo[: self.n_zero] = b[: self.n_zero]
        if self._osqp is None:
            self._osqp = osqp.OSQP()
            self._osqp.setup(self.P, self.c, self.A, lo, b, verbose=False, eps_abs=1e-4, eps_rel=1e-4,
                             max_iter=20000, polishing=True, warm_starting=True, time_limit=time_limit_s)
        else:
            self._osqp.update(l=lo, u=b)
            self._osqp.update_settings(time_limit=time_limit_s)
        res = self._osqp.solve(raise_error=False)
        status = str(res.info.status)
        if status not in ("solved", "solved inaccurate"):
            raise SolverFailed(f"OSQP: status {status}")
        return np.asarray(res.x, dtype=float), float(res.info.obj_val), status

    def solve(self, v: ParamValues, solver: str, time_limit_s: float, slot: int = 0) -> tuple[Dispatch, float, str]:
        """Solve for `v`; the objective returned excludes cvxpy's constant offset (added back here)."""
        b = self._b(v)
        tl = max(1e-3, float(time_limit_s))
        if solver == "CLARABEL":
            x, obj, status = self._solve_clarabel(b, tl)
        elif solver == "OSQP":
            x, obj, status = self._solve_osqp(b, tl)
        elif solver == "HIGHS":
            if self.P.nnz:
                raise SolverFailed("HIGHS: only for linear problems (ramp_quad_per_kw2 must be 0)")
            # One HiGHS instance per commitment slot, each hot-started from its own last basis.
            if slot not in self._highs:
                self._highs[slot] = _HighsLp(self.A, self.c, self.n_zero)
            x, obj, status = self._highs[slot].solve(b, tl)
        else:
            raise SolverFailed(f"unknown solver {solver}")
        if not np.all(np.isfinite(x)):
            raise SolverFailed(f"{solver}: non-finite solution")
        return self._unpack(x, v), obj + self.d, status

    def reference_solve(self, v: ParamValues, solver: str) -> float:
        """The same solve through cvxpy (tests compare against it)."""
        set_parameters(self.model, v)
        self.model.problem.solve(solver=solver, ignore_dpp=False)
        return float(self.model.problem.value)


class _HighsLp:
    """HiGHS dual simplex, set up once and hot-started from the previous basis on every solve.

    Only right-hand sides change between solves, so the previous optimal basis stays dual feasible
    and dual simplex typically needs a handful of pivots. Rows with a single non-zero (variable
    bounds) are passed as column bounds, which keeps the simplex basis small.
    """

    def __init__(self, A: sp.csc_matrix, c: FloatArray, n_zero: int) -> None:
        import highspy

        self._hs = highspy
        A_r = sp.csr_matrix(A)
        nnz_row = np.diff(A_r.indptr)
        single = nnz_row == 1
        self.m, self.n = A_r.shape
        self.is_eq = np.zeros(self.m, dtype=bool)
        self.is_eq[:n_zero] = True
        self.s_rows = np.nonzero(single)[0]
        self.s_cols = A_r.indices[A_r.indptr[self.s_rows]]
        self.s_coef = A_r.data[A_r.indptr[self.s_rows]]
        self.g_rows = np.nonzero(~single)[0]
        inf = highspy.kHighsInf
        self.inf = inf
        lp = highspy.HighsLp()
        lp.num_col_ = self.n
        lp.num_row_ = self.g_rows.size
        lp.col_cost_ = np.asarray(c, dtype=float)
        lp.col_lower_ = np.full(self.n, -inf)
        lp.col_upper_ = np.full(self.n, inf)
        lp.row_lower_ = np.full(self.g_rows.size, -inf)
        lp.row_upper_ = np.zeros(self.g_rows.size)
        sub = sp.csc_matrix(A_r[self.g_rows])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = sub.indptr
        lp.a_matrix_.index_ = sub.indices
        lp.a_matrix_.value_ = sub.data
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("solver", "simplex")
        self.h.passModel(lp)
        self.col_idx = np.arange(self.n, dtype=np.int32)
        self.row_idx = np.arange(self.g_rows.size, dtype=np.int32)
        self._last: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None

    def solve(self, b: FloatArray, time_limit_s: float) -> tuple[FloatArray, float, str]:
        # Single-nnz rows a x_j (<= or =) b_i become bounds on x_j.
        bound = b[self.s_rows] / self.s_coef
        lo = np.full(self.n, -self.inf)
        hi = np.full(self.n, self.inf)
        upper = (self.s_coef > 0) | self.is_eq[self.s_rows]
        lower = (self.s_coef < 0) | self.is_eq[self.s_rows]
        np.minimum.at(hi, self.s_cols[upper], bound[upper])
        np.maximum.at(lo, self.s_cols[lower], bound[lower])
        if np.any(lo > hi + 1e-9):
            raise SolverFailed("HIGHS: contradictory bounds")
        rb = b[self.g_rows]
        rl = np.where(self.is_eq[self.g_rows], rb, -self.inf)
        # Pass only what changed since the last solve (the rest of the model is already in HiGHS).
        if self._last is None:
            cols, rows = self.col_idx, self.row_idx
        else:
            lo0, hi0, rl0, rb0 = self._last
            cols = self.col_idx[(lo != lo0) | (hi != hi0)]
            rows = self.row_idx[(rl != rl0) | (rb != rb0)]
        if cols.size:
            self.h.changeColsBounds(cols.size, cols, lo[cols], hi[cols])
        if rows.size:
            self.h.changeRowsBounds(rows.size, rows, rl[rows], rb[rows])  # type: ignore[attr-defined]
        self._last = (lo, hi, rl, rb)
        # HiGHS's clock runs over the object's whole life, so the limit is set relative to it.
        self.h.setOptionValue("time_limit", float(self.h.getRunTime()) + float(time_limit_s))
        self.h.run()
        status = self.h.getModelStatus()
        if status != self._hs.HighsModelStatus.kOptimal:
            raise SolverFailed(f"HIGHS: status {self.h.modelStatusToString(status)}")
        x = np.asarray(self.h.getSolution().col_value, dtype=float)
        return x, float(self.h.getInfo().objective_function_value), "optimal"
