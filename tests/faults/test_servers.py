"""Server faults: the MQTT broker and the time-series server going away (alone and together with a
dead PV inverter), and an operator lease across a clock step. Real Mosquitto and VictoriaMetrics
on loopback (tests/servers.py); the control loop must not notice, and after recovery telemetry is
complete and the state is published again."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.faults.harness import Fault, FaultRig, fault_config
from tests.servers import Mosquitto, VictoriaMetrics

pytestmark = [pytest.mark.faults, pytest.mark.servers, pytest.mark.timeout(120)]


def influx(tmp_path: Path, vm: VictoriaMetrics) -> dict[str, Any]:
    return {"file": None, "influx": {"url": vm.url, "org": "powerctl", "bucket": "faults",
                                     "spool_dir": str(tmp_path / "spool"), "flush_interval_s": 0.5}}


def mqtt(mq: Mosquitto) -> dict[str, Any]:
    # leases under faults, not authorisation (that is tests/security/test_mqtt_auth.py): a trusted broker
    return {"host": "127.0.0.1", "port": mq.port, "publish_period_s": 1.0, "command_lease_s": 30.0,
            "allow_unsigned_commands": True}


async def telemetry_drained(rig: FaultRig, timeout_s: float = 15.0) -> None:
    """Wait until nothing is spooled or buffered (everything the server was down for is sent)."""
    def drained() -> bool:
        st = rig.daemon.telemetry.stats()
        return st["spool_points"] == 0 and st["buffered"] < 200
    await rig.wait_for(drained, timeout_s, "telemetry spool drained")


def check_site_points(rig: FaultRig, vm: VictoriaMetrics, until: float) -> int:
    """Every dispatcher cycle's ``site`` point (up to monotonic ``until``) is in VictoriaMetrics."""
    series = vm.export('{__name__="site_caps_w_mean"}')
    got = {int(ts) for s in series for ts in s["timestamps"]}
    want = [c.t_s for c in rig.cycles if c.t <= until]
    missing = [t for t in want if not {math.floor(t * 1000) - 1, math.floor(t * 1000), math.floor(t * 1000) + 1} & got]
    assert not missing, f"{len(missing)} of {len(want)} site points missing, e.g. {missing[:3]}"
    return len(want)


async def next_state(mq: Mosquitto, rig: FaultRig, after_s: float, timeout_s: float) -> dict[str, Any]:
    """The first retained/live ``state`` message whose t_s is later than ``after_s`` (daemon clock)."""
    topic = f"{rig.cfg.mqtt.topic_prefix}/{rig.cfg.site.id}/{rig.cfg.site.module}/state"
    async with asyncio.timeout(timeout_s), aiomqtt.Client("127.0.0.1", mq.port) as client:
        await client.subscribe(topic)
        async for msg in client.messages:
            state = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            if state["t_s"] > after_s:
                return state
    raise AssertionError("unreachable")


async def test_timeseries_server_away(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    rig = FaultRig(fault_config(tmp_path, telemetry=influx(tmp_path, victoria)), pv_kw=60.0)
    async with rig:
        await rig.settled()
        victoria.stop()
        rig.mark("VictoriaMetrics down")
        await rig.sleep(5.0)
        assert rig.daemon.telemetry.stats()["spool_points"] > 0, "nothing spooled while the server was down"
        victoria.start()
        rig.mark("VictoriaMetrics up")
        await telemetry_drained(rig)
        t_check = time.monotonic() - 1.5
    rig.check_all()
    n = check_site_points(rig, victoria, t_check)
    print(f"{n} site points, all in VictoriaMetrics after the outage")


async def test_broker_away(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rig = FaultRig(fault_config(tmp_path, mqtt=mqtt(mosquitto)), pv_kw=60.0)
    async with rig:
        await rig.settled()
        await next_state(mosquitto, rig, 0.0, 5.0)  # publishing before the outage
        mosquitto.stop()
        rig.mark("broker down")
        await rig.sleep(4.0)
        assert not rig.daemon.mqtt.connected
        mosquitto.start()
        t_up = rig.clock()
        rig.mark("broker up")
        state = await next_state(mosquitto, rig, t_up, 12.0)
        assert state["mode"] == "plan"
    rig.check_all()


async def test_lease_across_clock_step(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """An operator GPU ceiling with a 4 s lease, then NTP steps the clock back an hour: the lease
    still ends 4 s (real time) after it was set, not an hour later."""
    rig = FaultRig(fault_config(tmp_path, mqtt=mqtt(mosquitto)), pv_kw=60.0)
    ceiling_kw = 45.0
    topic = f"{rig.cfg.mqtt.topic_prefix}/{rig.cfg.site.id}/{rig.cfg.site.module}/commands/gpu_budget_max_kw/set"
    async with rig:
        await rig.settled()
        await rig.wait_for(lambda: bool(rig.daemon.mqtt.connected), 5.0, "daemon connected to the broker")
        t_pub = time.monotonic()  # the lease starts after this and before t_set (a busy machine widens the gap)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish(topic, json.dumps({"value": ceiling_kw, "lease_s": 4.0}).encode(), qos=1)
        t_set = await rig.wait_for(lambda: rig.daemon.commands.gpu_budget_ceiling_kw() is not None, 5.0,
                                   "lease active")
        await rig.sleep(1.0)
        rig.clock.step(-3600.0)
        rig.mark("clock -3600 s")
        # the lease ends (the ceiling then climbs back at the slew rate: CommandState.for_site); the
        # bound only has to tell 4 s from the hour the step would add
        t_end = await rig.wait_for(lambda: "gpu_budget_max_kw" not in rig.daemon.commands.active(rig.clock()),
                                   60.0, "lease ended after its 4 s")
        await rig.sleep(1.0)
    rig.check_all()
    assert t_end - t_pub >= 4.0 - 0.3, t_end - t_pub  # not cut short by the step
    # while the lease ran, the dispatcher's GPU budget held to the ceiling
    during = [c for c in rig.cycles if t_set + 0.1 <= c.t <= t_end - 0.1]
    assert during and all(c.budget_kw <= ceiling_kw + 1e-6 for c in during), [c.budget_kw for c in during]
    assert rig.cycles[-1].budget_kw > ceiling_kw + 1.0  # and is lifted when the lease ends


async def test_everything_away_at_once(tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics) -> None:
    """PV inverter silent, broker and time-series server down together; all come back."""
    cfg = fault_config(tmp_path, mqtt=mqtt(mosquitto), telemetry=influx(tmp_path, victoria))
    rig = FaultRig(cfg, pv_kw=60.0)
    async with rig:
        await rig.settled()
        t_fault = rig.set_fault("pv1", Fault.NO_ANSWER)
        mosquitto.stop()
        victoria.stop()
        await rig.sleep(5.0)
        t_back = rig.set_fault("pv1", Fault.NONE)
        mosquitto.start()
        victoria.start()
        t_up = rig.clock()
        await rig.settled(8.0)
        await next_state(mosquitto, rig, t_up, 12.0)
        await telemetry_drained(rig)
        t_check = time.monotonic() - 1.5
    rig.check_all()
    rig.check_no_raise_between(t_fault + cfg.device("pv1").signal_max_age_s + cfg.control.guard_period_s, t_back)
    check_site_points(rig, victoria, t_check)
