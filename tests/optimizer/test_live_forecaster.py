"""LiveForecaster.record: what measured GPU and PV power teach the daemon's forecaster (issue 11)."""

from __future__ import annotations

import numpy as np

from powerctl.forecast import LiveForecaster, PvArray

STEPS_S = np.full(4, 60.0)


def _forecaster() -> LiveForecaster:
    arr = PvArray(kwp=100.0, latitude=36.1, longitude=-79.95)
    return LiveForecaster([arr], np.array([10.0]), clear_kw_fns=[lambda t: np.full(np.size(t), 80.0)])


def test_demand_follows_power_below_caps_that_move_every_cycle() -> None:
    """Caps rising a little every cycle (a slew-limited rise) used to make every sample 'settling',
    which repeated the last sample: the history froze at the first value for good."""
    f = _forecaster()
    for k in range(40):
        cap_kw = 5.0 + 0.1 * k  # changes at every record
        f.record(60.0 * k, [50.0], [2.0], [cap_kw])  # drawing far below any cap: demand is 2 kW
    _pv, gpu, _other, _extra = f(60.0 * 40, None, STEPS_S)
    assert np.allclose(gpu, 2.0, atol=0.05), gpu


def test_capped_class_still_counts_at_its_maximum() -> None:
    f = _forecaster()
    for k in range(20):
        f.record(60.0 * k, [50.0], [4.0 + 0.01 * k], [4.0 + 0.01 * k])  # drawing its (moving) cap
    _pv, gpu, _other, _extra = f(60.0 * 20, None, STEPS_S)
    assert np.allclose(gpu, 10.0), gpu


def test_curtailed_pv_does_not_teach_a_dark_sky() -> None:
    """Clear sky (80 kW), but the site takes only 20 kW (battery full): the inverter is throttled.
    Learning from the delivered power would give index 0.25 (the feedback loop of issue 11); a
    limited reading only bounds the index from below."""
    f = _forecaster()
    for k in range(30):
        f.record(60.0 * k, [20.0], [2.0], [5.0], pv_limited=[True])
    pv, _gpu, _other, _extra = f(60.0 * 30, None, STEPS_S)
    assert pv[0, 0] >= 0.7 * 80.0 - 1e-6, pv  # at least the climatological index, not 0.25
    f.record(60.0 * 30, [30.0], [2.0], [5.0], pv_limited=[False])  # a real cloud, not limited
    for k in range(31, 61):
        f.record(60.0 * k, [30.0], [2.0], [5.0])
    pv, _gpu, _other, _extra = f(60.0 * 61, None, STEPS_S)
    assert abs(pv[0, 0] - 30.0) < 1.0, pv  # an unlimited reading is learnt as it is


def test_first_sample_while_power_rises_is_no_low_demand() -> None:
    """At start-up the GPUs may still be coming out of idle under caps just set: the first sample
    says nothing about demand (taken as demand, the idle power was the forecast for a whole sampling
    period, and tests/sim/test_tie.py planned no genset for GPUs that wanted their maximum)."""
    f = _forecaster()
    f.record(0.0, [50.0], [0.7], [5.0])  # 10 GPUs at 70 W idle, capped at 500 W
    _pv, gpu, _other, _extra = f(1.0, None, STEPS_S)
    assert np.allclose(gpu, 10.0), gpu


def test_loop_reads_throttled_from_the_sunspec_state() -> None:
    """The loop tells the forecaster which PV readings are limited: SunSpec 103 St 5 THROTTLED;
    MPPT, a stale state or a profile whose states are not known count as not limited."""
    from powerctl.control.loop import pv_limited
    from powerctl.natures import Nature
    from powerctl.process_image import ProcessImage

    image = ProcessImage()
    image.declare("pv1", Nature.PV, "state", 5.0)
    image.update("pv1", "state", 5.0, 100.0)
    assert pv_limited(image, "pv1", "sunspec/inverter_103", 101.0)
    assert not pv_limited(image, "pv1", "sungrow/sh_hybrid", 101.0)  # its state is a bit field
    assert not pv_limited(image, "pv1", "sunspec/inverter_103", 200.0)  # stale: unknown
    image.update("pv1", "state", 4.0, 201.0)  # MPPT
    assert not pv_limited(image, "pv1", "sunspec/inverter_103", 202.0)
    assert not pv_limited(image, "pv2", "sunspec/inverter_103", 202.0)  # no such signal
