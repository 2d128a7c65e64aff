"""The `[tariff]` section of a site config: grid energy prices, demand charge, CO2 intensity.

Kept apart from powerctl.config so that powerctl.tariffs (which evaluates it) and the config can
both use it without importing each other. Example::

    [tariff]
    import_price_per_kwh = 0.25          # when no season/period matches (and no series covers now)
    export_price_per_kwh = 0.04          # may be 0 or negative
    demand_charge_per_kw = 12.0          # per kW of the billing period's peak import
    billing_period = "month"             # day | week | month
    co2_kg_per_kwh = 0.35
    utc_offset_h = 1.0                   # local time of the schedule
    price_csv = "/etc/powerctl/prices.csv"   # optional dynamic prices: t_s,import_price_per_kwh[,export_price_per_kwh]
    price_topic = "prices/utility/day-ahead" # optional dynamic prices over MQTT (powerctl.mqtt.prices)
    price_max_age_s = 7200                   # older than this: back to the schedule above

    [[tariff.seasons]]
    name = "winter"
    months = [11, 12, 1, 2]
    import_price_per_kwh = 0.22
    [[tariff.seasons.periods]]
    name = "peak"
    days = ["mon", "tue", "wed", "thu", "fri"]
    start_h = 17.0
    end_h = 21.0
    import_price_per_kwh = 0.45
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    # The config's rules (powerctl.config._Model): unknown keys and NaN/inf are errors.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


class BillingPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"  # Monday 00:00 local
    MONTH = "month"  # the 1st, 00:00 local


Price = Annotated[float, Field(ge=-10.0, le=100.0)]  # per kWh: a number outside is a typo


class TouPeriod(_Model):
    """A time-of-use window inside a season: these days, from start_h to end_h local time."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    days: list[Weekday] = Field(default_factory=lambda: list(Weekday), min_length=1)
    start_h: Annotated[float, Field(ge=0.0, lt=24.0)]
    end_h: Annotated[float, Field(gt=0.0, le=24.0)]
    import_price_per_kwh: Price

    @model_validator(mode="after")
    def _order(self) -> TouPeriod:
        if self.end_h <= self.start_h:
            raise ValueError(f"end_h ({self.end_h}) must be after start_h ({self.start_h}); split a window "
                             "over midnight into two periods")
        return self


class TouSeason(_Model):
    """Months with their own base price and time-of-use periods (the first matching period wins)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(min_length=1)
    import_price_per_kwh: Price
    periods: list[TouPeriod] = Field(default_factory=list, max_length=48)


class Tariff(_Model):
    import_price_per_kwh: Price = 0.0
    export_price_per_kwh: Price = 0.0
    seasons: list[TouSeason] = Field(default_factory=list, max_length=12)
    price_csv: str | None = None
    price_topic: Annotated[str, Field(pattern=r"^[^+#\x00]{1,256}$")] | None = None  # an exact topic
    price_max_age_s: Annotated[float, Field(gt=0.0, le=7 * 86400.0)] = 7200.0
    demand_charge_per_kw: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    billing_period: BillingPeriod = BillingPeriod.MONTH
    co2_kg_per_kwh: Annotated[float, Field(ge=0.0, le=5.0)] | None = None
    utc_offset_h: Annotated[float, Field(ge=-14.0, le=14.0)] = 0.0

    @model_validator(mode="after")
    def _months_once(self) -> Tariff:
        seen: dict[int, str] = {}
        for s in self.seasons:
            for m in s.months:
                if m in seen:
                    raise ValueError(f"seasons: month {m} is in both {seen[m]!r} and {s.name!r}")
                seen[m] = s.name
        return self
