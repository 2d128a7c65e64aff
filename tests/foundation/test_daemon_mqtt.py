"""The daemon with a real Mosquitto: state and plan published, an operator command changes the loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from powerctl.config import load_config
from tests.foundation.test_end_to_end import _run, demo_config
from tests.servers import Mosquitto

pytestmark = pytest.mark.servers


@pytest.mark.timeout(120)
async def test_daemon_publishes_and_obeys_a_hold_command(tmp_path: Path, mosquitto: Mosquitto) -> None:
    base = demo_config(tmp_path)
    text = Path(tmp_path / "site.toml").read_text()  # noqa: ASYNC240
    text += f'\n[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\ntopic_prefix = "pc"\ncommand_lease_s = 30\n'
    text += "allow_unsigned_commands = true\n"  # a trusted test broker (signed commands: tests/security)
    (tmp_path / "site.toml").write_text(text)
    cfg = load_config(tmp_path / "site.toml")
    assert cfg.mqtt is not None and base.site.id == cfg.site.id
    received: dict[str, list[dict]] = {"state": [], "plan": [], "result": []}

    async def listen(client: aiomqtt.Client) -> None:
        sent = False
        async for msg in client.messages:
            topic = str(msg.topic)
            payload = bytes(msg.payload)  # type: ignore[arg-type]
            for kind in ("state", "plan", "result"):
                if topic.endswith("/" + kind):
                    received[kind].append(json.loads(payload))
            if not sent and len(received["state"]) >= 3:
                await client.publish("pc/demo/m1/commands/mode/set", b"hold")
                await client.publish("pc/demo/m1/commands/gpu_budget_max_kw/set", b"5000")
                sent = True

    async def operator() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="op") as client:
            await client.subscribe("pc/demo/m1/#")
            try:
                async with asyncio.timeout(9.0):  # the daemon runs for 8 s
                    await listen(client)
            except TimeoutError:
                pass

    op = asyncio.create_task(operator())
    _daemon, _plant, _site, _caps = await _run(cfg, seconds=8.0, pv_kw_fn=lambda t: 200.0)
    await op
    assert received["state"], "no state published"
    assert {"pv_kw", "soc_pct", "mode", "available_kw"} <= set(received["state"][-1])
    assert received["plan"] and len(received["plan"][-1]["gpu_kw"]) == len(cfg.control.horizon_steps_s)
    results = {r["command"]: r for r in received["result"]}
    assert results["mode"]["accepted"] is True
    assert results["gpu_budget_max_kw"]["accepted"] is False
    assert "out of range" in results["gpu_budget_max_kw"]["reason"]
    assert any(s["mode"] == "hold" for s in received["state"]), [s["mode"] for s in received["state"]]
