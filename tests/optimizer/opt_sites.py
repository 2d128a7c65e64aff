"""Small sites and inputs for the optimizer tests (hand-checkable numbers)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    GensetParams,
    GpuClassParams,
    PvParams,
    SiteParams,
)


def no_reserve(**kw: object) -> dict[str, object]:
    """SiteParams keyword defaults that switch the operating reserve off (for hand optima)."""
    base: dict[str, object] = {"reserve_load_pct": 0.0, "reserve_pv_pct": 0.0, "facility_overhead": 0.0}
    base.update(kw)
    return base


def inputs(site: SiteParams, pv: list[list[float]] | None = None, gpu: list[list[float]] | None = None,
           other: list[float] | None = None, soc: list[float] | None = None, on: list[bool] | None = None,
           state_s: list[float] | None = None, prev: list[float] | None = None) -> DispatchInputs:
    T = site.horizon_steps
    return DispatchInputs(
        pv_forecast_kw=np.array(pv if pv is not None else np.zeros((len(site.pv), T)), dtype=float).reshape(len(site.pv), T),
        gpu_demand_kw=np.array(gpu if gpu is not None else [[c.p_max_kw] * T for c in site.gpu_classes],
                               dtype=float).reshape(len(site.gpu_classes), T),
        other_load_kw=np.array(other if other is not None else [0.0] * T, dtype=float),
        soc_pct=np.array(soc if soc is not None else [50.0] * len(site.batteries), dtype=float),
        genset_on=np.array(on if on is not None else [False] * len(site.gensets), dtype=bool),
        genset_state_s=np.array(state_s if state_s is not None else [1e6] * len(site.gensets), dtype=float),
        prev_gpu_kw=np.array(prev if prev is not None else [0.0] * len(site.gpu_classes), dtype=float),
    )


def demo_site(T: int = 288, step_s: float = 300.0, solver: str = "CLARABEL") -> SiteParams:
    """The bench site: PV, one battery, one genset, three GPU classes with concave values."""
    bp = np.array([0.0, 12.8, 16.0, 25.6])
    val = np.array([0.0, 7.8, 8.7, 10.0])
    return SiteParams(
        steps_s=np.full(T, step_s),
        pv=[PvParams("pv1", 100.0)],
        batteries=[BatteryParams("bess", 200, 100, 100)],
        gensets=[GensetParams("gen1", 150, 45, 1.6, 0.25)],
        gpu_classes=[GpuClassParams(n, 0.0, 25.6, bp, val * k) for n, k in
                     (("inference", 1.0), ("training", 0.7), ("batch", 0.4))],
        solver=solver,
    )


def demo_inputs(site: SiteParams, seed: int = 0) -> DispatchInputs:
    rng = np.random.default_rng(seed)
    t_h = np.cumsum(site.steps_s) / 3600.0
    pv = np.maximum(0.0, np.sin((t_h % 24 - 6) / 12 * np.pi)) * 90 * rng.uniform(0.7, 1.0)
    T = site.horizon_steps
    return DispatchInputs(pv_forecast_kw=pv[None, :], gpu_demand_kw=np.full((3, T), 25.6),
                          other_load_kw=np.full(T, 5.0) + rng.uniform(0, 2), soc_pct=np.array([50.0]),
                          genset_on=np.array([False]), genset_state_s=np.array([3600.0]),
                          prev_gpu_kw=np.zeros(3))


def sparse_rows(rows: list[tuple[dict[int, float], float]], n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows given as ({column: coefficient}, rhs) as a sparse matrix with n columns and the rhs."""
    r = [i for i, (row, _) in enumerate(rows) for _k in row]
    cc = [k for row, _ in rows for k in row]
    v = [val for row, _ in rows for val in row.values()]
    return sp.csr_matrix((v, (r, cc)), shape=(len(rows), n)), np.array([rhs for _, rhs in rows])
