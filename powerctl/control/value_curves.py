"""Value of compute per workload class: a concave piecewise-linear function of class IT power.

From a measured cap-vs-throughput curve (relative throughput r at cap fraction f = cap / max), a
class of ``n`` GPUs at per-GPU cap ``f * max_w`` draws ``n * f * max_w`` and delivers ``r(f)`` of its
full throughput. Below the floor the class can only run fewer GPUs, so value between 0 and any
point is at best linear: the upper concave hull of {(0, 0)} and the measured points is exactly
what the planner can achieve by mixing whole GPUs off with GPUs at efficient caps. The hull is
concave, so maximising it stays a convex problem.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np

CURVES_CSV = Path(__file__).resolve().parent.parent / "data" / "gpu-cap-curves.csv"


@cache
def _rows() -> list[dict[str, str]]:
    with CURVES_CSV.open(newline="") as fh:
        return list(csv.DictReader(fh))


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


def upper_concave_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper concave hull of points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for px, py in zip(x.tolist(), y.tolist(), strict=True):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord
            if (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append((px, py))
    hx, hy = zip(*hull, strict=True)
    return np.array(hx), np.array(hy)


def class_value_pwl(
    workload: str, n_gpus: int, max_w: float, value_per_kwh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (class IT power, kW) and value per hour at each, concave, starting at (0, 0).

    At full power the class earns ``value_per_kwh`` per kWh of IT energy.
    """
    frac, tput = throughput_curve(workload)
    p_max_kw = n_gpus * max_w / 1000.0
    x = np.concatenate([[0.0], frac * p_max_kw])
    y = np.concatenate([[0.0], tput * p_max_kw * value_per_kwh])
    keep = np.concatenate([[True], np.diff(x) > 1e-12])
    return upper_concave_hull(x[keep], y[keep])
