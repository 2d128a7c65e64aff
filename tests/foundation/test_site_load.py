"""Site-load forecast (issue 16): the load besides the GPUs, from its measurements, reaches the plan."""

from __future__ import annotations

import numpy as np

from powerctl.site_load import SiteLoadForecaster


def test_measured_site_load_is_forecast_and_nothing_without_a_measurement() -> None:
    f = SiteLoadForecaster(sample_every_s=60.0)
    steps = np.full(24, 3600.0)
    assert np.all(f.forecast(0.0, steps) == 0.0)
    # Two days of a load that is 20 kW at night and 60 kW in the afternoon (cooling).
    t0 = 0.0
    for k in range(2 * 24 * 60):
        t = t0 + 60.0 * k
        h = (t / 3600.0) % 24
        f.record(t, 60.0 if 12 <= h < 18 else 20.0)
    now = t0 + 2 * 86400.0 - 60.0  # just before midnight: the level is 20 kW
    fc = f.forecast(now, steps)
    assert fc[0] == np.float64(fc[0]) and abs(fc[0] - 20.0) < 2.0
    afternoon = fc[13:17]  # 13-17 h tomorrow
    assert np.all(afternoon > 50.0), fc
    assert "daily profile" in f.source
    # Nothing recorded for longer than its max age: back to zero (no invented load).
    assert np.all(f.forecast(now + 3600.0, steps) == 0.0)
    # Garbage is not recorded.
    f.record(now + 10.0, float("nan"))
    f.record(now + 20.0, -5.0)
    assert abs(f.forecast(now + 30.0, steps)[0] - 20.0) < 2.0


def test_the_plan_gets_the_measured_site_load() -> None:
    from pathlib import Path

    from powerctl.config import load_config
    from powerctl.control.core import ControllerCore
    from powerctl.control.split import slots_from_pool
    from powerctl.natures import SIGNALS
    from powerctl.process_image import ProcessImage

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml", check_secrets=False)
    seen: dict[str, np.ndarray] = {}

    class Spy:
        def solve(self, inputs, deadline_s):  # type: ignore[no-untyped-def]
            seen["other"] = np.asarray(inputs.other_load_kw)
            raise RuntimeError("seen")

    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.zeros((1, n)), np.full((3, n), 30.0), np.zeros(n)  # a forecaster without site load

    core = ControllerCore(cfg, slots_from_pool(cfg.gpu), fc, problem=Spy())  # type: ignore[arg-type]
    img = ProcessImage()
    for d in cfg.devices:
        for sig in SIGNALS[d.nature]:
            img.declare(d.name, d.nature, sig, 10.0)
    for k in range(10):
        core.site_load.record(900.0 + 10 * k, 35.0)
    try:
        core.plan(1000.0, img)
    except RuntimeError:
        pass
    assert abs(float(seen["other"][0]) - 35.0) < 1e-6
