"""A site trace: everything a replay needs on one regular time grid, built from public data.

Columns (index tz-aware, regular ``step_s``, labels = interval start):

- ``pv_kw``: available AC power of all PV arrays (pvlib model of each array on the weather);
- ``pv_clear_kw``: the same arrays under a clear sky (pvlib Ineichen), for the forecaster;
- ``gpu_w.<class>``: uncapped demand per GPU of each class (W);
- ``other_load_kw``: auxiliary site load besides the facility overhead.

Hourly weather is brought to the fine grid through the clear-sky index: ``k = pv / pv_clear`` per
native interval, linearly interpolated, times the fine-grid clear-sky power. That keeps sunrise and
sunset where the sun puts them instead of smearing hourly blocks.

The trace also holds ``history_days`` before ``t0`` (weather only matters there): honest
forecasters need a recent clear-sky index at the first step. The plant runs from ``t0``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.sim.plant.pv import clear_sky_ac_kw, pv_ac_kw_from_weather
from powerctl.sim.traces.gpu_load import azure_demand_series
from powerctl.sim.traces.irradiance import read_irradiance
from powerctl.sim.traces.loaders import TraceError, interp_to
from powerctl.sim.traces.user import UserTraces, check_clock, load_on_grid, read_column

log = logging.getLogger(__name__)

# The public data set ships with the package (sim/data, with its licences and attribution README).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass
class SiteTrace:
    df: pd.DataFrame
    t0: pd.Timestamp  # plant start; rows before it are history
    step_s: float
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        self._t_s = (self.df.index - self.t0).total_seconds().to_numpy(float)
        self._pv = self.df["pv_kw"].to_numpy(float)
        self._clear = self.df["pv_clear_kw"].to_numpy(float)
        self._gpu = np.vstack([self.df[f"gpu_w.{c}"].to_numpy(float) for c in self.class_names])
        self._other = self.df["other_load_kw"].to_numpy(float)
        self._cum_pv = _cum(self._pv, self.step_s)
        self._cum_clear = _cum(self._clear, self.step_s)
        self._cum_gpu = np.vstack([_cum(g, self.step_s) for g in self._gpu])
        self._cum_other = _cum(self._other, self.step_s)

    @property
    def t_s(self) -> np.ndarray:
        """Seconds from the plant start for each row (negative in the history)."""
        return self._t_s

    @property
    def end_s(self) -> float:
        return float(self._t_s[-1] + self.step_s)

    def _row(self, t_s: float) -> int:
        i = int((t_s - self._t_s[0]) // self.step_s)
        return min(max(i, 0), len(self._t_s) - 1)

    # plant inputs: value of the interval containing t_s (the plant steps on the same grid)
    def pv_kw_at(self, t_s: float) -> float:
        return float(self._pv[self._row(t_s - 1e-9)])

    def gpu_demand_w_at(self, t_s: float) -> dict[str, float]:
        i = self._row(t_s - 1e-9)
        return {c: float(self._gpu[k, i]) for k, c in enumerate(self.class_names)}

    def other_load_kw_at(self, t_s: float) -> float:
        return float(self._other[self._row(t_s - 1e-9)])

    # interval means for forecasters (exact integrals of the step-wise series)
    def mean_between(self, what: str, a_s: np.ndarray, b_s: np.ndarray) -> np.ndarray:
        cum = {"pv": self._cum_pv, "clear": self._cum_clear, "other": self._cum_other}.get(what)
        if cum is not None:
            return _mean(cum, self._t_s[0], self.step_s, a_s, b_s)
        if what == "gpu":
            return np.vstack([_mean(c, self._t_s[0], self.step_s, a_s, b_s) for c in self._cum_gpu])
        raise KeyError(what)

    def window(self, days: float) -> SiteTrace:
        """The first ``days`` after t0 (history kept)."""
        end = self.t0 + pd.Timedelta(days=days)
        if end > self.df.index[-1] + pd.Timedelta(seconds=self.step_s):
            raise TraceError(f"{self.source}: trace ends at {self.df.index[-1]}, before {end}")
        return SiteTrace(self.df[self.df.index < end], self.t0, self.step_s, self.class_names, self.source)


def _cum(v: np.ndarray, step_s: float) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(v) * step_s])


def _mean(cum: np.ndarray, t_first: float, step_s: float, a_s: np.ndarray, b_s: np.ndarray) -> np.ndarray:
    """Mean of a step-wise series over [a, b] from its cumulative integral (linear inside steps)."""
    grid = t_first + step_s * np.arange(len(cum))
    ia = np.interp(a_s, grid, cum)
    ib = np.interp(b_s, grid, cum)
    width = np.maximum(np.asarray(b_s) - np.asarray(a_s), 1e-9)
    return (ib - ia) / width


def pv_trace_kw(
    cfg: SiteConfig,
    weather: pd.DataFrame,
    index: pd.DatetimeIndex,
    location: tuple[float, float, float] | None = None,
) -> tuple[pd.Series, pd.Series]:
    """(available AC kW, clear-sky AC kW) of all PV arrays on the fine ``index``.

    ``location`` (lat, lon, altitude m) is where the weather was measured; default: the site's.
    """
    site = cfg.site
    lat, lon, alt = location if location is not None else (site.latitude, site.longitude, site.altitude_m)
    native_step = weather.index[1] - weather.index[0]
    fine_step = index[1] - index[0]
    pv = pd.Series(0.0, index=index)
    clear = pd.Series(0.0, index=index)
    for d in cfg.by_nature(Nature.PV):
        lim = d.limits
        kw = {
            "latitude": lat,
            "longitude": lon,
            "altitude_m": alt,
            "kwp": lim.kwp,
            "tilt_deg": lim.tilt_deg,
            "azimuth_deg": lim.azimuth_deg,
            "max_ac_kw": lim.max_ac_kw,
        }
        if "poa" in weather:  # a plane-of-array sensor in the array's plane: PVWatts-like, no transposition
            native = (lim.kwp * weather["poa"] / 1000.0 * (1 - 0.14) * 0.96).clip(upper=lim.max_ac_kw)
        else:
            native = pv_ac_kw_from_weather(weather, **kw)
        clear_fine = clear_sky_ac_kw(index, **kw)
        if native_step <= fine_step:
            p_fine = native.resample(fine_step).mean().reindex(index).interpolate().bfill().ffill()
        else:
            # clear-sky index per native interval, interpolated at interval middles
            clear_native = clear_fine.resample(native_step, origin=weather.index[0]).mean()
            clear_native = clear_native.reindex(native.index).fillna(0.0)
            k = (native / clear_native.where(clear_native > 0.02 * lim.kwp)).clip(0.0, 1.3).fillna(1.0)
            k.index = k.index + native_step / 2
            p_fine = clear_fine * interp_to(k, index).to_numpy()
        pv = pv + p_fine.clip(lower=0.0)
        clear = clear + clear_fine
    return pv.rename("pv_kw"), clear.rename("pv_clear_kw")


@lru_cache(maxsize=4)
def _weather(path: str, year: int) -> tuple[pd.DataFrame, tuple[float, float, float] | None]:
    """Weather files are read once per process (sweeps build many traces from one file)."""
    df, meta = read_irradiance(path, year=year)
    try:
        loc = (float(meta["latitude"]), float(meta["longitude"]), float(meta.get("altitude", 0.0)))
    except (KeyError, TypeError, ValueError):
        loc = None
    return df, loc


def inference_class(cfg: SiteConfig) -> str | None:
    """The class the request trace drives: the first whose name or curve says inference."""
    for c in cfg.gpu.classes:
        if "infer" in c.name.lower() or c.curve.startswith("infer"):
            return c.name
    return None


def _window(tz: object, mid: pd.Timestamp, start: str, days: float, history_days: float
            ) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """(t0, first row, end) for ``start`` ("MM-DD" in the data's year, or an ISO time)."""
    t0 = pd.Timestamp(f"{mid.year}-{start}" if len(start) == 5 else start)
    t0 = t0.tz_localize(tz) if t0.tzinfo is None else t0.tz_convert(tz)  # type: ignore[arg-type]
    return t0, t0 - pd.Timedelta(days=history_days), t0 + pd.Timedelta(days=days)


def _measured_pv(cfg: SiteConfig, user: UserTraces, start: str, days: float, step_s: float,
                 history_days: float) -> tuple[pd.Timestamp, pd.DatetimeIndex, pd.Series, pd.Series]:
    """PV from the user's measured AC power; clear sky from the site's arrays (for the forecaster)."""
    m = user.pv_power
    assert m is not None
    s = read_column(m)
    if m.dst != "ignore":
        check_clock(s, cfg.site.longitude, m.describe())
    t0, lo, hi = _window(s.index.tz, s.index[len(s) // 2], start, days, history_days)
    index = pd.date_range(lo, hi, freq=pd.Timedelta(seconds=step_s), inclusive="left")
    # small negatives are the inverter's night draw: no power available from PV there
    pv = load_on_grid(m, index, user.gaps, s).clip(lower=0.0)
    site = cfg.site
    clear = pd.Series(0.0, index=index)
    for d in cfg.by_nature(Nature.PV):
        lim = d.limits
        clear = clear + clear_sky_ac_kw(index, latitude=site.latitude, longitude=site.longitude,
                                        altitude_m=site.altitude_m, kwp=lim.kwp, tilt_deg=lim.tilt_deg,
                                        azimuth_deg=lim.azimuth_deg, max_ac_kw=lim.max_ac_kw)
    return t0, index, pv.rename("pv_kw"), clear.rename("pv_clear_kw")


def _user_weather_pv(cfg: SiteConfig, user: UserTraces, start: str, days: float, step_s: float,
                     history_days: float) -> tuple[pd.Timestamp, pd.DatetimeIndex, pd.Series, pd.Series]:
    """PV modelled from the user's irradiance columns, brought to the plant grid first (gap policy)."""
    maps = user.weather
    assert maps
    key = "poa" if "poa" in maps else "ghi"
    s = read_column(maps[key])
    if maps[key].dst != "ignore":
        check_clock(s, cfg.site.longitude, maps[key].describe())
    t0, lo, hi = _window(s.index.tz, s.index[len(s) // 2], start, days, history_days)
    index = pd.date_range(lo, hi, freq=pd.Timedelta(seconds=step_s), inclusive="left")
    w = pd.DataFrame({k: load_on_grid(m, index, user.gaps, s if k == key else None) for k, m in maps.items()},
                     index=index)
    for k in ("ghi", "dni", "dhi", "poa"):
        if k in w:
            w[k] = w[k].clip(lower=0.0)  # night offsets of the sensors
    if "ghi" in w and not {"dni", "dhi"} <= set(w):  # GHI alone: split it (Erbs) at the interval middles
        import pvlib

        mid = index + pd.Timedelta(seconds=step_s / 2)
        sun = pvlib.solarposition.get_solarposition(mid, cfg.site.latitude, cfg.site.longitude)
        parts = pvlib.irradiance.erbs(w["ghi"].to_numpy(), sun["zenith"].to_numpy(), mid)
        w["dni"], w["dhi"] = np.asarray(parts["dni"]), np.asarray(parts["dhi"])
    pv, clear = pv_trace_kw(cfg, w, index)
    return t0, index, pv, clear


def _user_columns(cfg: SiteConfig, user: UserTraces, df: pd.DataFrame) -> None:
    """Site load, GPU demand per class and price from the user's files, onto ``df``'s grid."""
    index = pd.DatetimeIndex(df.index)
    pool = cfg.gpu
    if user.load is not None:
        df["other_load_kw"] = load_on_grid(user.load, index, user.gaps).to_numpy()
    for cls, m in (user.gpu or {}).items():
        if f"gpu_w.{cls}" not in df:
            raise TraceError(f"{m.describe()}: GPU class {cls!r} is not in the site (classes: "
                             f"{', '.join(c.name for c in pool.classes)})")
        v = load_on_grid(m, index, user.gaps).to_numpy()
        if m.unit == "%":
            if v.min() < -1e-6 or v.max() > 100 + 1e-6:
                raise TraceError(f"{m.describe()}: utilisation outside 0-100 % (wrong unit? use unit=W for watts)")
            df[f"gpu_w.{cls}"] = pool.idle_w + (pool.max_w - pool.idle_w) * v / 100.0
        else:
            w = v * 1e3  # canonical kW -> W per GPU
            if w.min() < 0 or w.max() > 2 * pool.max_w:
                raise TraceError(f"{m.describe()}: {w.max():g} W per GPU is not plausible for max_w="
                                 f"{pool.max_w:g} (per-GPU watts expected; wrong unit or a cluster total?)")
            df[f"gpu_w.{cls}"] = w
    if user.price is not None:
        df["price_per_kwh"] = load_on_grid(user.price, index, user.gaps).to_numpy()
    if user.pv_forecast is not None:  # read by sim/forecast_replay.py for --pv-forecast provided
        df["pv_forecast_kw"] = load_on_grid(user.pv_forecast, index, user.gaps).clip(lower=0.0).to_numpy()


def build_site_trace(
    cfg: SiteConfig,
    irradiance: str | Path | None = DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv",
    gpu_trace: str | Path | None = DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv",
    *,
    start: str = "06-01",
    days: float = 7.0,
    step_s: float = 60.0,
    history_days: float = 1.0,
    year: int = 2021,
    mean_util: float = 0.6,
    other_load_kw: float = 0.0,
    user: UserTraces | None = None,
) -> SiteTrace:
    """Build a replay trace for ``cfg``: ``days`` from ``start`` ("MM-DD" in the data's year, or an ISO
    time), plus ``history_days`` of warm-up before it. PV comes from the user's measured power when
    ``user.pv_power`` is set, else it is modelled from the ``irradiance`` file. The GPU trace drives
    the inference class; other classes always want ``max_w`` (a training queue that never empties);
    ``user`` columns (load, GPU demand per class, price) replace those."""
    if user is not None and user.pv_power is not None:
        t0, index, pv, clear = _measured_pv(cfg, user, start, days, step_s, history_days)
        pv_src = user.pv_power.path.name
    elif user is not None and user.weather:
        t0, index, pv, clear = _user_weather_pv(cfg, user, start, days, step_s, history_days)
        pv_src = next(iter(user.weather.values())).path.name
    else:
        if irradiance is None:
            raise TraceError("no PV input: give an irradiance file or measured PV power (--pv-power)")
        t0, index, pv, clear = _modelled_pv(cfg, irradiance, start, days, step_s, history_days, year)
        pv_src = Path(irradiance).name
    df = pd.DataFrame({"pv_kw": pv, "pv_clear_kw": clear}, index=index)
    pool = cfg.gpu
    infer = inference_class(cfg) if gpu_trace is not None else None
    for c in pool.classes:
        if c.name == infer and gpu_trace is not None:
            df[f"gpu_w.{c.name}"] = azure_demand_series(
                gpu_trace, index, idle_w=pool.idle_w, max_w=pool.max_w, mean_util=mean_util
            ).to_numpy()
        else:
            df[f"gpu_w.{c.name}"] = pool.max_w
    df["other_load_kw"] = other_load_kw
    if user is not None:
        _user_columns(cfg, user, df)
    src = f"{pv_src} + {Path(gpu_trace).name if gpu_trace else 'constant GPU demand'}"
    return SiteTrace(df, t0, step_s, [c.name for c in pool.classes], src)


def _modelled_pv(cfg: SiteConfig, irradiance: str | Path, start: str, days: float, step_s: float,
                 history_days: float, year: int
                 ) -> tuple[pd.Timestamp, pd.DatetimeIndex, pd.Series, pd.Series]:
    weather, wloc = _weather(str(irradiance), year)
    if wloc is not None and (
        abs(wloc[0] - cfg.site.latitude) > 1.0 or abs(wloc[1] - cfg.site.longitude) > 1.0
    ):
        # irradiance belongs to where it was measured: the sun must be computed there too, or the
        # transposition and the clear-sky index would pair one place's sky with another's sun
        log.warning(
            "%s: weather measured at (%.2f, %.2f), site at (%.2f, %.2f): PV is modelled at the weather's location",
            irradiance,
            wloc[0],
            wloc[1],
            cfg.site.latitude,
            cfg.site.longitude,
        )
    else:
        wloc = None
    t0, lo, hi = _window(weather.index.tz, weather.index[len(weather) // 2], start, days, history_days)
    if lo < weather.index[0] or hi > weather.index[-1] + (weather.index[1] - weather.index[0]):
        raise TraceError(
            f"{irradiance}: covers {weather.index[0]} to {weather.index[-1]}; need {lo} to {hi} "
            f"(start {start}, {days:g} days, {history_days:g} days of warm-up): choose --start inside the "
            "file, fewer --days or a shorter --warmup-days"
        )
    pad = pd.Timedelta(hours=3)
    w = weather[(weather.index >= lo - pad) & (weather.index < hi + pad)]
    index = pd.date_range(lo, hi, freq=pd.Timedelta(seconds=step_s), inclusive="left")
    pv, clear = pv_trace_kw(cfg, w, index, wloc)
    return t0, index, pv, clear
