"""Process image: stale means worst case."""

from __future__ import annotations

import math

import pytest

from powerctl.natures import Nature
from powerctl.process_image import ProcessImage, Quality


@pytest.fixture
def image() -> ProcessImage:
    img = ProcessImage()
    img.declare("pv1", Nature.PV, "p_kw", max_age_s=2.0)
    img.declare("bess", Nature.BATTERY, "soc_pct", max_age_s=2.0)
    img.declare("bess", Nature.BATTERY, "p_kw", max_age_s=2.0)
    img.declare("gpu", Nature.GPU_POOL, "p_kw", max_age_s=1.0)
    return img


def test_fresh_value_is_returned(image: ProcessImage) -> None:
    image.update("pv1", "p_kw", 80.0, ts=100.0)
    assert image.value("pv1", "p_kw", now=101.0) == 80.0
    assert image.worst("pv1", "p_kw", now=101.0, high=250.0) == 80.0


def test_old_value_is_stale_and_dropped(image: ProcessImage) -> None:
    image.update("pv1", "p_kw", 80.0, ts=100.0)
    sig = image.get("pv1", "p_kw", now=102.5)
    assert sig.quality is Quality.STALE and sig.value is None
    assert image.value("pv1", "p_kw", now=102.5) is None


def test_worst_cases_per_signal_kind(image: ProcessImage) -> None:
    # never received: supply reads zero, SoC reads the bottom of its window, load its maximum
    assert image.worst("pv1", "p_kw", now=0.0, high=250.0) == 0.0
    assert image.worst("bess", "soc_pct", now=0.0, low=10.0, high=95.0) == 10.0
    assert image.worst("gpu", "p_kw", now=0.0, high=89.6) == 89.6
    image.update("bess", "soc_pct", 60.0, ts=10.0)
    assert image.worst("bess", "soc_pct", now=11.0, low=10.0, high=95.0) == 60.0
    assert image.worst("bess", "soc_pct", now=20.0, low=10.0, high=95.0) == 10.0


def test_signal_without_safe_substitute_raises(image: ProcessImage) -> None:
    with pytest.raises(LookupError, match="no worst case"):
        image.worst("bess", "p_kw", now=0.0, high=100.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf, None])
def test_non_finite_values_are_invalid(image: ProcessImage, bad: float | None) -> None:
    image.update("pv1", "p_kw", bad, ts=1.0)
    sig = image.get("pv1", "p_kw", now=1.0)
    assert sig.quality is Quality.INVALID and sig.value is None
    assert image.worst("pv1", "p_kw", now=1.0, high=250.0) == 0.0


def test_device_marked_stale(image: ProcessImage) -> None:
    image.update("bess", "soc_pct", 55.0, ts=5.0)
    image.update("bess", "p_kw", 10.0, ts=5.0)
    image.mark_device("bess", Quality.STALE, ts=5.5, reason="not answering")
    assert image.value("bess", "soc_pct", now=5.6) is None
    assert image.get("bess", "p_kw", now=5.6).reason == "not answering"
    assert image.value("pv1", "p_kw", now=5.6) is None  # untouched, still missing


def test_clock_step_back_does_not_keep_future_values(image: ProcessImage) -> None:
    image.update("pv1", "p_kw", 50.0, ts=1000.0)
    # the clock stepped back by 10 min: a reading "from the future" is not trusted
    assert image.get("pv1", "p_kw", now=400.0).quality is Quality.STALE


def test_undeclared_and_unknown_signals(image: ProcessImage) -> None:
    with pytest.raises(KeyError, match="not declared"):
        image.update("pv9", "p_kw", 1.0, ts=0.0)
    with pytest.raises(KeyError, match="has no signal 'volts'"):
        image.declare("pv1", Nature.PV, "volts", max_age_s=1.0)
