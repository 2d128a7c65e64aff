"""HiGHS dual simplex on the compiled LP, hot-started, plus a free lower bound for pruning candidates.

The compiled problem (see optimizer.direct) is  min c'x  s.t.  A x + s = b,  s in {0}^z x R+^l,
with only b changing between solves. Rows with a single non-zero are variable bounds; HiGHS gets
them as column bounds, so its basis only spans the rows that couple variables. Everything else
becomes row bounds rl <= A_g x <= ru.

Lower bound without solving (`Prices`). For any row prices y,
    c'x >= min_{lo <= x <= hi} (c - A_g'y)'x + min_{rl <= r <= ru} y'r      for every feasible x,
which is the Lagrangian dual of the LP: valid for every y, tight at the optimum's own prices. The
prices of an earlier solve (another commitment candidate, or the same candidate one cycle ago) thus
bound a new candidate's optimum; per candidate that costs one dot product with b (`Prices`). If the
bound already exceeds the best total found so far, the candidate cannot win and is not solved.
Candidates that are solved get HiGHS's objective bound, so dual simplex stops as soon as its
exact dual objective proves the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from powerctl.optimizer.backend import CandidatePruned, SolverFailed
from powerctl.optimizer.params import FloatArray

# Reduced costs smaller than this on a side with no bound count as zero in the Lagrangian bound.
# The error this allows (|z| x summed over such columns: slacks and ramps, kW-sized) is far below
# PRUNE_MARGIN.
_Z_TINY = 1e-9
# A candidate is pruned only if its bound beats the incumbent by this much (relative, plus absolute).
PRUNE_MARGIN = 1e-4


@dataclass
class Bounds:
    """Column bounds and row bounds for one right-hand side b."""

    lo: FloatArray
    hi: FloatArray
    rl: FloatArray
    ru: FloatArray


class LpRows:
    """The split of the compiled rows into column bounds and general rows (fixed for the model)."""

    def __init__(self, A: sp.csc_matrix, c: FloatArray, n_zero: int) -> None:
        A_r = sp.csr_matrix(A)
        single = np.diff(A_r.indptr) == 1
        self.m, self.n = A_r.shape
        self.c = np.asarray(c, dtype=float)
        is_eq = np.zeros(self.m, dtype=bool)
        is_eq[:n_zero] = True
        s_rows = np.nonzero(single)[0]
        s_cols = A_r.indices[A_r.indptr[s_rows]]
        s_coef = A_r.data[A_r.indptr[s_rows]]
        upper = (s_coef > 0) | is_eq[s_rows]  # coef x <= b (or =) bounds x from above if coef > 0
        lower = (s_coef < 0) | is_eq[s_rows]
        self._up_rows, self._up_cols, self._up_inv = s_rows[upper], s_cols[upper], 1.0 / s_coef[upper]
        self._lo_rows, self._lo_cols, self._lo_inv = s_rows[lower], s_cols[lower], 1.0 / s_coef[lower]
        # Columns bounded by one row each on each side (the usual case) take a plain scatter.
        self._unique = (np.unique(self._up_cols).size == self._up_cols.size
                        and np.unique(self._lo_cols).size == self._lo_cols.size)
        # One bounding row per column and side (-1: none), for `Prices`.
        self.lo_row = np.full(self.n, -1)
        self.lo_row[self._lo_cols] = self._lo_rows
        self.up_row = np.full(self.n, -1)
        self.up_row[self._up_cols] = self._up_rows
        self.row_coef = np.zeros(self.m)
        self.row_coef[s_rows] = s_coef
        self.g_rows = np.nonzero(~single)[0]
        self.g_eq = is_eq[self.g_rows]
        self.A_g = sp.csr_matrix(A_r[self.g_rows])
        self.A_gT = sp.csr_matrix(self.A_g.T)

    def bounds(self, b: FloatArray) -> Bounds:
        """Column and row bounds for right-hand side b; raises SolverFailed if they contradict."""
        lo = np.full(self.n, -np.inf)
        hi = np.full(self.n, np.inf)
        if self._unique:
            hi[self._up_cols] = b[self._up_rows] * self._up_inv
            lo[self._lo_cols] = b[self._lo_rows] * self._lo_inv
        else:
            np.minimum.at(hi, self._up_cols, b[self._up_rows] * self._up_inv)
            np.maximum.at(lo, self._lo_cols, b[self._lo_rows] * self._lo_inv)
        if np.any(lo > hi + 1e-9):
            raise SolverFailed("HIGHS: contradictory bounds")
        ru = b[self.g_rows]
        rl = np.where(self.g_eq, ru, -np.inf)
        return Bounds(lo=lo, hi=hi, rl=rl, ru=ru)


class Prices:
    """Row prices y turned into the Lagrangian bound as a linear function of b: bound(b) = w'b.

    min over the box of (c - A_g'y)'x + min over the row range of y'r picks, for every column and
    row, one end, and every finite end is an entry of b over a fixed coefficient. Which end is
    picked depends only on the signs of y and z = c - A_g'y, so w is fixed for given y and a
    candidate's bound costs one dot product. If y prices an end that does not exist (infinite),
    the bound is -inf for every b and `w` is None. (A column bounded by several rows on one side
    uses one of them: a weaker bound, still valid.)
    """

    def __init__(self, rows: LpRows, y: FloatArray, c: FloatArray | None = None) -> None:
        self.rows, self.y = rows, y
        self.c = rows.c if c is None else c
        self._repriced: Prices | None = None
        # Changing y is always exact (any y gives a valid bound): a tiny wrong-signed price on an
        # inequality row becomes 0. Reduced costs follow from y; only a tiny one that would need a
        # missing (infinite) bound is set to 0, the one approximation, covered by PRUNE_MARGIN.
        y = np.where((np.abs(y) < _Z_TINY) & ~rows.g_eq, 0.0, y)
        z = self.c - rows.A_gT @ y
        tiny = np.abs(z) < _Z_TINY
        z = np.where(tiny & (((z > 0) & (rows.lo_row < 0)) | ((z < 0) & (rows.up_row < 0))), 0.0, z)
        w = np.zeros(rows.m)
        # Rows: y > 0 takes the lower end (only equality rows have one), y < 0 the upper end b.
        ok = not np.any((y > 0) & ~rows.g_eq)
        w[rows.g_rows] = y
        # Columns: z > 0 takes the lower bound, z < 0 the upper bound, each b[row] / coef.
        for mask, side in ((z > 0, rows.lo_row), (z < 0, rows.up_row)):
            r = side[mask]
            ok = ok and bool(np.all(r >= 0))
            if ok:
                np.add.at(w, r, z[mask] / rows.row_coef[r])
        self._idx = np.nonzero(w)[0] if ok else None
        self._w_nz = w[self._idx] if ok else w[:0]

    def for_cost(self, c: FloatArray) -> Prices:
        """The same row prices for cost vector c (any y bounds any c; only w changes)."""
        if c is self.c or np.array_equal(c, self.c):
            return self
        if self._repriced is None or not np.array_equal(c, self._repriced.c):
            self._repriced = Prices(self.rows, self.y, c)  # one cycle's candidates share one cost
        return self._repriced

    def bound(self, b: FloatArray) -> float:
        """Lower bound on the LP optimum for right-hand side b (-inf when these prices give none)."""
        # Only the priced entries; and not `w @ b`: OpenBLAS spreads a dot product this long over
        # threads, which on a busy machine waits for milliseconds on a second core.
        return -np.inf if self._idx is None else float(np.sum(self._w_nz * b[self._idx]))


class HighsLp:
    """One HiGHS instance over `LpRows`, hot-started from its own last basis on every solve.

    Only bounds change between solves, so the previous optimal basis stays dual feasible and dual
    simplex typically needs a few hundred cheap pivots. With an objective bound HiGHS stops as soon
    as its (exact, unperturbed) dual objective proves the optimum is above it.
    """

    def __init__(self, rows: LpRows) -> None:
        import highspy

        self._hs = highspy
        self.rows = rows
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_ = rows.n
        lp.num_row_ = rows.g_rows.size
        lp.col_cost_ = rows.c
        lp.col_lower_ = np.full(rows.n, -inf)
        lp.col_upper_ = np.full(rows.n, inf)
        lp.row_lower_ = np.full(rows.g_rows.size, -inf)
        lp.row_upper_ = np.zeros(rows.g_rows.size)
        sub = sp.csc_matrix(rows.A_g)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = sub.indptr
        lp.a_matrix_.index_ = sub.indices
        lp.a_matrix_.value_ = sub.data
        self.h: Any = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("solver", "simplex")
        self.h.passModel(lp)
        self.col_idx = np.arange(rows.n, dtype=np.int32)
        self.row_idx = np.arange(rows.g_rows.size, dtype=np.int32)
        self._last: Bounds | None = None
        self._cost: FloatArray = rows.c
        self._obj_bound = np.inf
        self._prices: Prices | None = None
        self._prices_ready = False  # prices of the last run are fetched from HiGHS only when asked for
        self._solved = False

    @property
    def prices(self) -> Prices | None:
        """Row prices of the last run (optimal, or stopped at the bound), None before the first."""
        if not self._prices_ready:
            sol = self.h.getSolution()
            self._prices = (Prices(self.rows, np.array(sol.row_dual, dtype=np.float64), self._cost)
                            if sol.dual_valid else None)
            self._prices_ready = True
        return self._prices

    @property
    def solved(self) -> bool:
        """True once this instance has a basis from a finished run."""
        return self._solved

    def solve(self, bd: Bounds, time_limit_s: float, obj_bound: float = np.inf,
              cost: FloatArray | None = None) -> tuple[FloatArray, float]:
        """(x, objective) for bounds `bd` (and cost vector `cost`, default the model's); CandidatePruned
        if the optimum is proved >= obj_bound."""
        if cost is not None and cost is not self._cost:
            # Grid prices move the cost; only changed entries go to HiGHS (the basis stays primal
            # feasible, so the hot start still helps).
            changed = self.col_idx[cost != self._cost]
            if changed.size:
                self.h.changeColsCost(changed.size, changed, cost[changed])
            self._cost = cost
        # Pass only what changed since the last solve (the rest of the model is already in HiGHS).
        if self._last is None:
            cols, rws = self.col_idx, self.row_idx
        else:
            last = self._last
            cols = self.col_idx[(bd.lo != last.lo) | (bd.hi != last.hi)]
            rws = self.row_idx[(bd.rl != last.rl) | (bd.ru != last.ru)]
        if cols.size:
            self.h.changeColsBounds(cols.size, cols, bd.lo[cols], bd.hi[cols])
        if rws.size:
            self.h.changeRowsBounds(rws.size, rws, bd.rl[rws], bd.ru[rws])
        self._last = bd
        # HiGHS's clock runs over the object's whole life, so the limit is set relative to it.
        self.h.setOptionValue("time_limit", float(self.h.getRunTime()) + float(time_limit_s))
        if obj_bound != self._obj_bound:
            self.h.setOptionValue("objective_bound", float(obj_bound))
            self._obj_bound = obj_bound
        self._prices_ready = False
        self.h.run()
        status = self.h.getModelStatus()
        if status == self._hs.HighsModelStatus.kObjectiveBound:
            # The dual simplex stopped at dual feasible prices that prove the bound; they stay
            # available (`prices`) and will likely prune this candidate next cycle without a solve.
            self._solved = True
            raise CandidatePruned("HIGHS: objective bound reached")
        if status != self._hs.HighsModelStatus.kOptimal:
            self._prices, self._prices_ready = None, True  # no trustworthy prices from a failed run
            raise SolverFailed(f"HIGHS: status {self.h.modelStatusToString(status)}")
        self._solved = True
        sol = self.h.getSolution()
        return np.array(sol.col_value, dtype=np.float64), float(self.h.getInfo().objective_function_value)
