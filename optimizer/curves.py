"""Concave piecewise-linear value of compute, fitted from measured cap-vs-throughput points.

Pure: numpy in, breakpoints out. The measured points are looked up and passed in by the caller
(``powerctl/throughput.py`` reads the table, ``powerctl/control/value_curves.py`` scales a curve to a
workload class: its IT power budget p_kw is the sum of the per-GPU caps, its value rate the class's
full-throughput value times the relative throughput).

Fit: we take the upper concave hull of the measured points plus the origin, then drop breakpoints
(merging neighbouring segments, which keeps the curve concave) until at most `max_segments` remain,
each time dropping the one whose removal loses the least area. Why the hull and the origin:
  * the optimizer needs concavity (value as a hypograph of lines); measured curves are concave up to
    noise, and the hull over-states value only where the data dip, by at most that dip;
  * a class budget below "every GPU at its minimum cap" is met by running fewer GPUs, so value is
    proportional to power from the origin to the first measured point.
Fewer segments make the problem smaller; three describe these curves to within a few per cent.
"""

from __future__ import annotations

import numpy as np

from powerctl.optimizer.params import FloatArray, InputError


def upper_concave_hull(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vertices of the least concave function >= the points (x sorted ascending, duplicates averaged)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ux = np.unique(xs)
    uy = np.array([ys[xs == v].mean() for v in ux])
    hull: list[int] = []
    for i in range(ux.size):
        # Pop the last vertex while it lies on or below the chord from its predecessor to point i.
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (ux[b] - ux[a]) * (uy[i] - uy[a]) - (uy[b] - uy[a]) * (ux[i] - ux[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return ux[hull], uy[hull]


def _removal_loss(x: FloatArray, y: FloatArray, k: int) -> float:
    """Area lost under the curve when vertex k is removed (the triangle it spans with its neighbours)."""
    x0, x1, x2 = x[k - 1], x[k], x[k + 1]
    y0, y1, y2 = y[k - 1], y[k], y[k + 1]
    return 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))


def fit_concave_pwl(p_kw: FloatArray, value: FloatArray, max_segments: int = 3,
                    include_origin: bool = True) -> tuple[FloatArray, FloatArray]:
    """Concave PWL through measured (power, value) points: breakpoints and values at them.

    Pure function. Raises InputError on empty, non-finite or negative data.
    """
    p = np.asarray(p_kw, dtype=float).ravel()
    v = np.asarray(value, dtype=float).ravel()
    if p.size == 0 or p.shape != v.shape:
        raise InputError("value curve: need equal-length, non-empty power and value arrays")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(v))) or np.any(p < 0):
        raise InputError("value curve: power must be finite and >= 0, values finite")
    if max_segments < 1:
        raise InputError("value curve: max_segments must be >= 1")
    if include_origin:
        p, v = np.concatenate(([0.0], p)), np.concatenate(([0.0], v))
    hx, hy = upper_concave_hull(p, v)
    if hx.size < 2:
        raise InputError("value curve: need at least two distinct power levels")
    while hx.size - 1 > max_segments:
        losses = [_removal_loss(hx, hy, k) for k in range(1, hx.size - 1)]
        k = 1 + int(np.argmin(losses))
        hx, hy = np.delete(hx, k), np.delete(hy, k)
    return hx, hy
