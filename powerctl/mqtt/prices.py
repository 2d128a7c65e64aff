"""Dynamic grid prices pushed over MQTT (``tariff.price_topic``), for the planner's tariff.

A retained or periodic message on the topic carries a price series (JSON)::

    {"t_s": [1764633600, 1764634500, ...],            # Unix s, strictly increasing
     "import_price_per_kwh": [0.12, 0.31, ...],
     "export_price_per_kwh": [0.03, 0.03, ...]}       # optional

A row's price holds until the next row (the last one for one more interval), as in the price
CSV (powerctl.tariffs). The payload is checked against this schema (at most ``MAX_ROWS`` rows,
prices within the config's [-10, 100] per kWh); a payload that fails is logged with what is wrong
and nothing of it is used (the last good series stays until it is stale). A series received more
than ``tariff.price_max_age_s`` ago is stale: the plan falls back to the configured tariff (the
price CSV, the time-of-use schedule, the flat price) and says so once in the log.

Prices only move the economics, never a limit (the guard holds those), so they are not signed like
operator commands; who may publish on the topic is the broker's ACL (README "Grid and tariffs").

``PricedSources`` routes the topic through the link's device-topic dispatch (powerctl.mqtt.link:
every topic in ``MqttSources.by_topic`` is subscribed and handed to ``handle``).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from powerctl.mqtt.sources import MqttSources
from powerctl.process_image import ProcessImage
from powerctl.tariffs import PriceSeries

log = logging.getLogger(__name__)

MAX_ROWS = 2000  # a week of 5-minute prices
Price = Annotated[float, Field(ge=-10.0, le=100.0, allow_inf_nan=False)]


class PricePayload(BaseModel):
    """The schema of one price message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t_s: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(min_length=1, max_length=MAX_ROWS)
    import_price_per_kwh: list[Price] = Field(min_length=1, max_length=MAX_ROWS)
    export_price_per_kwh: list[Price] | None = None

    @model_validator(mode="after")
    def _rows(self) -> PricePayload:
        n = len(self.t_s)
        if len(self.import_price_per_kwh) != n:
            raise ValueError(f"import_price_per_kwh has {len(self.import_price_per_kwh)} rows, t_s has {n}")
        if self.export_price_per_kwh is not None and len(self.export_price_per_kwh) != n:
            raise ValueError(f"export_price_per_kwh has {len(self.export_price_per_kwh)} rows, t_s has {n}")
        for i in range(1, n):
            if self.t_s[i] <= self.t_s[i - 1]:
                raise ValueError(f"t_s[{i}] {self.t_s[i]:.0f} is not after t_s[{i - 1}] {self.t_s[i - 1]:.0f}")
        return self


def parse_price_payload(payload: bytes, topic: str) -> PriceSeries:
    """The series in one message; ValueError naming the topic, the field and the problem."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{topic}: not JSON: {exc}") from None
    try:
        p = PricePayload.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise ValueError(f"{topic}: {problems}") from None
    return PriceSeries(t_s=np.array(p.t_s), import_per_kwh=np.array(p.import_price_per_kwh),
                       export_per_kwh=None if p.export_price_per_kwh is None else np.array(p.export_price_per_kwh),
                       path=topic, kind="mqtt")


class PriceFeed:
    """The latest good series from the topic, while it is fresh (``series`` is the tariff's hook)."""

    def __init__(self, topic: str, max_age_s: float) -> None:
        self.topic = topic
        self.max_age_s = max_age_s
        self.received_s: float | None = None
        self.rejected = 0
        self.last_error = ""
        self._series: PriceSeries | None = None
        self._said_stale = False

    def handle(self, payload: bytes, now_s: float) -> str | None:
        """Take one message; returns the problem (logged) when it is refused."""
        try:
            series = parse_price_payload(payload, self.topic)
        except ValueError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            log.warning("price topic refused, prices unchanged: %s", exc)
            return self.last_error
        self._series, self.received_s, self._said_stale = series, now_s, False
        log.info("price topic %s: %d prices from %.0f", self.topic, series.t_s.size, series.t_s[0])
        return None

    def series(self, now_s: float) -> PriceSeries | None:
        """The series if fresh, else None (the configured tariff applies)."""
        if self._series is None or self.received_s is None:
            return None
        age_s = now_s - self.received_s
        if math.isfinite(age_s) and -60.0 <= age_s <= self.max_age_s:
            return self._series
        if not self._said_stale:
            log.warning("price topic %s: last prices %.0f s old (max %.0f s): planning with the configured tariff",
                        self.topic, age_s, self.max_age_s)
            self._said_stale = True
        return None


class PricedSources(MqttSources):
    """The MQTT devices' sources plus the price topic."""

    def __init__(self, base: MqttSources, feed: PriceFeed) -> None:
        super().__init__(by_topic=base.by_topic, keepalives=base.keepalives, availability=base.availability)
        self.feed = feed
        self.by_topic.setdefault(feed.topic, [])  # subscribed and dispatched by the link; no signal

    def handle(self, topic: str, payload: bytes, image: ProcessImage, now: float) -> tuple[int, list[str]]:
        if topic != self.feed.topic:
            return super().handle(topic, payload, image, now)
        problem = self.feed.handle(payload, now)
        return (0, [problem]) if problem else (0, [])
