"""Readers for the public irradiance files (TMY3, NSRDB PSM3, NREL RMIS 5-min) -> weather frames.

Every reader returns a DataFrame with a tz-aware index whose stamps label the **start** of each
interval, columns ``ghi``, ``dni``, ``dhi`` (W/m²), ``temp_air`` (°C), ``wind_speed`` (m/s) and,
when the file has them, ``ghi_clear`` etc. It is validated by ``sim.traces.loaders.validate``
(sorted, no duplicates, gaps filled or refused, plausible ranges).

- TMY3 stamps mark the **end** of the hour (01:00 ... 24:00 local standard time): shifted back 1 h.
- NSRDB PSM3 values are instantaneous at the stamp: treated as the mean of the interval centred on
  it, so the start label is the stamp minus half a step.
- RMIS stamps have no zone; the README infers UTC-7 (Etc/GMT+7) from the clear-sky columns. They close
  their interval: shifted back by the file's median step (5 min here, 1 min for 1-min files).
- PSM3 in Parquet (``read_psm3_parquet``): PSM3 column names on a tz-aware index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from powerctl.sim.traces.loaders import TraceError, unit, validate

log = logging.getLogger(__name__)

_W = unit("W/m2")
_UNITS = {
    "ghi": _W,
    "dni": _W,
    "dhi": _W,
    "ghi_clear": _W,
    "dni_clear": _W,
    "dhi_clear": _W,
    "temp_air": unit("C"),
    "wind_speed": unit("m/s"),
}
WEATHER_COLUMNS = ["ghi", "dni", "dhi", "temp_air", "wind_speed"]


def _finish(df: pd.DataFrame, source: str, max_gap_s: float = 3 * 3600.0) -> pd.DataFrame:
    keep = [c for c in [*WEATHER_COLUMNS, "ghi_clear", "dni_clear", "dhi_clear"] if c in df.columns]
    out = df[keep].astype(float)
    return validate(out, source, {c: _UNITS[c] for c in keep}, max_gap_s=max_gap_s)


def read_tmy3(path: str | Path, year: int = 2021) -> tuple[pd.DataFrame, dict]:
    """TMY3 CSV (e.g. pvlib's 723170TYA.CSV) -> (weather, metadata). ``year`` is forced on every row."""
    import pvlib

    try:
        df, meta = pvlib.iotools.read_tmy3(str(path), coerce_year=year, map_variables=True)
    except Exception as exc:
        raise TraceError(f"{path}: not a readable TMY3 file: {exc}") from None
    df = df.copy()
    df.index = df.index - pd.Timedelta(hours=1)  # end-of-hour -> start-of-hour labels
    df = df.sort_index()
    return _finish(df, str(path)), dict(meta)


def read_psm3(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """NSRDB PSM3 CSV (pvlib >= 0.14 reads it with ``read_nsrdb_psm4``) -> (weather, metadata)."""
    import pvlib

    try:
        df, meta = pvlib.iotools.read_nsrdb_psm4(str(path), map_variables=True)
    except Exception as exc:
        raise TraceError(f"{path}: not a readable NSRDB PSM3/PSM4 file: {exc}") from None
    df = df.copy()
    if len(df.index) > 1:
        df.index = df.index - (df.index[1] - df.index[0]) / 2
    return _finish(df, str(path)), dict(meta)


def read_rmis(path: str | Path, max_gap_s: float = 3 * 3600.0) -> tuple[pd.DataFrame, dict]:
    """pvanalytics NREL RMIS 5-min irradiance (Golden CO, Feb 2019) -> (weather, metadata).

    Blank measured rows are gaps: at night (clear-sky 0) they are set to 0; in daylight they are
    interpolated up to ``max_gap_s`` and refused beyond (this file has a multi-hour daytime gap on
    Feb 3, so the default refuses it; pass a larger ``max_gap_s`` to accept the interpolation). No temperature: 5 °C assumed (February,
    documented guess), wind 2 m/s.
    """
    try:
        raw = pd.read_csv(path)
    except Exception as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    try:
        idx = pd.to_datetime(raw["measured_on"], format="%m/%d/%Y %H:%M").dt.tz_localize("Etc/GMT+7")
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceError(f"{path}: column 'measured_on': cannot parse time stamps: {exc}") from None
    pick = {}
    for c in raw.columns:
        for k in ("ghi", "dni", "dhi"):
            key = k if str(c).startswith(f"irradiance_{k}__") else f"{k}_clear" if c == f"pvlib_clearsky_{k}" else None
            if key is None:
                continue
            try:
                pick[key] = raw[c].to_numpy(float)
            except (ValueError, TypeError):
                raise TraceError(f"{path}: column {c!r}: not numbers") from None
    missing = [k for k in ("ghi", "dni", "dhi") if k not in pick]
    if missing:
        raise TraceError(f"{path}: column irradiance_{missing[0]}__*: missing")
    missing = [k for k in ("ghi", "dni", "dhi") if f"{k}_clear" not in pick]
    if missing:  # the clear-sky columns tell night blanks (0) from daytime gaps
        raise TraceError(f"{path}: column pvlib_clearsky_{missing[0]}: missing")
    idx = pd.DatetimeIndex(idx)
    # stamps close their interval: shift back by the file's own step (1-min RMIS data is 1 min, not 5)
    step = pd.Series(idx).diff().median() if len(idx) > 1 else pd.Timedelta(minutes=5)
    df = pd.DataFrame(pick, index=idx - step)
    # night-time blanks: measured = clear-sky = 0 there is the honest fill (the sun is down)
    for k in ("ghi", "dni", "dhi"):
        night = df[k].isna() & (df[f"{k}_clear"] <= 0)
        if night.any():
            log.info("%s: %s: %d blank night rows set to 0 (clear-sky is 0)", path, k, int(night.sum()))
            df.loc[night, k] = 0.0
    df["temp_air"] = 5.0
    df["wind_speed"] = 2.0
    return _finish(df, str(path), max_gap_s), {"latitude": 39.742, "longitude": -105.18, "altitude": 1829.0}


_PSM3_COLUMNS = {"GHI": "ghi", "DNI": "dni", "DHI": "dhi", "Clearsky GHI": "ghi_clear",
                 "Clearsky DNI": "dni_clear", "Clearsky DHI": "dhi_clear", "Temperature": "temp_air",
                 "Wind Speed": "wind_speed"}


def read_psm3_parquet(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """NSRDB PSM3 data saved as Parquet (columns GHI, DNI, DHI, ... on a tz-aware time index or a
    time column; pvlib's lower-case names accepted). Stamps are instantaneous as in the CSV."""
    from powerctl.sim.traces.loaders import read_table

    df = read_table(path)
    if not isinstance(df.index, pd.DatetimeIndex):
        tcol = next((c for c in df.columns if any(w in str(c).lower() for w in ("time", "date", "measured"))), None)
        if tcol is None:
            raise TraceError(f"{path}: no time index or time column (PSM3 Parquet needs one)")
        df = df.set_index(pd.DatetimeIndex(pd.to_datetime(df[tcol])))
    if df.index.tz is None:
        raise TraceError(f"{path}: time stamps have no zone; save the Parquet with a tz-aware index "
                         "(NSRDB stamps are local standard time, e.g. Etc/GMT+7)")
    df = df.rename(columns=_PSM3_COLUMNS)
    missing = [k for k in ("ghi", "dni", "dhi") if k not in df.columns]
    if missing:
        raise TraceError(f"{path}: column {missing[0].upper()!r}: missing (columns: {', '.join(map(str, df.columns))})")
    df = df.copy()
    for c, v in (("temp_air", 20.0), ("wind_speed", 1.0)):
        if c not in df.columns:
            log.info("%s: no %s column: %g assumed", path, c, v)
            df[c] = v
    df = df.sort_index()
    if len(df.index) > 1:
        df.index = df.index - (df.index[1] - df.index[0]) / 2
    meta = {k: df.attrs[k] for k in ("latitude", "longitude", "altitude") if k in df.attrs}
    return _finish(df, str(path)), meta


def read_irradiance(path: str | Path, year: int = 2021) -> tuple[pd.DataFrame, dict]:
    """Pick the reader by looking at the file: Parquet (PSM3 columns), or the first line of a CSV."""
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        return read_psm3_parquet(p)
    try:
        first = p.open(encoding="utf-8", errors="replace").readline()
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc}") from None
    if first.startswith("Source,Location ID"):
        return read_psm3(p)
    if first.startswith("measured_on"):
        if "irradiance_ghi__" in first:
            return read_rmis(p)
        cols = first.strip().split(",")[1:]
        raise TraceError(
            f"{p}: has no irradiance_ghi__* column (columns: {', '.join(cols)}): not RMIS irradiance. "
            f"Measured AC power? Replay it with --pv-power '{p}:column={cols[0] if cols else 'NAME'},unit=W'"
        )
    if first.count(",") == 6 and first.split(",")[0].strip().isdigit():
        return read_tmy3(p, year)
    raise TraceError(
        f"{p}: unknown irradiance format (expected TMY3, NSRDB PSM3 CSV/Parquet or RMIS CSV); "
        "for measured AC power use --pv-power FILE:column=NAME,unit=W"
    )
