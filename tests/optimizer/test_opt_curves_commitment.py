"""Value-curve fitting from the measured CSV, and the commitment candidate rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerctl.optimizer import GensetParams, InputError
from powerctl.optimizer.commitment import (
    available_fraction,
    stay_schedule,
    switch_steps,
    switched,
    window_steps,
    windowed,
)
from powerctl.optimizer.curves import fit_concave_pwl, upper_concave_hull
from powerctl.throughput import load_table, throughput_curve

CSV = Path(__file__).resolve().parents[2] / "powerctl" / "data" / "gpu-cap-curves.csv"


def test_hull_is_concave_and_above_points() -> None:
    x = np.array([0, 1, 2, 3, 4.0])
    y = np.array([0, 3, 4, 4.2, 5.0])  # the last point makes (3, 4.2) a dip
    hx, hy = upper_concave_hull(x, y)
    np.testing.assert_allclose(hx, [0, 1, 2, 4])
    assert np.all(np.diff(np.diff(hy) / np.diff(hx)) <= 0)
    assert np.all(np.interp(x, hx, hy) >= y - 1e-12)


def test_fit_reduces_segments_keeping_concavity_and_ends() -> None:
    p = np.linspace(1, 10, 10)
    v = np.sqrt(p)
    bp, val = fit_concave_pwl(p, v, max_segments=3)
    assert bp.size == 4 and bp[0] == 0.0 and bp[-1] == 10.0
    assert val[-1] == pytest.approx(np.sqrt(10))
    slopes = np.diff(val) / np.diff(bp)
    assert np.all(np.diff(slopes) <= 1e-12)


def test_fit_from_measured_a100_curves() -> None:
    if not CSV.exists():
        pytest.fail(f"reference data missing: {CSV}")
    frac, tput = throughput_curve("A100", "infer_llama_8b", load_table(CSV))
    bp, val = fit_concave_pwl(frac * 64 * 0.4, tput * 100.0, max_segments=3)
    # 64 GPUs at 400 W = 25.6 kW at full throughput (relative 1.0).
    assert bp[-1] == pytest.approx(25.6) and val[-1] == pytest.approx(100.0)
    # At a 200 W cap (12.8 kW) the CSV says 0.781 of full throughput; the hull keeps that vertex.
    assert np.interp(12.8, bp, val) == pytest.approx(78.1, abs=0.5)
    assert np.all(np.diff(np.diff(val) / np.diff(bp)) <= 1e-12)


def test_fit_errors_name_the_problem() -> None:
    with pytest.raises(InputError, match="finite"):
        fit_concave_pwl(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


GEN = GensetParams("g", 100, 30, 1.0, 0.25, min_up_s=1800, min_down_s=900, warmup_s=120)


def test_switch_candidates_respect_min_up_and_down() -> None:
    steps = np.full(48, 300.0)  # 4 h
    # On for 600 s: may stop only after 1800 s, i.e. from step 4 (t = 1200 s from now).
    ks = switch_steps(GEN, True, 600.0, steps, 6)
    assert ks[0] == 4 and all(k >= 4 for k in ks)
    # Off for 100 s: may start only after 900 s -> step 3 (800 s from now rounds up to the 900 s step).
    ks = switch_steps(GEN, False, 100.0, steps, 6)
    assert ks[0] == 3
    # Candidates thin out geometrically towards the horizon's end.
    assert len(ks) <= 6 and ks == sorted(set(ks))


def test_warmup_availability_and_switched_schedule() -> None:
    steps = np.full(4, 60.0)
    base = stay_schedule(np.array([False]), 4)
    s = switched(base, 0, False, 1)
    np.testing.assert_array_equal(s.on[0], [False, True, True, True])
    # Starts at step 1; 120 s warm-up covers steps 1 and 2.
    np.testing.assert_allclose(available_fraction(GEN, s.on[0], False, 0.0, steps), [0, 0, 0, 1])
    # Already on for 90 s: 30 s of warm-up left in step 0 -> half the step available.
    np.testing.assert_allclose(available_fraction(GEN, np.ones(4, bool), True, 90.0, steps), [0.5, 1, 1, 1])


def test_window_candidates_respect_min_up_and_down() -> None:
    steps = np.full(48, 300.0)  # 4 h; GEN: min up 1800 s, min down 900 s
    t = np.arange(48) * 300.0
    # Running for 600 s: stop from step 4 (as for plain stops), off >= 900 s, restart >= 1800 s
    # before the horizon's end.
    off = window_steps(GEN, True, 600.0, steps, 6)
    assert off and all(k1 >= 4 and t[k2] - t[k1] >= 900 and 4 * 3600 - t[k2] >= 1800 for k1, k2, _ in off)
    w = windowed(stay_schedule(np.array([True]), 48), 0, True, *off[0][:2])
    assert w.on[0, : off[0][0]].all() and not w.on[0, off[0][0]:off[0][1]].any() and w.on[0, off[0][1]:].all()
    # Off for 100 s: start from step 3, on >= 1800 s before the stop.
    on = window_steps(GEN, False, 100.0, steps, 6)
    assert on and all(k1 >= 3 and t[k2] - t[k1] >= 1800 for k1, k2, _ in on)
    # A tiny window (1 step of 5 min, H/8 = 30 min) is widened to the minimum, never below it.
    assert min(t[k2] - t[k1] for k1, k2, _ in on) == 1800
