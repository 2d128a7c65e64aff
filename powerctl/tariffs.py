"""Grid prices over the planning horizon from the `[tariff]` config (powerctl.tariff_config).

Import price per step: a dynamic price series (pushed over MQTT, powerctl.mqtt.prices, while it
is fresh; else the CSV) where it covers the step, else the time-of-use
schedule (season by month, period by weekday and hour, local time = UTC + utc_offset_h), else the
flat `import_price_per_kwh`. Each plan carries where its first step's price came from (`source`).
Export price: the series' export column where given, else the flat export price.

The CSV (`price_csv`) has a header and rows `t_s,import_price_per_kwh[,export_price_per_kwh]`,
t_s in Unix seconds, strictly increasing; a row's price holds until the next row (the last one
for one more interval). It is read once, bounded in size, and every bad line is an error naming
the file, the line and the problem (a price we do not trust is never planned with).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from powerctl.config import ConfigError
from powerctl.tariff_config import BillingPeriod, Tariff, Weekday

FloatArray = npt.NDArray[np.float64]
MAX_CSV_BYTES = 16 * 1024 * 1024  # a year of 5-minute prices is ~2.5 MB
_WEEKDAYS = list(Weekday)  # index 0 = Monday


@dataclass(frozen=True)
class PriceSeries:
    """A dynamic price series: price[i] holds from t_s[i] until t_s[i + 1]."""

    t_s: FloatArray
    import_per_kwh: FloatArray
    export_per_kwh: FloatArray | None
    path: str  # the file, or the MQTT topic
    kind: str = "csv"  # "csv" | "mqtt": the plan's price source says which

    def end_s(self) -> float:
        step = float(self.t_s[-1] - self.t_s[-2]) if self.t_s.size > 1 else 3600.0
        return float(self.t_s[-1]) + step


@dataclass(frozen=True)
class HorizonPrices:
    """Prices for one plan, per step (step start times)."""

    import_per_kwh: FloatArray
    export_per_kwh: FloatArray
    in_billing_period: npt.NDArray[np.bool_]
    co2_kg_per_kwh: FloatArray | None
    source: str  # of the first step's import price: "mqtt:<topic>", "csv:<path>", "tou:<season>/<period>", "flat"
    demand_charge_per_kw: float = 0.0  # as this plan prices the current period's peak (pro rata)
    demand_charge_next_per_kw: float = 0.0  # and the next period's


def _number(path: str, line: int, name: str, text: str) -> float:
    try:
        val = float(text)
    except ValueError:
        raise ConfigError(f"{path}: line {line}: {name}: {text!r} is not a number") from None
    if not math.isfinite(val):
        raise ConfigError(f"{path}: line {line}: {name}: {text!r} is not finite")
    return val


def parse_price_csv(text: str, path: str) -> PriceSeries:
    """Parse the CSV text (see module docstring); ConfigError names file, line and problem."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ConfigError(f"{path}: empty; expected a header t_s,import_price_per_kwh[,export_price_per_kwh]")
    header = [h.strip() for h in rows[0]]
    if header[:2] != ["t_s", "import_price_per_kwh"] or header[2:] not in ([], ["export_price_per_kwh"]):
        raise ConfigError(f"{path}: line 1: header {','.join(header)!r}; expected "
                          "t_s,import_price_per_kwh[,export_price_per_kwh]")
    t, imp, exp = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ConfigError(f"{path}: line {n}: {len(row)} fields, the header has {len(header)}")
        t.append(_number(path, n, "t_s", row[0]))
        price = _number(path, n, "import_price_per_kwh", row[1])
        if not -10.0 <= price <= 100.0:
            raise ConfigError(f"{path}: line {n}: import_price_per_kwh: {price} is outside [-10, 100] per kWh")
        imp.append(price)
        if len(header) == 3:
            exp.append(_number(path, n, "export_price_per_kwh", row[2]))
        if len(t) > 1 and t[-1] <= t[-2]:
            raise ConfigError(f"{path}: line {n}: t_s {t[-1]:.0f} is not after the previous row's {t[-2]:.0f}")
    if not t:
        raise ConfigError(f"{path}: no price rows")
    return PriceSeries(t_s=np.array(t), import_per_kwh=np.array(imp),
                       export_per_kwh=np.array(exp) if exp else None, path=path)


def load_price_csv(path: str | Path) -> PriceSeries:
    """Read and parse a price CSV, bounded in size."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CSV_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: tariff.price_csv: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CSV_BYTES:
        raise ConfigError(f"{p}: tariff.price_csv: larger than {MAX_CSV_BYTES // (1024 * 1024)} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: tariff.price_csv: not UTF-8 text: {exc}") from None
    return parse_price_csv(text, str(p))


def local_calendar(t_s: FloatArray, utc_offset_h: float) -> tuple[npt.NDArray[np.int64], ...]:
    """(day number, weekday 0 = Monday, month 1-12, month number since 1970) of local times."""
    local = np.asarray(t_s, dtype=float) + utc_offset_h * 3600.0
    days = np.floor(local / 86400.0).astype(np.int64)
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return days, (days + 3) % 7, months % 12 + 1, months  # 1970-01-01 was a Thursday


def billing_key(t_s: FloatArray, period: BillingPeriod, utc_offset_h: float) -> npt.NDArray[np.int64]:
    """An integer that is the same for every time in one billing period."""
    days, _wd, _m, months = local_calendar(t_s, utc_offset_h)
    if period is BillingPeriod.DAY:
        return days
    if period is BillingPeriod.WEEK:
        return (days + 3) // 7  # weeks from Monday 1969-12-29
    return months


def period_bounds_s(t_s: float, period: BillingPeriod, utc_offset_h: float) -> tuple[float, float]:
    """(start, end) in Unix seconds of the billing period holding t_s."""
    off = utc_offset_h * 3600.0
    day = int(np.floor((t_s + off) / 86400.0))
    if period is BillingPeriod.DAY:
        start_d, end_d = day, day + 1
    elif period is BillingPeriod.WEEK:
        start_d = day - (day + 3) % 7  # back to Monday
        end_d = start_d + 7
    else:
        month = np.datetime64(day, "D").astype("datetime64[M]")
        start_d = int(month.astype("datetime64[D]").astype(np.int64))
        end_d = int((month + 1).astype("datetime64[D]").astype(np.int64))
    return start_d * 86400.0 - off, end_d * 86400.0 - off


def demand_weights(now_s: float, horizon_s: float, period: BillingPeriod, utc_offset_h: float) -> tuple[float, float]:
    """Share of the demand charge a plan over [now, now + horizon) puts on each period's peak.

    A peak once set is paid once and free for the rest of its period, so raising it pays off over
    the whole rest of the period, of which the horizon sees only a part: the plan prices the
    current period's peak at horizon / (time left in the period), capped at 1 (the full rate near
    the period's end), and the next period's at horizon / (its length).
    """
    _start, end = period_bounds_s(now_s, period, utc_offset_h)
    n_start, n_end = period_bounds_s(end, period, utc_offset_h)
    cur = min(1.0, horizon_s / max(end - now_s, 1.0))
    nxt = min(1.0, horizon_s / max(n_end - n_start, 1.0))
    return cur, nxt


class TariffPrices:
    """Evaluates a Tariff (and its price series) over a horizon."""

    def __init__(self, tariff: Tariff, series: PriceSeries | None = None) -> None:
        self.tariff = tariff
        self.series = series
        # now_s -> the fresh MQTT series or None (powerctl.mqtt.prices.PriceFeed.series), set by the daemon
        self.live: Callable[[float], PriceSeries | None] | None = None

    @classmethod
    def from_config(cls, tariff: Tariff) -> TariffPrices:
        return cls(tariff, load_price_csv(tariff.price_csv) if tariff.price_csv else None)

    def _tou(self, t_s: FloatArray) -> tuple[FloatArray, list[str]]:
        tf = self.tariff
        _d, wd, month, _m = local_calendar(t_s, tf.utc_offset_h)
        hour = ((np.asarray(t_s, float) + tf.utc_offset_h * 3600.0) % 86400.0) / 3600.0
        price = np.full(t_s.shape, tf.import_price_per_kwh)
        source = ["flat"] * t_s.size
        for i in range(t_s.size):
            season = next((s for s in tf.seasons if int(month[i]) in s.months), None)
            if season is None:
                continue
            price[i], source[i] = season.import_price_per_kwh, f"tou:{season.name}"
            day = _WEEKDAYS[int(wd[i])]
            for per in season.periods:
                if day in per.days and per.start_h <= hour[i] < per.end_h:
                    price[i], source[i] = per.import_price_per_kwh, f"tou:{season.name}/{per.name}"
                    break
        return price, source

    def horizon(self, now_s: float, steps_s: FloatArray) -> HorizonPrices:
        """Prices at each step's start for a plan made at now_s."""
        steps = np.asarray(steps_s, dtype=float)
        t_s = now_s + np.concatenate(([0.0], np.cumsum(steps)[:-1]))
        imp, source = self._tou(t_s)
        exp = np.full(t_s.shape, self.tariff.export_price_per_kwh)
        live = self.live(now_s) if self.live is not None else None
        for ser in (self.series, live):  # the live series wins where both cover a step
            if ser is None:
                continue
            covered = (t_s >= ser.t_s[0]) & (t_s < ser.end_s())
            idx = np.clip(np.searchsorted(ser.t_s, t_s, side="right") - 1, 0, ser.t_s.size - 1)
            imp = np.where(covered, ser.import_per_kwh[idx], imp)
            if ser.export_per_kwh is not None:
                exp = np.where(covered, ser.export_per_kwh[idx], exp)
            if covered[0]:
                source[0] = f"{ser.kind}:{ser.path}"
        tf = self.tariff
        keys = billing_key(t_s, tf.billing_period, tf.utc_offset_h)
        co2 = None if tf.co2_kg_per_kwh is None else np.full(t_s.shape, tf.co2_kg_per_kwh)
        w_cur, w_next = demand_weights(now_s, float(steps.sum()), tf.billing_period, tf.utc_offset_h)
        return HorizonPrices(import_per_kwh=imp, export_per_kwh=exp, in_billing_period=keys == keys[0],
                             co2_kg_per_kwh=co2, source=source[0], demand_charge_per_kw=tf.demand_charge_per_kw * w_cur,
                             demand_charge_next_per_kw=tf.demand_charge_per_kw * w_next)
