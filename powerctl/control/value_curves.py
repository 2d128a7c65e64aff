"""Value of compute per workload class: a concave piecewise-linear function of class IT power.

From a measured cap-vs-throughput curve (relative throughput r at cap fraction f = cap / max; the
caller looks it up with ``powerctl.throughput.throughput_curve``), a class of ``n`` GPUs at per-GPU
cap ``f * max_w`` draws ``n * f * max_w`` and delivers ``r(f)`` of its full throughput. Below the
floor the class can only run fewer GPUs, so value between 0 and any point is at best linear: the
upper concave hull of {(0, 0)} and the measured points is exactly what the planner can achieve by
mixing whole GPUs off with GPUs at efficient caps. The hull is concave, so maximising it stays a
convex problem; ``powerctl.optimizer.curves.fit_concave_pwl`` computes it (and keeps at most three
segments, which describe these curves to within a few per cent).
"""

from __future__ import annotations

import numpy as np

from powerctl.optimizer.curves import fit_concave_pwl


def class_value_pwl(
    cap_frac: np.ndarray, rel_tput: np.ndarray, n_gpus: int, max_w: float, value_per_kwh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (class IT power, kW) and value per hour at each, concave, starting at (0, 0).

    At full power the class earns ``value_per_kwh`` per kWh of IT energy.
    """
    p_max_kw = n_gpus * max_w / 1000.0
    # the optimizer's fit: upper concave hull through the origin, reduced to a few segments
    return fit_concave_pwl(cap_frac * p_max_kw, rel_tput * p_max_kw * value_per_kwh, max_segments=3,
                           include_origin=True)
