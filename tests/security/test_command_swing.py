"""The review's budget attack against the closed loop: an operator (even a signed one) alternating
two GPU budgets every 2.5 s in manual mode. The production ControlLoop (core + guard) runs against
the simulated plant at the guard's 0.2 s cadence with the daemon's command state
(``CommandState.for_site``): caps never rise faster than the slew limit, and the plant sees at most
one budget change per ``mqtt.command_min_interval_s``, not one every 2.5 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from powerctl.config import load_config
from powerctl.control.core import OperatorMode, Overrides
from powerctl.control.loop import ControlLoop
from powerctl.control.split import slots_from_pool
from powerctl.mqtt import CommandState
from powerctl.sim.plant.port import PlantPort
from powerctl.sim.plant.site import Plant
from powerctl.sim.replay import make_planner
from tests.foundation.test_end_to_end import persistence_forecaster

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml"


def test_alternating_budgets_do_not_swing_the_plant(tmp_path: Path) -> None:
    text = DEMO.read_text().replace('"run/', f'"{tmp_path}/run/') + '\n[mqtt]\nhost = "127.0.0.1"\n'
    (tmp_path / "site.toml").write_text(text)
    cfg = load_config(tmp_path / "site.toml")
    assert cfg.mqtt is not None
    period_s = cfg.control.guard_period_s
    plant = Plant(cfg, pv_kw_fn=lambda t: 250.0, t0_s=0.0, soc0_pct=80.0)
    slots = slots_from_pool(cfg.gpu)
    port = PlantPort(cfg, plant, max_age_s=5.0)
    loop = ControlLoop(cfg, slots, make_planner("ours", cfg, slots, persistence_forecaster(cfg)), port, port)
    now = [0.0]
    commands = CommandState.for_site(cfg, lambda: now[0])
    lo_kw, hi_kw = 40.0, cfg.gpu.count * cfg.gpu.max_w / 1000.0
    plant.step(0.0)
    loop.start(0.0, 0.0, {i: float(c) for i, c in enumerate(plant.gpu.caps_w)})
    commands.set("mode", "manual")
    caps_kw, changes = [], 0
    for k in range(int(60.0 / period_s)):
        t = k * period_s
        now[0] = t
        if k % round(2.5 / period_s) == 0:  # every 2.5 s the other budget
            changes += commands.set("gpu_budget_max_kw", hi_kw if (k // round(2.5 / period_s)) % 2 else lo_kw
                                    ).reason == "set"
        port.refresh(t)
        ov = Overrides(mode=OperatorMode(commands.mode(t)), gpu_budget_max_kw=commands.gpu_budget_ceiling_kw(t))
        loop.tick(t, t, ov)
        plant.step(t + period_s)
        caps_kw.append(float(plant.gpu.caps_w.sum()) / 1000.0)
    rise_kw_per_s = np.diff(caps_kw) / period_s
    limit = cfg.gpu.ramp_up_kw_per_s / (1 + cfg.gpu.facility_overhead)
    assert rise_kw_per_s.max() <= limit + 1e-6, (rise_kw_per_s.max(), limit)
    paced = 60.0 / cfg.mqtt.command_min_interval_s + 1
    assert changes <= paced
    # cuts faster than the slew limit: the budget commands reaching the plant (25 changes and 12 such
    # cuts in this minute without the pacing; 5 and 2 with it)
    drops = int(np.sum(rise_kw_per_s < -limit))
    assert drops <= paced, (drops, changes)
    assert max(caps_kw) - min(caps_kw) > 10.0, "the budgets never reached the plant: the test shows nothing"
