"""Site-load forecast: the load besides the GPUs (cooling, auxiliaries) from its own measurements.

The control loop estimates it every cycle from the meters and supplies (`control.loop.measured_other_kw`:
supply minus GPU power with its overhead) wherever the readings give it. Cooling on a compute
module is large and follows the weather and the time of day, so it is forecast like GPU demand:
the recent level blending to the daily profile of its history (`forecast.gpu_demand_forecast`).
Without a recent measurement the forecast is zero, as before: the guard still sees the real load
every tick, and an invented load would only shift compute away for nothing.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from powerctl.forecast import FloatArray, gpu_demand_forecast

# No load above this is recorded (a reading that says so is not a load, see plausibility).
MAX_SITE_LOAD_KW = 1e6


class SiteLoadForecaster:
    """A bounded history of the measured other load (one sample per `sample_every_s`)."""

    def __init__(self, *, history_s: float = 2 * 86400.0, sample_every_s: float = 60.0,
                 max_age_s: float = 300.0) -> None:
        self.history_s = history_s
        self.sample_every_s = sample_every_s
        self.max_age_s = max_age_s
        self._hist: deque[tuple[float, float]] = deque()
        self.source = "none (no measurement)"

    def record(self, now_s: float, other_kw: float | None) -> None:
        """One measured value (None: not measured this cycle, nothing recorded)."""
        if other_kw is None or not np.isfinite(other_kw) or not 0.0 <= other_kw <= MAX_SITE_LOAD_KW:
            return
        if self._hist and now_s < self._hist[-1][0]:
            self._hist.clear()  # the clock went back: the order is gone, start again
        if self._hist and now_s - self._hist[-1][0] < self.sample_every_s:
            # keep the newest level in the last sample (the forecast's "recent level")
            self._hist[-1] = (self._hist[-1][0], float(other_kw))
        else:
            self._hist.append((now_s, float(other_kw)))
        while self._hist and self._hist[0][0] < now_s - self.history_s:
            self._hist.popleft()

    def forecast(self, now_s: float, steps_s: FloatArray) -> FloatArray:
        """(T,) kW: persistence blending to the daily profile; zeros without a recent measurement."""
        steps = np.asarray(steps_s, dtype=float)
        if not self._hist or now_s - self._hist[-1][0] > self.max_age_s:
            self.source = "none (no recent measurement)"
            return np.zeros(steps.size)
        ts = np.array([t for t, _ in self._hist], dtype=float)
        kw = np.array([[v for _, v in self._hist]], dtype=float)
        fc = gpu_demand_forecast(now_s, steps, ts, kw, np.array([MAX_SITE_LOAD_KW]), max_age_s=self.max_age_s)
        self.source = fc.source
        return np.asarray(fc.values_kw[0], dtype=float)
