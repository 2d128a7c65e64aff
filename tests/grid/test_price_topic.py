"""Dynamic prices over MQTT (``tariff.price_topic``, powerctl.mqtt.prices) through a real Mosquitto
on loopback and the real MqttLink, as the daemon wires them (``Daemon._price_sources``): a good
series reaches the plan's prices with its source; a bad payload is refused with the field named and
changes nothing; a series older than ``price_max_age_s`` falls back to the configured tariff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from powerctl.config import ConfigError, SiteConfig, load_config, parse_config
from powerctl.daemon import Daemon
from powerctl.mqtt import CommandLimits, CommandState, MqttLink
from powerctl.mqtt.prices import PricedSources, PriceFeed
from powerctl.mqtt.sources import build_sources
from powerctl.process_image import ProcessImage
from powerctl.tariffs import TariffPrices
from tests.servers import Mosquitto

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "prices/utility/day-ahead"
MAX_AGE_S = 3600.0


def grid_site(port: int | None) -> dict[str, Any]:
    d = load_config(ROOT / "examples" / "grid-site.toml").model_dump(mode="json", exclude_none=True)
    d["tariff"].update(price_topic=TOPIC, price_max_age_s=MAX_AGE_S)
    if port is not None:
        d["mqtt"] = {"host": "127.0.0.1", "port": port}
    return d


async def until(pred: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_price_topic_needs_an_mqtt_section() -> None:
    with pytest.raises(ConfigError, match=r"tariff\.price_topic: needs an \[mqtt\] section"):
        parse_config(grid_site(None), "grid-site.toml")


async def test_prices_over_mqtt_reach_the_plan_bad_ones_do_not_stale_ones_fall_back(
        mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    cfg: SiteConfig = parse_config(grid_site(mosquitto.port), "grid-site.toml")
    assert cfg.mqtt is not None and cfg.tariff is not None
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    feed = PriceFeed(TOPIC, cfg.tariff.price_max_age_s)
    prices = TariffPrices.from_config(cfg.tariff)
    prices.live = feed.series
    image = ProcessImage()
    commands = CommandState(CommandLimits.from_site(cfg), lease_s=cfg.mqtt.command_lease_s, clock=clock)
    link = MqttLink(cfg.mqtt, cfg, image, commands, clock, sources=PricedSources(build_sources(cfg), feed))
    steps_s = np.full(12, 900.0)
    now = clock()
    t0 = float(np.floor(now / 900.0) * 900.0)
    good = {"t_s": [t0 + 900.0 * i for i in range(16)],
            "import_price_per_kwh": [0.10 + 0.01 * i for i in range(16)],
            "export_price_per_kwh": [-0.02] * 16}
    task = asyncio.create_task(link.run())
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="price-publisher") as pub:
            await pub.publish(TOPIC, json.dumps(good), qos=1, retain=True)
            await until(lambda: feed.received_s is not None, "the good series")
            h = prices.horizon(clock(), steps_s)
            assert h.source == f"mqtt:{TOPIC}"
            assert h.import_per_kwh[0] == pytest.approx(0.10)  # the series' row holding now
            assert h.import_per_kwh[-1] == pytest.approx(0.10 + 0.01 * 11)
            assert np.all(h.export_per_kwh == -0.02)

            caplog.set_level(logging.WARNING, logger="powerctl.mqtt.prices")
            bad = dict(good, import_price_per_kwh=[*good["import_price_per_kwh"][:-1], 500.0])
            await pub.publish(TOPIC, json.dumps(bad), qos=1, retain=True)
            await pub.publish(TOPIC, b"{not json", qos=1, retain=True)
            await until(lambda: feed.rejected == 2, "both bad payloads refused")
            said = " ".join(r.getMessage() for r in caplog.records)
            assert "import_price_per_kwh.15" in said and "less than or equal to 100" in said, said
            assert "not JSON" in said, said
            h2 = prices.horizon(clock(), steps_s)
            assert h2.source == f"mqtt:{TOPIC}" and np.array_equal(h2.import_per_kwh, h.import_per_kwh)

            offset[0] = MAX_AGE_S + 60.0  # nothing new for longer than price_max_age_s
            h3 = prices.horizon(clock(), steps_s)
            assert h3.source.startswith("tou:"), h3.source
            assert "planning with the configured tariff" in " ".join(r.getMessage() for r in caplog.records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(30):
                await task


async def test_daemon_routes_the_price_topic_to_the_planners_tariff(tmp_path: Path) -> None:
    d = grid_site(1883)  # never connected: the wiring only
    d["control"].update(state_dir=str(tmp_path), heartbeat_path=str(tmp_path / "heartbeat"))
    d["telemetry"] = {"period_s": 1.0, "file": str(tmp_path / "telemetry.lp")}
    daemon = Daemon(parse_config(d, "grid-site.toml"))
    assert daemon.mqtt is not None and daemon.price_feed is not None
    assert TOPIC in daemon.mqtt.sources.topics()
    prices = daemon.core.billing.prices
    assert prices is not None and prices.live == daemon.price_feed.series
