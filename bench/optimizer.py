"""Optimizer benchmark: compile time, warm re-solve p50/p99, variable steps, commitment, rebuild-each-time.

Run:  .venv/bin/python bench/optimizer.py [--n 200] [--rebuild-n 20] [--solvers CLARABEL,HIGHS]

Every figure goes through the public path (`DispatchProblem.solve`: input checks, worker thread,
solve, bound clean-up, plan assembly). Inputs change on every solve, harder than in the daemon:
the forecast rolls on by a whole step with fresh noise on every step, SoC and the previous GPU
budget come from the last plan. "re-solve" is one convex solve (commitment fixed:
commitment_candidates=0); "commitment" enumerates 1 + 6 switch + 12 window candidates for one genset (pruned by bounds);
"grid-tied" swaps the genset for a grid (import/export limits, time-of-use prices, demand charge);
"MILP commitment" decides the commitment by a MILP per block (optimizer.milp.CoarseMilp: 5 min in the
first hour, then hourly; 1 and 3 gensets, 1 s deadline as in the daemon; goals p99 <= 100 / 250 ms),
the enumeration as its next rung, counted per rung ("primary/milp" where the MILP decided);
"rebuild" builds the cvxpy problem from scratch and solves it through cvxpy each time (what "build
once" saves), per solver. p50/p99 are wall-clock; "cpu" is the process CPU time per solve (both
threads), which shows what a busy machine adds: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    DispatchProblem,
    GensetParams,
    GpuClassParams,
    GridParams,
    Plan,
    PvParams,
    SiteParams,
)


def site(steps_s: np.ndarray, solver: str, candidates: int, grid: bool = False, n_gen: int = 1,
         commitment: str = "enumeration") -> SiteParams:
    """PV, one battery, one genset, three GPU classes (A100-like concave values, 3 segments).

    grid=True: the grid-tied case, a 60 kW import / 30 kW export connection with a demand charge
    instead of the genset (time-of-use prices from `Inputs`).
    """
    bp = np.array([0.0, 12.8, 16.0, 25.6])
    val = np.array([0.0, 7.8, 8.7, 10.0])
    return SiteParams(
        steps_s=steps_s, pv=[PvParams("pv1", 100.0)],
        batteries=[BatteryParams("bess", 200, 100, 100, 10, 95, 0.95, 0.95, 0.02, 0.08)],
        # n_gen > 1: N+1 sets sharing the 150 kW (each 150 / (n_gen - 1) kW).
        gensets=[] if grid else [GensetParams(f"gen{i + 1}", 150 / max(1, n_gen - 1), 45 / max(1, n_gen - 1),
                                              1.6 / max(1, n_gen - 1), 0.25 + 0.01 * i, 1.2, 5.0, 900, 600, 60)
                                 for i in range(n_gen)],
        grid=GridParams("grid", 60.0, 30.0, 12.0) if grid else None,
        gpu_classes=[GpuClassParams(n, 0.0, 25.6, bp, val * k, 0.001) for n, k in
                     (("inference", 1.0), ("training", 0.7), ("batch", 0.4))],
        solver=solver, commitment_candidates=candidates, commitment=commitment)


class Inputs:
    """Rolling inputs: the clock advances one first step per solve; forecasts carry fresh noise."""

    def __init__(self, p: SiteParams, seed: int = 1) -> None:
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.t0_s = 6 * 3600.0
        self.soc = np.array([50.0])
        self.prev = np.zeros(3)
        self.peak_kw = 0.0
        self.offsets_s = np.concatenate(([0.0], np.cumsum(p.steps_s)[:-1])) + p.steps_s / 2

    def next(self, plan: Plan | None) -> DispatchInputs:
        if plan is not None:
            b = self.p.batteries[0]
            self.soc = np.clip(plan.soc_pct[:, 1], b.soc_min_pct, b.soc_max_pct)
            self.prev = plan.gpu_kw[:, 0].copy()
            self.t0_s += float(self.p.steps_s[0])
        t_h = ((self.t0_s + self.offsets_s) / 3600.0) % 24
        T = t_h.size
        clear = np.maximum(0.0, np.sin((t_h - 6) / 12 * np.pi)) * 95
        pv = clear * np.clip(0.8 + 0.15 * self.rng.standard_normal(T), 0, 1)
        demand = np.clip(np.vstack([20 + 5 * np.sin(t_h / 24 * 2 * np.pi), np.full(T, 25.6), 18 + 0 * t_h])
                         + self.rng.normal(0, 1, (3, T)), 0, 25.6)
        n_gen = len(self.p.gensets)
        x = DispatchInputs(pv_forecast_kw=pv[None, :], gpu_demand_kw=demand,
                           other_load_kw=6 + self.rng.uniform(0, 2, T), soc_pct=self.soc,
                           genset_on=np.zeros(n_gen, bool), genset_state_s=np.full(n_gen, 7200.0),
                           prev_gpu_kw=self.prev)
        if self.p.grid is not None:
            # Time of use: night 0.12, day 0.30, evening peak (17-21 h) 0.45 per kWh; export 0.05.
            x.import_price_per_kwh = np.where((t_h >= 22) | (t_h < 7), 0.12, np.where((t_h >= 17) & (t_h < 21), 0.45, 0.30))
            x.export_price_per_kwh = np.full(T, 0.05)
            if plan is not None:
                self.peak_kw = max(self.peak_kw, float(plan.grid_import_kw[0]))
            x.peak_import_kw = self.peak_kw
        return x


def run(p: SiteParams, n: int, backend: str = "auto",
        deadline_s: float = 10.0) -> tuple[float, np.ndarray, np.ndarray, list[str]]:
    """Compile once, then n solves with rolling inputs: (compile s, wall s, CPU s, rungs); with the
    MILP a rung is "primary/milp" or "primary/enumeration" (the commitment's rung)."""
    t0 = time.perf_counter()
    prob = DispatchProblem(p, backend=backend)
    compile_s = time.perf_counter() - t0
    src = Inputs(p)
    plan = prob.solve(src.next(None), deadline_s=deadline_s)  # first solve sets the solver up
    times, cpu, rungs = [], [], []
    for _ in range(n):
        x = src.next(plan)
        t, c = time.perf_counter(), time.process_time()
        plan = prob.solve(x, deadline_s=deadline_s)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        rungs.append(f"{plan.rung}/{plan.commitment}" if p.commitment == "milp" else plan.rung)
    prob.close()
    return compile_s, np.array(times), np.array(cpu), rungs


def rebuild(p: SiteParams, n: int) -> np.ndarray:
    """Build the cvxpy problem from scratch and solve it through cvxpy, n times."""
    src = Inputs(p)
    plan = None
    times = []
    for _ in range(n):
        x = src.next(plan)
        t = time.perf_counter()
        prob = DispatchProblem(p, backend="cvxpy")
        plan = prob.solve(x, deadline_s=60.0)
        times.append(time.perf_counter() - t)
        prob.close()
    return np.array(times)


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def ms(a: np.ndarray, q: float) -> str:
    return f"{np.percentile(a, q) * 1e3:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="re-solves per figure")
    ap.add_argument("--rebuild-n", type=int, default=20, help="rebuild-from-scratch solves per solver")
    ap.add_argument("--solvers", default="CLARABEL,HIGHS", help="comma-separated; AUTO = HIGHS for this LP")
    ap.add_argument("--milp-n", type=int, default=30, help="solves per MILP commitment row (0: skip)")
    ap.add_argument("--milp-gap", type=float, default=1e-3, help="MILP relative gap (control.milp_gap)")
    ap.add_argument("--milp-limit", type=float, default=0.5, help="MILP time limit s (control.milp_time_limit_s)")
    ap.add_argument("--grid-only", action="store_true", help="of the re-solve rows only the grid-tied one (no rebuild rows)")
    a = ap.parse_args()
    solvers = a.solvers.split(",")
    fixed = np.full(288, 300.0)
    variable = np.concatenate((np.full(60, 60.0), np.full(92, 900.0)))  # 1 min for 1 h, then 15 min: 24 h
    print(f"optimizer bench: {a.n} solves per row, rolling inputs; times in ms (goals: compile < 1000,"
          f" re-solve p50 <= 10 / p99 <= 25, commitment p99 <= 100); {os.cpu_count()} CPUs, {load()}")
    print(f"{'solver':9} {'case':38} {'compile':>8} {'p50':>7} {'p99':>7} {'cpu p50':>8}  rungs")
    base_p50: dict[str, float] = {}
    for solver in solvers:
        for label, steps, cand in (("288 x 5 min, re-solve", fixed, 0),
                                   (f"variable {variable.size} steps (1 min/15 min)", variable, 0),
                                   ("288 x 5 min, commitment (1+6+12 cand.)", fixed, 6),
                                   ("288 x 5 min, grid-tied (TOU, demand ch.)", fixed, -1)):
            if a.grid_only and cand >= 0:
                continue
            c_s, t, cpu, rungs = run(site(steps, solver, max(cand, 0), grid=cand < 0), a.n)
            if cand == 0 and steps is fixed:
                base_p50[solver] = float(np.median(t))
            tally = ", ".join(f"{r}={rungs.count(r)}" for r in sorted(set(rungs)))
            print(f"{solver:9} {label:38} {c_s * 1e3:8.1f} {ms(t, 50)} {ms(t, 99)} {ms(cpu, 50):>8}  {tally}")
    if a.milp_n > 0:
        # Exact commitment as the daemon runs it: 1 s deadline, the MILP's limit and gap as configured
        # (0.5 s, 0.1 %), the enumeration as the next rung.
        for n_gen in (1, 3):
            p = dataclasses.replace(site(fixed, "HIGHS", 6, n_gen=n_gen, commitment="milp"),
                                    milp_gap=a.milp_gap, milp_time_limit_s=a.milp_limit)
            c_s, t, cpu, rungs = run(p, a.milp_n, deadline_s=1.0)
            tally = ", ".join(f"{r}={rungs.count(r)}" for r in sorted(set(rungs)))
            print(f"{'HIGHS':9} {f'288 x 5 min, MILP commitment, {n_gen} gen.':38} {c_s * 1e3:8.1f} {ms(t, 50)}"
                  f" {ms(t, 99)} {ms(cpu, 50):>8}  {tally}")
    if a.rebuild_n > 0 and not a.grid_only:  # the rebuild rows compare with the re-solve row
        for solver in solvers:
            t = rebuild(site(fixed, solver, 0), a.rebuild_n)
            ratio = float(np.median(t)) / base_p50[solver]
            print(f"{solver:9} {'288 x 5 min, rebuild + cvxpy each time':38} {'':>8} {ms(t, 50)} {ms(t, 99)} {'':>8}"
                  f"  ({a.rebuild_n} solves) -> build-once is {ratio:.1f}x faster at p50")
    print(f"done; {load()}")


if __name__ == "__main__":
    main()
