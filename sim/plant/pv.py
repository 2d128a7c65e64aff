"""PV array: available AC power from a function of time, curtailment, energy counter, SunSpec state.

Two ways to get the *available* power (what the array would make at its maximum power point):

- ``demo_pv_kw_fn``: a smooth clear-sky-like daily curve with one passing cloud, time-compressed by
  ``time_scale`` so a demo shows the cloud within minutes of wall time;
- ``pv_ac_kw_from_weather`` (pvlib): irradiance + air temperature + wind from a trace, array kWp,
  tilt and azimuth -> AC kW per time stamp (used by replay through ``sim.traces``).

The array then delivers ``min(available, limit)`` where the limit is the inverter's active power
limit (``p_limit_pct`` of ``max_ac_kw``) and any curtailment the site imposes when nobody can take
the power (battery full): see ``Plant``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# SunSpec model 103 "St" operating states we use.
ST_SLEEPING = 2
ST_MPPT = 4
ST_THROTTLED = 5

_SLEEP_BELOW_KW = 1e-3


@dataclass
class PvArray:
    """One PV inverter + array. ``available_kw`` is set each step by the plant; the rest follows."""

    name: str
    kwp: float
    max_ac_kw: float
    limit_pct: float = 100.0
    e_kwh: float = 0.0  # lifetime AC energy counter
    available_kw: float = 0.0
    p_kw: float = 0.0
    curtailed_kw: float = 0.0  # available minus delivered, this step
    _throttled: bool = field(default=False, repr=False)

    def limit_kw(self) -> float:
        return self.max_ac_kw * self.limit_pct / 100.0

    def headroom_kw(self) -> float:
        """What the array can deliver now: available power under the inverter limit."""
        return max(0.0, min(self.available_kw, self.max_ac_kw, self.limit_kw()))

    def deliver(self, p_kw: float, dt_s: float) -> None:
        """Record that the array delivered ``p_kw`` (<= headroom) over the last ``dt_s`` seconds."""
        self.p_kw = max(0.0, min(p_kw, self.headroom_kw()))
        self.curtailed_kw = max(0.0, self.available_kw - self.p_kw)
        self._throttled = self.curtailed_kw > 1e-6
        self.e_kwh += self.p_kw * dt_s / 3600.0

    def state(self) -> int:
        """SunSpec St: 2 sleeping (no sun), 5 throttled (delivering less than available), 4 MPPT."""
        if self.available_kw < _SLEEP_BELOW_KW:
            return ST_SLEEPING
        return ST_THROTTLED if self._throttled else ST_MPPT


def clear_sky_shape(hour_of_day: float, sunrise_h: float = 6.5, sunset_h: float = 19.5) -> float:
    """A clear-sky-like per-unit shape: sin^1.3 between sunrise and sunset, 0 at night."""
    if not sunrise_h < hour_of_day < sunset_h:
        return 0.0
    x = math.pi * (hour_of_day - sunrise_h) / (sunset_h - sunrise_h)
    return math.sin(x) ** 1.3


def demo_pv_kw_fn(
    kwp: float,
    *,
    time_scale: float = 20.0,
    start_hour: float = 11.0,
    t0_s: float = 0.0,
    peak_pu: float = 0.85,
    cloud_at_s: float = 1200.0,
    cloud_len_s: float = 900.0,
    cloud_depth: float = 0.6,
    cloud_edge_s: float = 120.0,
) -> Callable[[float], float]:
    """Demo PV: available kW for the whole site at wall/plant time ``t_s``.

    Simulated time of day = ``start_hour`` + (t_s - t0_s) * ``time_scale``. With the defaults
    (x20, start 11:00) one real minute is 20 simulated minutes: a cloud that starts 1,200 simulated
    seconds in (60 real s) and takes away ``cloud_depth`` (60 %) of the output for 900 simulated
    seconds (45 real s) with 120 s soft edges, then clears. ``cloud_*`` are in simulated seconds
    after the start. ``peak_pu`` is the clear-sky noon output per kWp (inverter/temperature losses).
    """
    if time_scale <= 0:
        raise ValueError(f"time_scale must be > 0 (got {time_scale})")

    def fn(t_s: float) -> float:
        sim_s = (t_s - t0_s) * time_scale
        hour = (start_hour + sim_s / 3600.0) % 24.0
        shade = cloud_depth * _bump(sim_s, cloud_at_s, cloud_len_s, cloud_edge_s)
        return kwp * peak_pu * clear_sky_shape(hour) * (1.0 - shade)

    return fn


def _bump(x: float, start: float, length: float, edge: float) -> float:
    """0 outside [start, start+length], 1 inside, with cosine ramps of ``edge`` at both ends."""
    if x <= start or x >= start + length:
        return 0.0
    into = min(x - start, start + length - x)
    if edge <= 0 or into >= edge:
        return 1.0
    return 0.5 - 0.5 * math.cos(math.pi * into / edge)


# --- pvlib model ------------------------------------------------------------------------------


def pv_ac_kw_from_weather(
    weather: pd.DataFrame,
    *,
    latitude: float,
    longitude: float,
    altitude_m: float,
    kwp: float,
    tilt_deg: float,
    azimuth_deg: float,
    max_ac_kw: float | None = None,
    gamma_pdc_per_c: float = -0.004,
    system_loss: float = 0.14,
    inverter_eta: float = 0.96,
) -> pd.Series:
    """AC kW per time stamp from irradiance with pvlib (PVWatts DC + SAPM cell temperature).

    ``weather`` has a tz-aware DatetimeIndex and columns ``ghi``, ``dni``, ``dhi`` in W/m², and
    optionally ``temp_air`` (°C, default 20) and ``wind_speed`` (m/s, default 1). Time stamps label
    the *start* of each interval; the sun position is taken at the interval middle so hourly data
    does not shift the day by half an hour.
    """
    import pvlib

    if not isinstance(weather.index, pd.DatetimeIndex) or weather.index.tz is None:
        raise ValueError("weather: index must be a tz-aware DatetimeIndex")
    for col in ("ghi", "dni", "dhi"):
        if col not in weather.columns:
            raise ValueError(f"weather: missing column {col!r} (W/m²)")
    idx = weather.index
    step = (idx[1] - idx[0]) if len(idx) > 1 else pd.Timedelta(0)
    mid = idx + step / 2
    loc = pvlib.location.Location(latitude, longitude, altitude=altitude_m)
    sp = loc.get_solarposition(mid)
    dni_extra = pvlib.irradiance.get_extra_radiation(mid)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=tilt_deg,
        surface_azimuth=azimuth_deg,
        solar_zenith=sp["apparent_zenith"].to_numpy(),
        solar_azimuth=sp["azimuth"].to_numpy(),
        dni=weather["dni"].to_numpy(),
        ghi=weather["ghi"].to_numpy(),
        dhi=weather["dhi"].to_numpy(),
        dni_extra=dni_extra.to_numpy(),
        model="haydavies",
    )
    poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0).clip(min=0.0)
    temp_air = weather["temp_air"].to_numpy(float) if "temp_air" in weather else np.full(len(idx), 20.0)
    wind = weather["wind_speed"].to_numpy(float) if "wind_speed" in weather else np.full(len(idx), 1.0)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    t_cell = pvlib.temperature.sapm_cell(poa_global, temp_air, wind, **params)
    pdc_kw = pvlib.pvsystem.pvwatts_dc(poa_global, t_cell, kwp, gamma_pdc_per_c) * (1.0 - system_loss)
    ac_cap_kw = max_ac_kw if max_ac_kw is not None else kwp
    p_ac_kw = np.clip(np.asarray(pdc_kw, dtype=float) * inverter_eta, 0.0, ac_cap_kw)
    return pd.Series(p_ac_kw, index=idx, name="pv_ac_kw")


def clear_sky_ac_kw(
    index: pd.DatetimeIndex,
    *,
    latitude: float,
    longitude: float,
    altitude_m: float,
    kwp: float,
    tilt_deg: float,
    azimuth_deg: float,
    max_ac_kw: float | None = None,
) -> pd.Series:
    """AC kW the array would make under a clear sky (pvlib Ineichen), for the forecaster."""
    import pvlib

    step = (index[1] - index[0]) if len(index) > 1 else pd.Timedelta(0)
    loc = pvlib.location.Location(latitude, longitude, altitude=altitude_m)
    cs = loc.get_clearsky(index + step / 2, model="ineichen")
    cs.index = index
    weather = cs[["ghi", "dni", "dhi"]].assign(temp_air=20.0, wind_speed=1.0)
    return pv_ac_kw_from_weather(
        weather,
        latitude=latitude,
        longitude=longitude,
        altitude_m=altitude_m,
        kwp=kwp,
        tilt_deg=tilt_deg,
        azimuth_deg=azimuth_deg,
        max_ac_kw=max_ac_kw,
    ).rename("pv_clear_kw")
