"""Forecasts feeding the optimizer: PV (clear sky x clear-sky index) and GPU demand per class.

No I/O: callers pass in recent measurements (timestamps in epoch seconds, UTC) and, if configured,
an external forecast already read from its file or MQTT topic. Every forecast carries where it came
from (`source`) and when its newest input was measured (`issued_s`), so the planner can see its
age; `reserve_extra_kw` turns staleness into extra operating reserve.

PV: pvlib clear-sky irradiance (Ineichen, climatological Linke turbidity) for the site, transposed
to the array plane (isotropic sky) and scaled by kWp with a flat loss factor; temperature is
ignored (a few per cent, well inside the clear-sky index's error). The clear-sky index k = measured
/ clear-sky output over the last `window_s` of daylight is persistence for the near term and blends
exponentially to a climatological index further out (k(lead) = k_clim + (k_now - k_clim) e^(-lead/tau)).

GPU demand: persistence of the recent level per class blending to a daily profile (hour-of-day
means of the history) with the same exponential; flat recent level when the history is shorter than
a day.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pvlib

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Forecast:
    """Forecast values over the horizon with their provenance."""

    values_kw: FloatArray  # (n, T)
    source: str
    issued_s: float  # epoch s of the newest measurement (or external issue time) it rests on

    def age_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.issued_s)


@dataclass(frozen=True)
class PvArray:
    """One PV array (or aggregate) at the site."""

    kwp: float
    latitude: float
    longitude: float
    tilt_deg: float = 20.0
    azimuth_deg: float = 180.0
    altitude_m: float = 0.0
    loss_factor: float = 0.86  # inverter, soiling, wiring, mismatch (PVWatts-like default)


def step_midpoints_s(now_s: float, steps_s: FloatArray) -> FloatArray:
    """Epoch time of the middle of each horizon step."""
    steps = np.asarray(steps_s, dtype=float)
    return now_s + np.concatenate(([0.0], np.cumsum(steps)[:-1])) + steps / 2


def clearsky_pv_kw(array: PvArray, times_s: FloatArray) -> FloatArray:
    """Clear-sky AC output (kW) of the array at the given epoch times."""
    t = np.asarray(times_s, dtype=float)
    if t.size == 0:
        return np.zeros(0)
    idx = pd.DatetimeIndex(pd.to_datetime(t, unit="s", utc=True))
    loc = pvlib.location.Location(array.latitude, array.longitude, altitude=array.altitude_m)
    with warnings.catch_warnings():
        # pvlib 0.16 still calls DatetimeIndex.dayofyear, deprecated in pandas 3; harmless.
        warnings.filterwarnings("ignore", message=".*dayofyear is deprecated.*")
        cs = loc.get_clearsky(idx, model="ineichen")
        sun = loc.get_solarposition(idx)
    poa = pvlib.irradiance.get_total_irradiance(
        array.tilt_deg, array.azimuth_deg, sun["apparent_zenith"], sun["azimuth"],
        cs["dni"], cs["ghi"], cs["dhi"], model="isotropic")
    poa_wm2 = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0)
    return np.clip(array.kwp * poa_wm2 / 1000.0 * array.loss_factor, 0.0, array.kwp)


def clearsky_index(meas_ts_s: FloatArray, meas_kw: FloatArray, clear_kw: FloatArray, kwp: float,
                   min_clear_frac: float = 0.05) -> float | None:
    """Measured / clear-sky energy over daylight samples; None when there is no daylight to judge by."""
    ts, m, c = (np.asarray(a, dtype=float) for a in (meas_ts_s, meas_kw, clear_kw))
    ok = np.isfinite(m) & np.isfinite(c) & (c > min_clear_frac * kwp)
    if ts.size == 0 or not np.any(ok):
        return None
    return float(np.clip(np.sum(np.maximum(m[ok], 0.0)) / np.sum(c[ok]), 0.0, 1.2))


def blend(now_value: FloatArray | float, far_value: FloatArray, lead_s: FloatArray, tau_s: float) -> FloatArray:
    """Exponential blend from the current value to the far-out value with lead time."""
    w = np.exp(-np.maximum(np.asarray(lead_s, dtype=float), 0.0) / max(tau_s, 1e-9))
    return np.asarray(far_value + (np.asarray(now_value) - far_value) * w, dtype=float)


def pv_forecast(array: PvArray, now_s: float, steps_s: FloatArray, meas_ts_s: FloatArray, meas_kw: FloatArray,
                *, k_climatology: float = 0.7, tau_s: float = 3 * 3600.0, window_s: float = 1800.0,
                max_meas_age_s: float = 900.0, external: Forecast | None = None,
                external_max_age_s: float = 3 * 3600.0,
                clear_kw_fn: Callable[[FloatArray], FloatArray] | None = None,
                meas_limited: npt.NDArray[np.bool_] | None = None) -> Forecast:
    """PV forecast (1, T) kW for the horizon starting at `now_s`.

    Order of preference: an external forecast younger than `external_max_age_s`; clear sky x index
    from measurements of the last `window_s` (if the newest is younger than `max_meas_age_s`);
    clear sky x climatological index. ``meas_limited`` marks measurements taken while the inverter
    delivered less than it could (curtailed, throttled): they bound the index from below only (a
    curtailed inverter says nothing about the sky; learning from it would forecast a dark sky
    because the site had no use for the sun, and so plan less use of it).
    """
    steps = np.asarray(steps_s, dtype=float)
    mids = step_midpoints_s(now_s, steps)
    if external is not None and external.age_s(now_s) <= external_max_age_s:
        vals = np.asarray(external.values_kw, dtype=float).reshape(1, -1)
        if vals.shape[1] != steps.size:
            raise ValueError(f"external PV forecast: {vals.shape[1]} values for {steps.size} steps")
        return Forecast(np.clip(vals, 0.0, array.kwp), external.source, external.issued_s)
    clear_of = clear_kw_fn if clear_kw_fn is not None else (lambda t: clearsky_pv_kw(array, t))
    clear = clear_of(mids)
    ts = np.asarray(meas_ts_s, dtype=float)
    kw = np.asarray(meas_kw, dtype=float)
    recent = (ts > now_s - window_s) & (ts <= now_s)
    k_now = None
    newest = float(ts.max()) if ts.size else float("-inf")
    if np.any(recent) and now_s - newest <= max_meas_age_s:
        limited = np.zeros(ts.size, dtype=bool) if meas_limited is None else np.asarray(meas_limited, dtype=bool)
        exact, bound = recent & ~limited, recent & limited
        if np.any(exact):
            k_now = clearsky_index(ts[exact], kw[exact], clear_of(ts[exact]), array.kwp)
        k_low = clearsky_index(ts[bound], kw[bound], clear_of(ts[bound]), array.kwp) if np.any(bound) else None
        if k_low is not None:
            k_now = max(k_now if k_now is not None else k_climatology, k_low)
    if k_now is None:
        issued = newest if ts.size else now_s
        src = "clearsky x climatology" + (" (measurements stale)" if ts.size else " (no measurements)")
        return Forecast((clear * k_climatology)[None, :], src, issued)
    k = blend(k_now, np.full(steps.size, k_climatology), mids - now_s, tau_s)
    return Forecast(np.clip(clear * k, 0.0, array.kwp)[None, :], f"clearsky x index {k_now:.2f} -> climatology",
                    newest)


def daily_profile(ts_s: FloatArray, kw: FloatArray, bins: int = 24) -> FloatArray | None:
    """Mean per hour-of-day bin (UTC) for each class: (n, bins); None if the history is under a day
    or a bin has no samples."""
    ts = np.asarray(ts_s, dtype=float)
    v = np.atleast_2d(np.asarray(kw, dtype=float))
    if ts.size == 0 or ts.max() - ts.min() < 86400.0 - 3600.0:
        return None
    b = ((ts % 86400.0) / 86400.0 * bins).astype(int) % bins
    out = np.zeros((v.shape[0], bins))
    for i in range(bins):
        sel = b == i
        if not np.any(sel):
            return None
        out[:, i] = np.nanmean(v[:, sel], axis=1)
    return out


def gpu_demand_forecast(now_s: float, steps_s: FloatArray, hist_ts_s: FloatArray, hist_kw: FloatArray,
                        p_max_kw: FloatArray, *, recent_s: float = 900.0, tau_s: float = 2 * 3600.0,
                        max_age_s: float = 300.0) -> Forecast:
    """GPU demand (n_class, T) kW: recent level per class blending to the daily profile.

    With no recent history (older than `max_age_s`) every class is forecast at its maximum: the
    optimizer's budget is a cap, so over-forecasting demand costs nothing but a looser cap.
    """
    steps = np.asarray(steps_s, dtype=float)
    mids = step_midpoints_s(now_s, steps)
    pmax = np.asarray(p_max_kw, dtype=float)
    ts = np.asarray(hist_ts_s, dtype=float)
    kw = np.atleast_2d(np.asarray(hist_kw, dtype=float)).reshape(pmax.size, -1)
    newest = float(ts.max()) if ts.size else float("-inf")
    if ts.size == 0 or now_s - newest > max_age_s:
        return Forecast(np.repeat(pmax[:, None], steps.size, axis=1), "maximum (no recent history)",
                        newest if ts.size else now_s)
    recent = ts > now_s - recent_s
    level = np.nanmean(kw[:, recent], axis=1) if np.any(recent) else kw[:, int(np.argmax(ts))]
    prof = daily_profile(ts, kw)
    if prof is None:
        vals = np.repeat(level[:, None], steps.size, axis=1)
        src = "persistence (history < 1 day)"
    else:
        bins = prof.shape[1]
        far = prof[:, ((mids % 86400.0) / 86400.0 * bins).astype(int) % bins]
        now_bin = int((now_s % 86400.0) / 86400.0 * bins) % bins
        # Persist today's deviation from the profile, fading with lead time.
        vals = far + (level - prof[:, now_bin])[:, None] * np.exp(-(mids - now_s) / tau_s)[None, :]
        src = "persistence -> daily profile"
    return Forecast(np.clip(vals, 0.0, pmax[:, None]), src, newest)


def reserve_extra_kw(now_s: float, pv: Forecast, gpu: Forecast, gpu_max_kw: FloatArray, *,
                     stale_after_s: float = 900.0, pv_share: float = 0.5, overhead: float = 0.0) -> FloatArray:
    """Extra operating reserve (T,) kW for stale forecasts.

    A stale PV forecast adds `pv_share` of the forecast PV (it may not be there); a stale GPU demand
    forecast adds the gap to each class's maximum (demand may be higher), times (1 + overhead).
    The share ramps in linearly over one more `stale_after_s` so the reserve does not jump.
    """
    def ramp(age: float) -> float:
        return float(np.clip((age - stale_after_s) / stale_after_s, 0.0, 1.0))

    pv_kw = np.asarray(pv.values_kw, dtype=float).sum(axis=0)
    extra = ramp(pv.age_s(now_s)) * pv_share * pv_kw
    gap = np.maximum(0.0, np.asarray(gpu_max_kw, dtype=float)[:, None] - np.asarray(gpu.values_kw, dtype=float))
    extra = extra + ramp(gpu.age_s(now_s)) * (1.0 + overhead) * gap.sum(axis=0)
    return np.asarray(extra, dtype=float)


# --- the daemon's forecaster: measurement history in, the controller core's forecast tuple out ---


def class_demand_kw(p_kw: float, cap_kw: float, max_kw: float, *, capped_frac: float = 0.9) -> float:
    """What a class's measured power says about its demand: a class drawing (nearly) its cap is
    capped, its demand at least the cap and unknown above, so its maximum; below the cap, what it
    draws is what its work asks."""
    return max_kw if p_kw >= capped_frac * cap_kw else p_kw


class LiveForecaster:
    """Keeps a bounded history of measured PV and GPU class power and forecasts from it.

    ``record`` is called once per dispatch cycle with what was measured; ``__call__`` has the
    controller core's forecaster signature and returns (pv (n_pv, T), gpu (n_class, T), other (T,),
    reserve_extra (T,)). A class whose GPUs draw (nearly) their caps is capped, not idle: its
    demand is unknown above the cap, so it is recorded at its maximum (a cap must never lock the
    budget low just because it binds).
    """

    def __init__(self, arrays: list[PvArray], class_max_kw: FloatArray, *, history_s: float = 2 * 86400.0,
                 sample_every_s: float = 60.0, overhead: float = 0.0,
                 clear_kw_fns: list[Callable[[FloatArray], FloatArray]] | None = None) -> None:
        self.arrays = arrays
        self.clear_kw_fns = clear_kw_fns
        self.class_max_kw = np.asarray(class_max_kw, dtype=float)
        self.history_s = history_s
        self.sample_every_s = sample_every_s
        self.overhead = overhead
        self._pv_ts: list[float] = []
        self._pv_kw: list[list[float]] = []
        self._gpu_ts: list[float] = []
        self._gpu_kw: list[list[float]] = []
        self._pv_recent: deque[tuple[float, list[float]]] = deque()  # fine-grained, last window only
        self._last_gpu_sample = float("-inf")
        self._caps: list[float] = []
        self._cap_changed_s: dict[int, float] = {}
        self._cap_before: dict[int, float] = {}  # each class's cap before its latest change
        self.settle_s = 5.0
        self.last_sources: tuple[str, str] = ("", "")

    def record(self, now_s: float, pv_kw: list[float | None], class_kw: list[float], class_cap_kw: list[float],
               pv_limited: list[bool] | None = None) -> None:
        """One cycle's measurements; a None PV reading (stale) is simply not recorded. ``pv_limited``:
        per array, whether its inverter delivers less than it could (see ``pv_forecast``)."""
        if all(v is not None for v in pv_kw):
            # each sample: the arrays' kW, then their limited flags (1.0: limited)
            lim = pv_limited or [False] * len(pv_kw)
            vals = [float(v) for v in pv_kw if v is not None] + [float(f) for f in lim]
            recent, cutoff = self._pv_recent, now_s - 1800.0
            # drop from the old end only (rebuilding the list cost O(window) every cycle); after a
            # backward clock step the order is gone, so filter it all once
            if recent and recent[-1][0] > now_s:
                recent = self._pv_recent = deque((t, v) for t, v in recent if t > cutoff)
            recent.append((now_s, vals))
            while recent and recent[0][0] <= cutoff:
                recent.popleft()
            if not self._pv_ts or now_s - self._pv_ts[-1] >= self.sample_every_s:
                self._pv_ts.append(now_s)
                self._pv_kw.append(vals)
        for i, cap in enumerate(class_cap_kw):
            if i >= len(self._caps) or abs(self._caps[i] - cap) > 1e-3:
                self._cap_changed_s[i] = now_s
                self._cap_before[i] = self._caps[i] if i < len(self._caps) else cap
        self._caps = list(class_cap_kw)
        if now_s - self._last_gpu_sample >= self.sample_every_s or not self._gpu_ts:
            demand = []
            for i, (p, c, m) in enumerate(zip(class_kw, class_cap_kw, self.class_max_kw.tolist(), strict=True)):
                # while power still moves towards a new cap, the lower of the two caps is the one
                # that may bind. (Repeating the last sample instead froze the history for good
                # whenever caps changed at every cycle, as slew-limited rises do: a class capped
                # once stayed forecast at that level, issue 11.)
                settling = now_s - self._cap_changed_s.get(i, -math.inf) < self.settle_s
                binding = min(c, self._cap_before.get(i, c)) if settling else c
                # at first sight the caps in force before us are unknown and the power may still be
                # rising to the cap (GPUs coming out of idle): no evidence of a low demand, so the
                # maximum (a start-up sample of idle power was the forecast for a whole minute)
                demand.append(m if settling and not self._gpu_ts else class_demand_kw(p, binding, m))
            self._gpu_ts.append(now_s)
            self._gpu_kw.append(demand)
            self._last_gpu_sample = now_s
        self._trim(now_s)

    def _trim(self, now_s: float) -> None:
        while self._pv_ts and self._pv_ts[0] < now_s - self.history_s:
            self._pv_ts.pop(0)
            self._pv_kw.pop(0)
        while self._gpu_ts and self._gpu_ts[0] < now_s - self.history_s:
            self._gpu_ts.pop(0)
            self._gpu_kw.pop(0)

    def __call__(self, now_s: float, image: object, steps_s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        steps = np.asarray(steps_s, dtype=float)
        ts = np.array([t for t, _ in self._pv_recent] + self._pv_ts, dtype=float)
        order = np.argsort(ts)
        pv_rows = []
        pv_fcs = []
        for i, arr in enumerate(self.arrays):
            kw = np.array([v[i] for _, v in self._pv_recent] + [v[i] for v in self._pv_kw], dtype=float)
            j = i + len(self.arrays)
            lim = np.array([v[j] for _, v in self._pv_recent] + [v[j] for v in self._pv_kw], dtype=float) > 0.5
            clear_fn = self.clear_kw_fns[i] if self.clear_kw_fns else None
            fc = pv_forecast(arr, now_s, steps, ts[order], kw[order], clear_kw_fn=clear_fn, meas_limited=lim[order])
            pv_fcs.append(fc)
            pv_rows.append(fc.values_kw[0])
        pv = np.array(pv_rows, dtype=float).reshape(len(self.arrays), steps.size)
        gpu_fc = gpu_demand_forecast(
            now_s, steps, np.array(self._gpu_ts, dtype=float),
            np.array(self._gpu_kw, dtype=float).T if self._gpu_kw else np.zeros((self.class_max_kw.size, 0)),
            self.class_max_kw,
        )
        pv_total = Forecast(pv, pv_fcs[0].source if pv_fcs else "none",
                            min((f.issued_s for f in pv_fcs), default=now_s))
        extra = reserve_extra_kw(now_s, pv_total, gpu_fc, self.class_max_kw, overhead=self.overhead)
        self.last_sources = (pv_total.source, gpu_fc.source)
        return pv, gpu_fc.values_kw, np.zeros(steps.size), extra


def make_forecaster(
    cfg: object, clear_kw_fns: list[Callable[[FloatArray], FloatArray]] | None = None
) -> LiveForecaster:
    """The daemon's forecaster for a site config (arrays from the PV devices, classes from the GPU pool)."""
    from powerctl.config import SiteConfig
    from powerctl.natures import Nature

    assert isinstance(cfg, SiteConfig)
    s = cfg.site
    arrays = [
        PvArray(kwp=d.limits.kwp, latitude=s.latitude, longitude=s.longitude,
                tilt_deg=d.limits.tilt_deg, azimuth_deg=d.limits.azimuth_deg, altitude_m=s.altitude_m)
        for d in cfg.by_nature(Nature.PV)
    ]
    class_max = np.array([c.gpus * cfg.gpu.max_w / 1000.0 for c in cfg.gpu.classes], dtype=float)
    return LiveForecaster(arrays, class_max, overhead=cfg.gpu.facility_overhead, clear_kw_fns=clear_kw_fns)
