"""Value of compute per workload class: a concave piecewise-linear function of class IT power.

From a measured cap-vs-throughput curve (relative throughput r at cap fraction f = cap / max), a
class of ``n`` GPUs at per-GPU cap ``f * max_w`` draws ``n * f * max_w`` and delivers ``r(f)`` of its
full throughput. Below the floor the class can only run fewer GPUs, so value between 0 and any
point is at best linear: the upper concave hull of {(0, 0)} and the measured points is exactly
what the planner can achieve by mixing whole GPUs off with GPUs at efficient caps. The hull is
concave, so maximising it stays a convex problem; ``optimizer.curves.fit_concave_pwl`` computes it
(and keeps at most three segments, which describe these curves to within a few per cent).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from powerctl.optimizer.curves import fit_concave_pwl, load_curve_rows

CURVES_CSV = Path(__file__).resolve().parent.parent / "data" / "gpu-cap-curves.csv"


@cache
def _rows() -> list[dict[str, str]]:
    return load_curve_rows(CURVES_CSV)


def throughput_curve(workload: str) -> tuple[np.ndarray, np.ndarray]:
    """(cap fraction, relative throughput) for a workload name prefix in the reference table.

    ``linear`` gives throughput proportional to power. Raises KeyError listing known names.
    """
    if workload == "linear":
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    rows = [r for r in _rows() if r["workload"].split(" ")[0] == workload]
    if not rows:
        known = sorted({r["workload"].split(" ")[0] for r in _rows()})
        raise KeyError(f"unknown workload curve {workload!r}; known: {', '.join(known)} or 'linear'")
    caps = np.array([float(r["cap_w"]) for r in rows])
    tput = np.array([float(r["relative_throughput"]) for r in rows])
    order = np.argsort(caps)
    caps, tput = caps[order], tput[order]
    return caps / caps.max(), tput


def class_value_pwl(
    workload: str, n_gpus: int, max_w: float, value_per_kwh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (class IT power, kW) and value per hour at each, concave, starting at (0, 0).

    At full power the class earns ``value_per_kwh`` per kWh of IT energy.
    """
    frac, tput = throughput_curve(workload)
    p_max_kw = n_gpus * max_w / 1000.0
    # the optimizer's fit: upper concave hull through the origin, reduced to a few segments
    return fit_concave_pwl(frac * p_max_kw, tput * p_max_kw * value_per_kwh, max_segments=3, include_origin=True)
