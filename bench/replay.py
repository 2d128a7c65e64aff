"""Replay speed: simulated seconds per wall second for a multi-day replay.

    .venv/bin/python bench/replay.py                  # 7 days, 1-min plant steps, planner every 5 min, ours
    .venv/bin/python bench/replay.py --days 1 --controller rule
    .venv/bin/python bench/replay.py --days 3 --profile    # + where the wall time goes (cProfile)

Also prints the 1-year figure extrapolated linearly from the days run (labelled so; the goal is a
year at 1-min plant steps with the planner every 5 min in < 10 min on a 2-core machine).

Prints the overall speed (goal: 7 days in < 60 s, i.e. >= 10,000x real time), and p50/p99 of the
planner call (forecast + optimizer solve, fallback ladder included) and of one plant step without the
planner (process image, dispatch, GPU split, guard, plant physics, recording), so a slow run says
which part to look at.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# bench/optimizer.py (another benchmark) would shadow the optimizer package when this file runs as a
# script (the script's folder comes first on sys.path): drop that folder, put the repo root first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples/demo-site.toml"))
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--controller", default="ours", choices=["ours", "rule", "static"])
    ap.add_argument("--step-s", type=float, default=60.0)
    ap.add_argument("--plan-every-s", type=float, default=300.0)
    ap.add_argument("--start", default="06-01")
    ap.add_argument("--profile", action="store_true", help="cProfile the replay; print wall time by part")
    a = ap.parse_args()

    from powerctl.config import load_config
    from powerctl.sim.kpi import compute_kpis
    from powerctl.sim.replay import simulate
    from powerctl.sim.traces.site_trace import build_site_trace

    cfg = load_config(a.config, check_secrets=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    tr = build_site_trace(cfg, start=a.start, days=a.days, step_s=a.step_s)
    t_trace = time.perf_counter() - t0
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    res = simulate(cfg, tr, controller=a.controller, step_s=a.step_s, plan_every_s=a.plan_every_s)
    if prof is not None:
        prof.disable()
    k = compute_kpis(res)
    pw, sw = res.plan_wall_s, res.step_wall_s
    pct = (lambda x, q: float(np.percentile(x, q)) * 1e3) if len(pw) else (lambda x, q: 0.0)
    print(
        f"replay bench: {a.days:g} days, controller {a.controller}, plant step {a.step_s:g} s, "
        f"planner every {a.plan_every_s:g} s, config {Path(a.config).name}"
    )
    print(f"  load average                {load_before[0]:8.2f} before, {os.getloadavg()[0]:.2f} after "
          f"(1-min; a shared 2-core machine above ~1.5 makes every figure below slower)")
    print(f"  trace build                 {t_trace:8.2f} s (weather + pvlib + GPU trace, once)")
    print(f"  replay wall                 {res.wall_s:8.2f} s for {res.sim_s / 86400:.2f} simulated days")
    print(
        f"  speed                       {res.sim_s / res.wall_s:10,.0f} simulated s per wall s "
        f"(goal >= 10,000; 7 days in {7 * 86400 / (res.sim_s / res.wall_s):.1f} s at this speed)"
    )
    print(
        f"  planner calls               {len(pw):8d}   p50 {pct(pw, 50):7.1f} ms   p99 {pct(pw, 99):7.1f} ms   "
        f"total {pw.sum():7.1f} s ({100 * pw.sum() / res.wall_s:.0f} % of wall)"
    )
    print(
        f"  steps without planner       {len(sw):8d}   p50 {np.percentile(sw, 50) * 1e3:7.2f} ms   "
        f"p99 {np.percentile(sw, 99) * 1e3:7.2f} ms   total {sw.sum():7.1f} s"
    )
    print(f"  plan rungs                  {k['controller'].get('plan_rungs')}")
    print(f"  ratio planner/step p50      {pct(pw, 50) / max(np.percentile(sw, 50) * 1e3, 1e-9):8.1f}x")
    year_s = 365 * 86400 / (res.sim_s / res.wall_s)
    print(f"  1 year, EXTRAPOLATED        {year_s / 60:8.1f} min (linear from {res.sim_s / 86400:.2f} simulated days; "
          f"goal < 10 min){'; cProfile on, so slower' if prof is not None else ''}")
    if prof is not None:
        print_parts(prof, res.wall_s)


# (label, file fragment, function): cumulative time of these calls; nested ones are listed under
# their parent, so the lines are not a partition (the planner line contains solve and forecast)
PARTS = [
    ("planner (ControllerCore.plan)", "control/core.py", "plan"),
    ("  optimizer solve (incl. wait on its thread)", "optimizer/problem.py", "solve"),
    ("  forecast", "forecast.py", "__call__"),
    ("dispatch (split over GPUs)", "control/loop.py", "dispatch_tick"),
    ("guard (evaluate, clamp, slew)", "control/loop.py", "guard_tick"),
    ("plant physics (Plant.step)", "sim/plant/site.py", "step"),
    ("plant port (refresh, caps)", "sim/plant/port.py", "refresh"),
    ("loop record", "control/loop.py", "_record"),
    ("replay row (snapshot)", "sim/plant/site.py", "snapshot"),
]


def print_parts(prof: object, wall_s: float) -> None:
    import pstats

    st = pstats.Stats(prof)  # type: ignore[arg-type]
    cum: dict[tuple[str, str], float] = {}
    for (fname, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        for _label, frag, fn in PARTS:
            if fname.endswith(frag) and func == fn:
                cum[(frag, fn)] = cum.get((frag, fn), 0.0) + ct
    print("  wall time by part (cProfile, so slower than the run above; shares of the profiled run):")
    total = sum(v for (frag, fn), v in cum.items() if not frag.startswith(("optimizer", "forecast")))
    for label, frag, fn in PARTS:
        v = cum.get((frag, fn), 0.0)
        print(f"    {label:<46} {v:8.2f} s  {100 * v / max(total, 1e-9):5.1f} %")


if __name__ == "__main__":
    main()
