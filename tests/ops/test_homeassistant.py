"""Home Assistant discovery against what the daemon really publishes: every entity's template is
rendered (Jinja2, undefined names fail, as HA logs them) against the last message on its state
topic, from a running daemon over a real Mosquitto and a simulated site."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import jinja2
import pytest

from powerctl.config import load_config
from tests.foundation.test_end_to_end import _run, demo_config
from tests.servers import Mosquitto

pytestmark = pytest.mark.servers


def render(template: str, payload: dict[str, Any]) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=payload)


@pytest.mark.timeout(120)
async def test_every_discovery_template_reads_a_published_field(tmp_path: Path, mosquitto: Mosquitto) -> None:
    demo_config(tmp_path)
    text = (tmp_path / "site.toml").read_text()
    text += (f'\n[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\ntopic_prefix = "pc"\n'
             "homeassistant_discovery = true\n")
    (tmp_path / "site.toml").write_text(text)
    cfg = load_config(tmp_path / "site.toml")
    last: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ha") as client:
            await client.subscribe("pc/#")
            await client.subscribe("homeassistant/#")
            async with asyncio.timeout(9.0):
                async for msg in client.messages:
                    try:
                        payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    except ValueError:
                        continue  # "online" on the status topic
                    (configs if str(msg.topic).startswith("homeassistant/") else last)[str(msg.topic)] = payload

    listener = asyncio.create_task(listen())
    await _run(cfg, seconds=8.0, pv_kw_fn=lambda t: 200.0)
    with pytest.raises(TimeoutError):
        await listener
    assert configs, "no discovery published"
    entities = [c for c in configs.values() if "value_template" in c]
    assert entities
    for c in entities:
        assert c["state_topic"] in last, f"{c['unique_id']}: nothing published on {c['state_topic']}"
        shown = render(c["value_template"], last[c["state_topic"]])  # raises on a field never published
        if "options" in c:
            assert shown in c["options"], (c["unique_id"], shown, c["options"])
        if c.get("device_class") in ("power", "battery"):
            float(shown)  # a number (the simulated site has every reading)
    ids = {c["unique_id"] for c in entities}
    # every battery and every genset has its own entities
    for d in cfg.devices:
        if d.nature.value in ("battery", "genset"):
            assert any(i.startswith(f"powerctl_demo_m1_{d.name}_") for i in ids), (d.name, sorted(ids))
    state = last["pc/demo/m1/state"]
    stale = render(next(c for c in entities if c["unique_id"].endswith("_stale"))["value_template"], state)
    assert int(stale) == len(state["stale"])
