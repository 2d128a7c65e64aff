"""Time-series loading with units, time zones, validation and resampling.

``load_series(path, columns={"pv": "kW", ...})`` reads CSV or Parquet, parses the time column,
attaches a time zone, converts each column to its canonical unit and validates the result.

What a bad trace gets (``validate``):

| problem | what happens |
|---|---|
| unparseable time stamps, missing column, unknown unit | ``TraceError`` naming file, column, problem |
| unsorted time stamps | sorted, and a WARNING is logged (order carries no information) |
| duplicated time stamps | ``TraceError`` with the first duplicate; ``fix=True`` keeps the first row and logs |
| NaN / blank values | gaps up to ``max_gap_s`` are linearly interpolated and logged; longer gaps: ``TraceError`` |
| missing time steps (holes in the index) | treated like NaN gaps after resampling to the regular step |
| values outside the plausible range of the unit | ``TraceError`` ("wrong units?"), e.g. irradiance > 1,500 W/m² or < -20 W/m²; small negatives (sensor offsets) are clipped to 0 and logged |

Canonical units: power kW, irradiance W/m², temperature °C, speed m/s, energy kWh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


class TraceError(ValueError):
    """A trace we will not use; the message names the file, the column and the problem."""


@dataclass(frozen=True)
class Unit:
    canonical: str
    factor: float  # multiply by this to get the canonical unit
    offset: float = 0.0  # then add this
    lo: float = -np.inf  # plausible range in the canonical unit
    hi: float = np.inf
    clip_negative_above: float | None = None  # negatives down to this are sensor offsets: clip to 0


_POWER = {"lo": -1e6, "hi": 1e6}
UNITS: dict[str, Unit] = {
    "W": Unit("kW", 1e-3, **_POWER),
    "kW": Unit("kW", 1.0, **_POWER),
    "MW": Unit("kW", 1e3, **_POWER),
    "W/m2": Unit("W/m2", 1.0, lo=-20.0, hi=1500.0, clip_negative_above=-20.0),
    "kW/m2": Unit("W/m2", 1e3, lo=-20.0, hi=1500.0, clip_negative_above=-20.0),
    "C": Unit("C", 1.0, lo=-60.0, hi=60.0),
    "K": Unit("C", 1.0, -273.15, lo=-60.0, hi=60.0),
    "m/s": Unit("m/s", 1.0, lo=0.0, hi=75.0),
    "kWh": Unit("kWh", 1.0),
    "Wh": Unit("kWh", 1e-3),
    "%": Unit("%", 1.0, lo=0.0, hi=100.0),
    "1": Unit("1", 1.0),
}
_ALIASES = {
    "w/m2": "W/m2",
    "w/m^2": "W/m2",
    "W/m^2": "W/m2",
    "W/m²": "W/m2",
    "degC": "C",
    "°C": "C",
    "c": "C",
}


def unit(name: str) -> Unit:
    key = _ALIASES.get(name, name)
    if key not in UNITS:
        raise KeyError(f"unknown unit {name!r}; known: {', '.join(UNITS)}")
    return UNITS[key]


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except Exception as exc:  # parsers raise many types; the operator needs the file name
        raise TraceError(f"{p}: cannot read: {exc}") from None


def load_series(
    path: str | Path,
    columns: Mapping[str, str],
    *,
    time_col: str = "time",
    tz: str | None = None,
    time_format: str | None = None,
    rename: Mapping[str, str] | None = None,
    max_gap_s: float = 3 * 3600.0,
    fix: bool = False,
) -> pd.DataFrame:
    """Read ``path`` (CSV or Parquet): time column + ``columns`` {name: unit}; validated, canonical units.

    Naive time stamps get ``tz`` (required then); tz-aware ones are converted to ``tz`` if given.
    ``rename`` maps output names (e.g. {"GHI": "ghi"}) after unit conversion.
    """
    df = read_table(path)
    src = str(path)
    if time_col not in df.columns:
        raise TraceError(f"{src}: column {time_col!r}: missing (columns: {', '.join(map(str, df.columns))})")
    try:
        idx = pd.to_datetime(df[time_col], format=time_format)
    except (ValueError, TypeError) as exc:
        raise TraceError(f"{src}: column {time_col!r}: cannot parse time stamps: {exc}") from None
    idx = pd.DatetimeIndex(idx)
    if idx.tz is None:
        if tz is None:
            raise TraceError(f"{src}: column {time_col!r}: time stamps have no time zone; pass tz=")
        try:
            idx = idx.tz_localize(tz)
        except (ValueError, TypeError) as exc:  # local times that do not exist / exist twice (DST)
            raise TraceError(f"{src}: column {time_col!r}: cannot attach time zone {tz}: {exc}") from None
    elif tz is not None:
        idx = idx.tz_convert(tz)
    out = pd.DataFrame(index=idx)
    for col, u in columns.items():
        if col not in df.columns:
            raise TraceError(f"{src}: column {col!r}: missing")
        try:
            spec = unit(u)
        except KeyError as exc:
            raise TraceError(f"{src}: column {col!r}: {exc.args[0]}") from None
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad_text = np.isnan(vals) & df[col].notna().to_numpy()
        if bad_text.any():
            i = int(np.argmax(bad_text))
            raise TraceError(f"{src}: column {col!r}: row {i}: not a number: {df[col].iloc[i]!r}")
        out[col] = vals * spec.factor + spec.offset
    if rename:
        out = out.rename(columns=dict(rename))
    units = {(rename or {}).get(c, c): unit(u) for c, u in columns.items()}
    return validate(out, src, units, max_gap_s=max_gap_s, fix=fix)


def validate(
    df: pd.DataFrame,
    source: str,
    units: Mapping[str, Unit] | None = None,
    *,
    max_gap_s: float = 3 * 3600.0,
    fix: bool = False,
) -> pd.DataFrame:
    """Check order, duplicates, NaN gaps and unit ranges; apply the documented fixes (logged)."""
    if not isinstance(df.index, pd.DatetimeIndex):
        raise TraceError(f"{source}: index: not a DatetimeIndex")
    if df.index.tz is None:
        raise TraceError(f"{source}: index: time stamps have no time zone")
    if df.index.hasnans:  # a blank or unparseable stamp read as NaT: the row has no time
        i = int(np.argmax(df.index.isna()))
        raise TraceError(f"{source}: index: row {i}: missing time stamp")
    if len(df) < 2:
        raise TraceError(f"{source}: fewer than 2 rows")
    if not df.index.is_monotonic_increasing:
        log.warning("%s: time stamps not sorted: sorted them", source)
        df = df.sort_index(kind="stable")
    dup = df.index.duplicated(keep="first")
    if dup.any():
        first = df.index[int(np.argmax(dup))]
        if not fix:
            raise TraceError(f"{source}: index: {int(dup.sum())} duplicated time stamps, first {first}")
        log.warning(
            "%s: dropped %d duplicated time stamps (kept the first), first %s", source, dup.sum(), first
        )
        df = df[~dup]
    df = df.copy()
    for col in df.columns:
        u = (units or {}).get(col)
        s = df[col]
        if u is not None:
            vals = s.to_numpy(float)
            finite = vals[np.isfinite(vals)]
            if finite.size and (finite.max() > u.hi or finite.min() < u.lo):
                worst = finite.max() if finite.max() > u.hi else finite.min()
                raise TraceError(
                    f"{source}: column {col!r}: value {worst:g} {u.canonical} outside the plausible range "
                    f"[{u.lo:g}, {u.hi:g}] (wrong units?)"
                )
            if u.clip_negative_above is not None and (finite < 0).any():
                n_neg = int((s < 0).sum())
                log.info(
                    "%s: column %r: %d small negative values (sensor offset) clipped to 0", source, col, n_neg
                )
                df[col] = s.clip(lower=0.0)
        df[col] = _fill_gaps(df[col], source, max_gap_s)
    return df


def _fill_gaps(s: pd.Series, source: str, max_gap_s: float) -> pd.Series:
    nan = s.isna().to_numpy()
    if not nan.any():
        return s
    if nan.all():
        raise TraceError(f"{source}: column {s.name!r}: no values at all")
    # length of each NaN run in seconds, measured between the valid neighbours
    t = np.asarray(s.index.as_unit("s").asi8, dtype=float)
    valid_t = t[~nan]
    i = np.searchsorted(valid_t, t[nan])
    before = valid_t[np.clip(i - 1, 0, len(valid_t) - 1)]
    after = valid_t[np.clip(i, 0, len(valid_t) - 1)]
    edge = (i == 0) | (i == len(valid_t))
    span = np.where(edge, np.inf, after - before)
    if np.any(span > max_gap_s):
        k = int(np.argmax(span > max_gap_s))
        where = s.index[nan][k]
        raise TraceError(
            f"{source}: column {s.name!r}: gap of missing values around {where} longer than {max_gap_s:g} s "
            "(or at the start/end of the trace)"
        )
    log.warning(
        "%s: column %r: interpolated %d missing values (gaps <= %g s)",
        source,
        s.name,
        int(nan.sum()),
        max_gap_s,
    )
    return s.interpolate(method="time", limit_area="inside")


def interp_to(s: pd.Series, index: pd.DatetimeIndex) -> pd.Series:
    """Linear interpolation of ``s`` onto ``index`` (upsampling), holding the ends."""
    x = np.asarray(s.index.as_unit("s").asi8, dtype=float)
    xi = np.asarray(index.as_unit("s").asi8, dtype=float)
    return pd.Series(np.interp(xi, x, s.to_numpy(float)), index=index, name=s.name)
