"""Safety over wear (issue 16): right after a (re)start the controller has seen a stopped genset for
no time at all, so its minimum down time would keep it off; with the battery at its floor and the
load not carried otherwise, the minimum down time yields and the genset starts now."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import load_config
from powerctl.control.core import ControllerCore
from powerctl.control.split import slots_from_pool
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "examples" / "demo-site.toml", check_secrets=False)


def _image(now: float, soc: float, pv_kw: float) -> ProcessImage:
    img = ProcessImage()
    for d in CFG.devices:
        for sig in SIGNALS[d.nature]:
            img.declare(d.name, d.nature, sig, 10.0)
    img.update("pv1", "p_kw", pv_kw, now)
    img.update("bess", "soc_pct", soc, now)
    img.update("gen1", "running", 0.0, now)
    img.update("gen1", "p_kw", 0.0, now)
    return img


def _core() -> ControllerCore:
    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.zeros((1, n)), np.full((3, n), 30.0), np.full(n, 5.0)

    return ControllerCore(CFG, slots_from_pool(CFG.gpu), fc)


def test_min_down_time_yields_when_the_battery_is_at_its_floor(caplog: pytest.LogCaptureFixture) -> None:
    floor = CFG.device("bess").limits.soc_min_pct
    assert CFG.device("gen1").limits.min_down_s >= 300.0
    core = _core()
    img = _image(1000.0, soc=floor + 0.5, pv_kw=0.0)
    caplog.set_level(logging.WARNING, logger="powerctl.control.core")
    plan = core.plan(1000.0, img)  # first sight of the stopped genset: 0 s of its down time
    assert core.min_down_yields == {"gen1"}
    assert any("minimum down time yields for gen1" in r.getMessage() for r in caplog.records)
    assert plan.genset_on[0, 0], plan.explain()
    cmd = core.dispatch(1000.5, img)
    assert cmd.genset_run.get("gen1") is True


def test_min_down_time_holds_while_the_battery_carries_the_load() -> None:
    core = _core()
    img = _image(1000.0, soc=60.0, pv_kw=0.0)
    plan = core.plan(1000.0, img)
    assert core.min_down_yields == set()
    # the plan may want the genset later, but not before its minimum down time from first sight
    starts = np.concatenate(([0.0], np.cumsum(plan.steps_s)[:-1]))
    early = starts < CFG.device("gen1").limits.min_down_s - 1e-9
    assert not plan.genset_on[0, early].any()
    assert core.dispatch(1000.5, img).genset_run.get("gen1") in (False, None)
