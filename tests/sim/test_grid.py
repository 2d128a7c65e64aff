"""The plant's grid connection: limits, scheduled and seeded random outages."""

from __future__ import annotations

import numpy as np
import pytest

from powerctl.sim.plant.grid import GridConnection, Outage


def test_scheduled_outage_islands_the_site_for_its_window() -> None:
    g = GridConnection.from_windows(150.0, 50.0, [(3600.0, 7200.0)])
    assert g.up(3599.0) and not g.up(3600.0) and not g.up(7199.0) and g.up(7200.0)
    assert g.outages(1e6) == [Outage(3600.0, 7200.0)]


def test_random_outages_are_reproducible_by_seed_and_match_their_rate() -> None:
    week_s = 7 * 86400.0
    a = GridConnection(150.0, 0.0, outages_per_day=2.0, mean_outage_s=600.0, seed=3)
    b = GridConnection(150.0, 0.0, outages_per_day=2.0, mean_outage_s=600.0, seed=3)
    c = GridConnection(150.0, 0.0, outages_per_day=2.0, mean_outage_s=600.0, seed=4)
    t = np.arange(0.0, week_s, 60.0)
    up_a = np.array([a.up(x) for x in t])
    assert np.array_equal(up_a, np.array([b.up(x) for x in t]))
    assert not np.array_equal(up_a, np.array([c.up(x) for x in t]))
    n = len(a.outages(week_s))
    assert 4 <= n <= 30  # Poisson, mean 14 a week: far outside this is a broken generator
    # The time down matches the outages listed (the two views agree).
    down_s = float((~up_a).sum()) * 60.0
    listed_s = sum(min(o.end_s, week_s) - o.start_s for o in a.outages(week_s))
    assert down_s == pytest.approx(listed_s, abs=60.0 * (n + 1))


def test_no_connection_is_never_up_and_bad_settings_are_refused() -> None:
    assert not GridConnection(0.0, 0.0).up(0.0)
    with pytest.raises(ValueError, match="end_s must be after start_s"):
        GridConnection.from_windows(10.0, 0.0, [(5.0, 5.0)])
    with pytest.raises(ValueError, match="grid limits"):
        GridConnection(-1.0, 0.0)


def test_the_plant_islands_during_a_scheduled_outage() -> None:
    from pathlib import Path

    from powerctl.config import load_config
    from powerctl.sim.plant.site import Plant

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "grid-site.toml")
    plant = Plant(cfg, pv_kw_fn=lambda _t: 0.0, soc0_pct=60.0, other_load_kw=40.0)
    plant.grid = GridConnection.from_windows(150.0, 50.0, [(60.0, 120.0)])
    seen = []
    for t in range(0, 181, 10):
        plant.step(float(t))
        seen.append((t, plant.meter_kw("grid"), plant.meter_v("grid"), plant.snapshot()["grid_up"]))
    for t, p_kw, v, up in seen:
        if 60 <= t < 120:
            assert (p_kw, v, up) == (0.0, 0.0, 0), t  # islanded: the battery carries the load
        elif t > 0:
            assert p_kw > 30.0 and v > 200.0 and up == 1, t  # the grid takes the load
