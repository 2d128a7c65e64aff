"""Guard decisions become operator events: one line when a cut starts and one when it ends, the
safe cap and shedding as warnings, each with an MQTT alarm; nothing per 200 ms tick."""

from __future__ import annotations

import logging

from powerctl.control.guard import GuardDecision
from powerctl.control.shed import ShedAction
from powerctl.guard_events import END_HOLD_S, GuardEvents


def decision(cut: bool = False, safe: bool = False, shed: tuple[ShedAction, ...] = (),
             restore: tuple[ShedAction, ...] = ()) -> GuardDecision:
    return GuardDecision(caps_w={0: 300.0}, cut=cut, safe=safe, available_kw=100.0, margin_kw=3.0, load_kw=90.0,
                         gpu_allowed_kw=80.0, shed=shed, restore=restore, reason="caps cut to 80.0 kW" if cut else "")


def test_a_cut_that_lasts_a_minute_is_two_lines() -> None:
    ev, out = GuardEvents(), []
    t = 0.0
    for i in range(300):  # 60 s of 200 ms ticks, cut on every other tick
        out += ev.on_decision(decision(cut=i % 2 == 0), t)
        t += 0.2
    for _ in range(int(END_HOLD_S / 0.2) + 2):
        out += ev.on_decision(decision(), t)
        t += 0.2
    assert [e.kind for e in out] == ["guard_cut", "guard_cut_end"]
    assert out[0].level == logging.INFO and out[0].alarm["kind"] == "guard_cut"
    assert out[1].args[0] >= 59.0 and out[1].alarm["duration_s"] >= 59.0


def test_safe_cap_and_shedding_are_warnings_with_alarms() -> None:
    ev = GuardEvents()
    shed = ShedAction("batch", "shed", 64, 2, 1.0, "12 kW over even at floors")
    got = ev.on_decision(decision(cut=True, safe=True, shed=(shed,)), 1.0)
    assert [(e.kind, e.level) for e in got] == [("safe_cap", logging.WARNING), ("shed", logging.WARNING)]
    assert got[1].alarm == {"t_s": 1.0, "kind": "shed", "class": "batch", "gpus": 64, "reason": "12 kW over even at floors"}
    assert ev.on_decision(decision(cut=True, safe=True), 1.2) == []  # still safe: nothing new
    restore = ShedAction("batch", "restore", 64, 2, 70.0, "supply back")
    got = ev.on_decision(decision(restore=(restore,)), 70.0)
    assert [e.kind for e in got] == ["safe_cap_end", "restore"]
    assert got[1].level == logging.INFO and got[1].alarm["kind"] == "restore"
