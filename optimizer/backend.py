"""Solving the compiled model for given Parameter values: through cvxpy (reference path).

`optimizer.direct` has the fast path that calls the solver on cvxpy's compiled data directly; this
module is the plain cvxpy path, used when the fast path is not available and as its reference.
"""

from __future__ import annotations

from typing import Any, Protocol

import cvxpy as cp
import numpy as np

from powerctl.optimizer.model import Model
from powerctl.optimizer.params import FloatArray
from powerctl.optimizer.solution import Dispatch, ParamValues


class SolverFailed(RuntimeError):
    """A solver did not return a trustworthy optimum (status, time limit or numerics)."""


class CandidatePruned(RuntimeError):
    """The solver proved the objective is at least the bound it was given (the candidate cannot win)."""


class Backend(Protocol):
    """Something that solves the model for Parameter values with a named solver."""

    name: str

    def solve(self, v: ParamValues, solver: str, time_limit_s: float, slot: int = 0,
              bound: float = float("inf")) -> tuple[Dispatch, float, str]:
        """Returns (dispatch, convex objective, solver status) or raises SolverFailed.

        `slot` names the commitment candidate position; a backend may keep warm state per slot.
        A backend may raise CandidatePruned once it has proved the convex objective >= `bound`.
        """
        ...


def solver_options(solver: str, time_limit_s: float) -> dict[str, Any]:
    """Settings we use per solver; the time limit makes the solver itself honour the deadline."""
    tl = max(1e-3, float(time_limit_s))
    if solver == "CLARABEL":
        return {"time_limit": tl}
    if solver == "OSQP":
        # OSQP is first-order: tighter tolerances and polishing to get LP vertices right.
        return {"time_limit": tl, "eps_abs": 1e-4, "eps_rel": 1e-4, "max_iter": 20000, "polishing": True}
    if solver == "HIGHS":
        return {"time_limit": tl}
    raise SolverFailed(f"unknown solver {solver}")


def parameter_pairs(m: Model, v: ParamValues) -> list[tuple[cp.Parameter | None, FloatArray]]:
    """Each Parameter of the model with its value in `v`."""
    pairs: list[tuple[cp.Parameter | None, FloatArray]] = [
        (m.pv_ub, v.pv_ub), (m.gpu_ub, v.gpu_ub), (m.other, v.other), (m.e0, v.e0),
        (m.avail, v.avail), (m.prev_gpu, v.prev), (m.extra, v.extra)]
    if m.grid is not None and v.grid is not None:
        gm, gv = m.grid, v.grid
        pairs += [(gm.imp_price, gv.imp_price), (gm.exp_price, gv.exp_price), (gm.imp_ub, gv.imp_ub),
                  (gm.exp_ub, gv.exp_ub), (gm.peak_floor, np.asarray(gv.peak_floor)), (gm.m_cur, gv.m_cur),
                  (gm.m_next, gv.m_next), (gm.rate_cur, np.asarray(gv.rate_cur)),
                  (gm.rate_next, np.asarray(gv.rate_next))]
    return pairs


def set_parameters(m: Model, v: ParamValues) -> None:
    """Copy numeric values into the model's Parameters."""
    for param, val in parameter_pairs(m, v):
        if param is not None:
            param.value = np.asarray(val, dtype=float).reshape(param.shape)


def _val(var: cp.Variable | None, shape: tuple[int, ...]) -> FloatArray:
    if var is None or var.value is None:
        return np.zeros(shape)
    return np.asarray(var.value, dtype=float).reshape(shape)


def read_dispatch(m: Model, v: ParamValues) -> Dispatch:
    """The variables' values after a solve, as a Dispatch."""
    T = v.other.shape[0]
    n_bat = v.e0.shape[0]
    return Dispatch(pv=_val(m.pv, v.pv_ub.shape), ch=_val(m.ch, (n_bat, T)), dis=_val(m.dis, (n_bat, T)),
                    g=_val(m.g, v.avail.shape), gpu=_val(m.gpu, v.gpu_ub.shape),
                    imp=None if m.imp is None else _val(m.imp, (T,)),
                    exp=None if m.exp is None else _val(m.exp, (T,)))


class CvxpyBackend:
    """`problem.solve(...)` with the DPP cache and warm start."""

    name = "cvxpy"

    def __init__(self, model: Model) -> None:
        self.model = model

    def solve(self, v: ParamValues, solver: str, time_limit_s: float, slot: int = 0,
              bound: float = float("inf")) -> tuple[Dispatch, float, str]:
        set_parameters(self.model, v)
        try:
            self.model.problem.solve(solver=solver, warm_start=True, ignore_dpp=False,
                                     **solver_options(solver, time_limit_s))
        except cp.error.SolverError as exc:
            raise SolverFailed(f"{solver}: {exc}") from exc
        status = str(self.model.problem.status)
        if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise SolverFailed(f"{solver}: status {status}")
        return read_dispatch(self.model, v), float(self.model.problem.value), status
