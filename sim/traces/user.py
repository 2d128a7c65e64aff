"""The engineer's own traces: one column of a CSV or Parquet file, mapped onto the plant's grid.

A ``ColumnMap`` says where the numbers are and what they mean: file, column, unit, time zone of
naive stamps, sign (a meter that counts production negative: ``sign=-1``), scale, and how the
stamps label their interval. On the command line it is one string::

    FILE:column=ac_power__752,unit=W,tz=Etc/GMT+7,sign=1,scale=1,time=measured_on

and in a traces TOML next to the site (``--traces``) one table per trace (paths relative to the
TOML). ``load_on_grid`` cuts the window the replay needs (warm-up included), checks it is covered,
fills or refuses its gaps per ``GapPolicy`` (only gaps *inside the window* count: one bad day does
not refuse every window of a long file), and resamples to the plant step (bin means when the file
is finer, interpolation of interval means when it is coarser).

``solar_noon_offsets_min`` / ``check_clock`` compare each day's power centroid with solar noon at
the site's longitude: stamps an hour late in summer only are local clock time with DST labelled
as a fixed offset; the error says so and names the fix (``clock=<zone>``).
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from powerctl.sim.traces.loaders import TraceError, read_table, unit


class GapPolicy(enum.Enum):
    INTERPOLATE = "interpolate"  # linear across gaps up to max_gap_s, refuse longer ones
    ZERO = "zero"  # 0 across gaps up to max_gap_s (PV logger off at night), refuse longer
    REFUSE = "refuse"  # any gap refuses the window


class StampLabel(enum.Enum):
    START = "start"  # the stamp opens its interval (most loggers)
    END = "end"  # the stamp closes it (TMY, many SCADA exports)
    INSTANT = "instant"  # a sample at the stamp (the interval is centred on it)


@dataclass(frozen=True)
class ColumnMap:
    path: Path
    column: str
    unit: str = "kW"
    tz: str | None = None  # zone of naive stamps (aware stamps keep theirs)
    clock: str | None = None  # the stamps are wall-clock time of this zone (DST), whatever their offset
    sign: float = 1.0
    scale: float = 1.0
    time: str | None = None  # time column; default: the first whose name says time/date
    label: StampLabel = StampLabel.START
    dst: str = "check"  # check | ignore

    def describe(self) -> str:
        return f"{self.path}: column {self.column!r}"


_KEYS = {"column", "unit", "tz", "clock", "sign", "scale", "time", "label", "dst"}


def column_map(path: str | Path, opts: dict[str, Any], where: str) -> ColumnMap:
    """Build a ``ColumnMap`` from ``opts``; ``where`` names the option or TOML table for errors."""
    bad = sorted(set(opts) - _KEYS)
    if bad:
        raise TraceError(f"{where}: unknown key {bad[0]!r}; keys: {', '.join(sorted(_KEYS))}")
    if "column" not in opts:
        raise TraceError(f"{where}: say which column holds the values: column=<name>")
    try:
        return ColumnMap(
            Path(path),
            str(opts["column"]),
            str(opts.get("unit", "kW")),
            opts.get("tz"),
            opts.get("clock"),
            float(opts.get("sign", 1.0)),
            float(opts.get("scale", 1.0)),
            opts.get("time"),
            StampLabel(opts.get("label", "start")),
            str(opts.get("dst", "check")),
        )
    except ValueError as exc:
        raise TraceError(f"{where}: {exc} (sign/scale are numbers; label is start, end or instant)") from None


def parse_map_option(spec: str, where: str) -> ColumnMap:
    """``FILE:key=value,key=value`` (the command-line form)."""
    path, sep, rest = spec.partition(":")
    if not sep:
        raise TraceError(f"{where}: {spec!r}: write FILE:column=NAME[,unit=W,tz=UTC,sign=-1,scale=1]")
    return column_map(path, _kv(rest, where), where)


IRRADIANCE_KEYS = ("ghi", "dni", "dhi", "poa")
WEATHER_KEYS = (*IRRADIANCE_KEYS, "temp_air", "wind_speed")
_WEATHER_UNITS = {"temp_air": "C", "wind_speed": "m/s"}


def weather_maps(path: str | Path, opts: dict[str, Any], where: str) -> dict[str, ColumnMap]:
    """``ghi=COL[,dni=COL,dhi=COL]`` or ``poa=COL`` (+ ``temp_air=``, ``wind_speed=``) and the shared
    keys (``unit`` of the irradiance, default W/m2; ``tz``, ``clock``, ``time``, ``label``, ``dst``)."""
    cols = {k: str(opts[k]) for k in WEATHER_KEYS if k in opts}
    rest = {k: v for k, v in opts.items() if k not in WEATHER_KEYS}
    if "ghi" not in cols and "poa" not in cols:
        raise TraceError(f"{where}: name the irradiance column: ghi=<column> (with dni=, dhi= if measured) "
                         "or poa=<column> (plane of array)")
    return {k: column_map(path, {**rest, "column": c,
                                 "unit": _WEATHER_UNITS.get(k, str(rest.get("unit", "W/m2")))}, where)
            for k, c in cols.items()}


def parse_weather_option(spec: str, where: str) -> dict[str, ColumnMap]:
    path, sep, rest = spec.partition(":")
    if not sep:
        raise TraceError(f"{where}: {spec!r}: write FILE:ghi=COL[,dni=COL,dhi=COL,unit=W/m2,tz=UTC] or FILE:poa=COL")
    return weather_maps(path, _kv(rest, where), where)


def _kv(rest: str, where: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = part.partition("=")
        if not eq:
            raise TraceError(f"{where}: {part!r}: expected key=value")
        opts[k.strip()] = v.strip()
    return opts


@dataclass(frozen=True)
class Gaps:
    policy: GapPolicy = GapPolicy.INTERPOLATE
    max_gap_s: float = 3 * 3600.0


@dataclass
class UserTraces:
    """What a replay takes from the user's files (each optional)."""

    pv_power: ColumnMap | None = None  # measured AC power of all arrays
    load: ColumnMap | None = None  # site load besides the GPUs (kW)
    gpu: dict[str, ColumnMap] | None = None  # per class: W per GPU, or % utilisation
    price: ColumnMap | None = None  # grid price per kWh (unit "1": the site's currency)
    pv_forecast: ColumnMap | None = None  # a PV forecast issued before the run (kW), for --pv-forecast provided
    weather: dict[str, ColumnMap] | None = None  # irradiance: ghi [+ dni, dhi] or poa; temp_air, wind_speed
    gaps: Gaps = Gaps()


def read_traces_toml(path: str | Path) -> UserTraces:
    """``[pv_power]``, ``[load]``, ``[price]``, ``[gpu.<class>]`` tables with ``file`` + mapping keys;
    ``[gaps] policy = "interpolate", max_gap_h = 3``."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TraceError(f"{p}: cannot read: {exc}") from None

    def one(tab: dict[str, Any], where: str) -> ColumnMap:
        if "file" not in tab:
            raise TraceError(f"{p}: [{where}]: missing key 'file'")
        opts = {k: v for k, v in tab.items() if k != "file"}
        return column_map(p.parent / str(tab["file"]), opts, f"{p}: [{where}]")

    out = UserTraces()
    for key in ("pv_power", "load", "price", "pv_forecast"):
        if key in doc:
            setattr(out, key, one(doc[key], key))
    if "gpu" in doc:
        out.gpu = {c: one(t, f"gpu.{c}") for c, t in doc["gpu"].items()}
    if "weather" in doc:
        w = doc["weather"]
        if "file" not in w:
            raise TraceError(f"{p}: [weather]: missing key 'file'")
        out.weather = weather_maps(p.parent / str(w["file"]), {k: v for k, v in w.items() if k != "file"},
                                   f"{p}: [weather]")
    if "gaps" in doc:
        g = doc["gaps"]
        try:
            out.gaps = Gaps(GapPolicy(g.get("policy", "interpolate")), float(g.get("max_gap_h", 3.0)) * 3600.0)
        except ValueError as exc:
            raise TraceError(f"{p}: [gaps]: {exc} (policy: interpolate, zero or refuse)") from None
    unknown = sorted(set(doc) - {"pv_power", "load", "price", "gpu", "gaps", "weather", "pv_forecast"})
    if unknown:
        raise TraceError(f"{p}: unknown table [{unknown[0]}]; tables: pv_power, weather, load, price, gpu.<class>, gaps")
    return out


def user_traces(toml: str | Path | None = None, *, pv_power: str | None = None, load: str | None = None,
                gpu: dict[str, str] | None = None, price: str | None = None, gaps: str | None = None,
                max_gap_h: float | None = None, weather: str | None = None,
                pv_forecast: str | None = None) -> UserTraces:
    """The traces TOML first, then mapping strings (``FILE:column=..``) over it; gap policy last."""
    u = read_traces_toml(toml) if toml is not None else UserTraces()
    if weather:
        u.weather = parse_weather_option(weather, "--weather")
    for key, spec in (("pv_power", pv_power), ("load", load), ("price", price), ("pv_forecast", pv_forecast)):
        if spec:
            setattr(u, key, parse_map_option(spec, f"--{key.replace('_', '-')}"))
    if gpu:
        u.gpu = {**(u.gpu or {}), **{c: parse_map_option(s, f"--gpu-demand {c}") for c, s in gpu.items()}}
    if gaps is not None:
        try:
            u.gaps = replace(u.gaps, policy=GapPolicy(gaps))
        except ValueError:
            raise TraceError(f"--gaps {gaps!r}: choose interpolate, zero or refuse") from None
    if max_gap_h is not None:
        u.gaps = replace(u.gaps, max_gap_s=max_gap_h * 3600.0)
    return u


def _time_column(df: pd.DataFrame, m: ColumnMap) -> str | None:
    if m.time is not None:
        if m.time not in df.columns:
            raise TraceError(f"{m.path}: time column {m.time!r}: missing (columns: {', '.join(map(str, df.columns))})")
        return m.time
    if isinstance(df.index, pd.DatetimeIndex):
        return None
    for c in df.columns:
        name = str(c).lower()
        if name in ("t", "ts") or any(w in name for w in ("time", "date", "measured_on", "stamp")):
            return str(c)
    first = df.columns[0]
    if df[first].dtype == object and pd.to_datetime(df[first].head(5), errors="coerce").notna().all():
        return str(first)
    raise TraceError(f"{m.path}: no time column found; name it in the mapping: time=<column>")


def _stamps(raw: pd.Series) -> pd.DatetimeIndex:
    try:
        return pd.DatetimeIndex(pd.to_datetime(raw, errors="coerce", format="mixed"))
    except (ValueError, TypeError):  # offsets that change (a logger writing -06:00 and -07:00): to UTC
        return pd.DatetimeIndex(pd.to_datetime(raw, errors="coerce", format="mixed", utc=True))


def read_column(m: ColumnMap) -> pd.Series:
    """The mapped column, in canonical units, sign and scale applied, on tz-aware interval-start stamps."""
    df = read_table(m.path)
    tcol = _time_column(df, m)
    if m.column not in df.columns:
        raise TraceError(f"{m.describe()}: missing (columns: {', '.join(map(str, df.columns))})")
    raw = df.index if tcol is None else df[tcol]
    idx = raw if isinstance(raw, pd.DatetimeIndex) else _stamps(raw)
    if idx.hasnans:
        i = int(np.argmax(idx.isna()))
        raise TraceError(f"{m.path}: column {tcol!r}: row {i + 2}: not a time stamp: {pd.Series(raw).iloc[i]!r}")
    if m.clock is not None:  # wall clock of a DST zone whatever offset the file wrote
        try:
            idx = (idx.tz_localize(None) if idx.tz is not None else idx).tz_localize(
                m.clock, ambiguous="NaT", nonexistent="shift_forward")
        except Exception as exc:  # unknown zone names raise several types
            raise TraceError(f"{m.path}: clock={m.clock!r}: {exc} (an IANA zone, e.g. America/Denver)") from None
    elif idx.tz is None:
        if m.tz is None:
            raise TraceError(f"{m.path}: column {tcol!r}: time stamps have no zone; add tz=<zone> to the mapping "
                             "(e.g. tz=UTC or tz=Etc/GMT+7 for UTC-7)")
        try:
            idx = idx.tz_localize(m.tz, ambiguous="NaT", nonexistent="shift_forward")
        except Exception as exc:
            raise TraceError(f"{m.path}: tz={m.tz!r}: {exc} (an IANA zone, e.g. UTC or Etc/GMT+7)") from None
    try:
        spec = unit(m.unit)
    except KeyError as exc:
        raise TraceError(f"{m.describe()}: {exc.args[0]}") from None
    vals = pd.to_numeric(df[m.column], errors="coerce").to_numpy(float)
    text = np.isnan(vals) & df[m.column].notna().to_numpy() & (df[m.column].astype(str).str.strip() != "").to_numpy()
    if text.any():
        i = int(np.argmax(text))
        raise TraceError(f"{m.describe()}: row {i + 2}: not a number: {df[m.column].iloc[i]!r}")
    s = pd.Series((vals * spec.factor + spec.offset) * m.sign * m.scale, index=idx, name=m.column)
    s = s[~s.index.isna()]
    s.index = pd.DatetimeIndex(s.index).as_unit("ns")  # asi8 below is nanoseconds
    s = s[~s.index.duplicated(keep="first")].sort_index()
    if len(s) < 2:
        raise TraceError(f"{m.describe()}: fewer than 2 rows")
    step = _step(s)
    if m.label is StampLabel.END:
        s.index = s.index - step
    elif m.label is StampLabel.INSTANT:
        s.index = s.index - step / 2
    return s


def _step(s: pd.Series) -> pd.Timedelta:
    return pd.Timedelta(np.median(np.diff(s.index.asi8)), unit="ns").as_unit("ns")


def load_on_grid(m: ColumnMap, index: pd.DatetimeIndex, gaps: Gaps, s: pd.Series | None = None) -> pd.Series:
    """``m``'s values on ``index`` (regular, interval starts): covered, gaps handled, resampled."""
    s = read_column(m) if s is None else s
    step = _step(s)
    fine = index[1] - index[0]
    lo, hi = index[0], index[-1] + fine
    first, last = s.index[0], s.index[-1] + step
    if lo < first or hi > last:
        raise TraceError(
            f"{m.describe()}: covers {first} to {last}; the replay needs {lo} to {hi} (warm-up included): "
            "choose --start inside the file, fewer --days, or a shorter --warmup-days"
        )
    lo, hi = lo.as_unit("ns"), hi.as_unit("ns")
    w = s[(s.index >= lo - step) & (s.index < hi + step)]
    valid = w.dropna()
    t = valid.index.asi8
    edges = np.concatenate([[lo.value - step.value], t, [hi.value]])
    gap_ns = np.diff(edges) - step.value
    gap_ns = np.maximum(gap_ns, 0)
    limit_ns = 0.0 if gaps.policy is GapPolicy.REFUSE else gaps.max_gap_s * 1e9
    if (gap_ns > limit_ns + step.value * 0.01).any():
        k = int(np.argmax(gap_ns > limit_ns + step.value * 0.01))
        a = pd.Timestamp(t[k - 1] if k > 0 else lo.value - step.value, tz=s.index.tz) + step
        b = pd.Timestamp(t[k] if k < len(t) else hi.value, tz=s.index.tz)
        raise TraceError(
            f"{m.describe()}: no values from {a} to {b} ({(b - a).total_seconds() / 3600:.1f} h) inside the replay "
            f"window {lo} to {hi}; gap policy {gaps.policy.value}, limit {gaps.max_gap_s / 3600:g} h: choose another "
            "--start, raise --max-gap-h, or --gaps zero/interpolate"
        )
    full = valid.reindex(valid.index.union(pd.date_range(w.index[0], w.index[-1], freq=step)))
    full = full.fillna(0.0) if gaps.policy is GapPolicy.ZERO else full.interpolate(limit_area="inside").ffill().bfill()
    if step <= fine:  # bin means
        out = full.resample(fine, origin=lo).mean().reindex(index)
        return out.interpolate().ffill().bfill().rename(m.column)
    mid = full.index + step / 2  # interval means at interval middles, interpolated
    x = mid.as_unit("ns").asi8.astype(float)
    xi = (index + fine / 2).as_unit("ns").asi8.astype(float)
    return pd.Series(np.interp(xi, x, full.to_numpy(float)), index=index, name=m.column)


def solar_noon_offsets_min(p: pd.Series, longitude_deg: float) -> pd.Series:
    """Per day with enough sun: the middle of the producing hours (first to last interval above 10 %
    of the day's peak; edges are less cloud-sensitive than a centroid) minus solar noon at
    ``longitude_deg``, in minutes. An array facing east or west moves it by tens of minutes all year;
    a DST clock moves it by 60 min in summer only."""
    from pvlib.solarposition import equation_of_time_spencer71

    s = p.clip(lower=0.0).tz_convert("UTC")
    step = _step(s)
    centre = s.index + step / 2 + pd.Timedelta(hours=longitude_deg / 15.0)  # mean solar time
    day = centre.floor("D")
    secs = (centre - day).total_seconds().to_numpy(float)
    df = pd.DataFrame({"w": s.to_numpy(float), "t": secs, "day": day})
    peak = df.groupby("day")["w"].transform("max")
    on = df[(df["w"] > 0.1 * peak) & (peak > 0.2 * float(df["w"].max()))]
    g = on.groupby("day")["t"]
    mid_s = (g.min() + g.max()) / 2.0
    doy = mid_s.index.day_of_year.to_numpy()
    noon_s = 12.0 * 3600.0 - equation_of_time_spencer71(doy) * 60.0
    return pd.Series((mid_s.to_numpy() - noon_s) / 60.0, index=mid_s.index)


def check_clock(p: pd.Series, longitude_deg: float, source: str) -> None:
    """Refuse PV stamps the sun contradicts: an hour late in summer only (DST) or far off all year."""
    off = solar_noon_offsets_min(p, longitude_deg)
    if len(off) < 3:
        return
    smooth = off.rolling(9, center=True, min_periods=3).median()
    base = float(smooth.quantile(0.1))
    late = smooth > base + 40.0
    if 0.1 < late.mean() < 0.9:
        days = off.index[late.to_numpy()]
        raise TraceError(
            f"{source}: daylight is centred {off[late].median():.0f} min from solar noon (longitude "
            f"{longitude_deg:g}) on {int(late.sum())} of {len(off)} days, {days[0].date()} to {days[-1].date()}, "
            f"and {off[~late].median():.0f} min on the others: the stamps are local clock time with daylight "
            "saving, labelled as a fixed offset. Fix: add clock=<the logger's zone, e.g. America/Denver> to the "
            "mapping (or dst=ignore to replay as written)"
            + (f"; even those are {off[~late].median():.0f} min off: is the site's longitude right?"
               if abs(float(off[~late].median())) > 75.0 else "")
        )
    if abs(float(off.median())) > 75.0:
        raise TraceError(
            f"{source}: daylight is centred {off.median():.0f} min from solar noon (longitude {longitude_deg:g}) "
            "on most days: wrong time zone? Fix tz= (naive stamps) or clock= in the mapping, or check the "
            "site's longitude (or dst=ignore to replay as written)"
        )
