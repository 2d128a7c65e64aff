"""The daemon's HTTP surface and SCADA server against a running daemon and a simulated site over
real Modbus on loopback: health flips when a device goes stale and back, metrics parse with the
Prometheus text parser, the API shows every device, only GET exists, mbpoll reads the registers,
and a taken port stops the daemon with the address in the message."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from powerctl.config import SiteConfig, load_config
from powerctl.daemon import Daemon
from powerctl.io.modbus import BACKOFF_MAX_S
from powerctl.sim.devices import Fault
from powerctl.sim.plant.site import Plant
from powerctl.sim.serve import PlantGpus, SimSite
from tests.devices.test_mbpoll import mbpoll_read
from tests.foundation.test_end_to_end import demo_config, persistence_forecaster
from tests.servers import free_port


def site_with_surfaces(tmp_path: Path) -> SiteConfig:
    demo_config(tmp_path)
    text = (tmp_path / "site.toml").read_text()
    text += f"\n[http]\nport = {free_port()}\n\n[scada]\nport = {free_port()}\nunit_id = 5\n"
    (tmp_path / "site.toml").write_text(text)
    return load_config(tmp_path / "site.toml")


def get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, b"", ""


async def aget(url: str) -> tuple[int, bytes, str]:
    return await asyncio.to_thread(get, url)


async def until(pred, what: str, timeout_s: float = 60.0) -> Any:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while True:
            v = await pred()
            if v:
                return v
            await asyncio.sleep(0.2)
    raise AssertionError(what)


@asynccontextmanager
async def running_site(cfg: SiteConfig) -> AsyncIterator[tuple[Daemon, SimSite, str]]:
    plant = Plant(cfg, pv_kw_fn=lambda t: 180.0, t0_s=time.time(), soc0_pct=60.0)
    site = SimSite(cfg, plant)
    site_task = asyncio.create_task(site.run(time.time, tick_s=0.05))
    await asyncio.sleep(0.5)  # the simulated devices listen
    daemon = Daemon(cfg, gpu_backend=PlantGpus(plant), forecaster=persistence_forecaster(cfg), on_cycle=lambda st: None)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    assert cfg.http is not None
    try:
        yield daemon, site, f"http://127.0.0.1:{cfg.http.port}"
        # the simulated site must still be running: a crashed simulator is a failed test
        assert not site_task.done(), site_task.exception()
    finally:
        stop.set()
        await task
        site_task.cancel()
        await asyncio.gather(site_task, return_exceptions=True)


@pytest.mark.servers
@pytest.mark.timeout(400)
async def test_endpoints_health_metrics_and_scada_of_a_running_daemon(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = site_with_surfaces(tmp_path)
    # systemd's notify socket (Type=notify, WatchdogSec=2): READY once the guard ran, then pings
    sock_dir = tempfile.mkdtemp(prefix="pc-", dir="/tmp")  # AF_UNIX paths are short
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{sock_dir}/notify")
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", f"{sock_dir}/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    async with running_site(cfg) as (daemon, site, base):
        async def healthy() -> bool:
            code, _body, _ct = await aget(base + "/health")
            return code == 200

        await until(healthy, "health never became 200")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            first = await loop.sock_recv(notify, 256)
            second = await loop.sock_recv(notify, 256)
        assert first.startswith(b"READY=1") and second.startswith(b"WATCHDOG=1"), (first, second)
        code, body, ct = await aget(base + "/api/state")
        assert code == 200 and ct.startswith("application/json")
        state = json.loads(body)
        assert state["health"]["ok"] is True and state["mode"] == "plan"
        assert set(state["batteries"]) == {"bess"} and set(state["gensets"]) == {"gen1"}
        assert state["batteries"]["bess"]["soc_pct"] == pytest.approx(daemon.status.soc_pct, abs=1.0)
        assert set(state["classes"]) == {c.name for c in cfg.gpu.classes}
        assert 0.0 < state["pv_kw"] <= 181.0  # the plant's 180 kW, curtailed to what the site takes

        async def has_plan() -> dict | None:  # type: ignore[type-arg]
            code, body, _ = await aget(base + "/api/plan")
            return json.loads(body) if code == 200 else None

        plan = await until(has_plan, "no plan on /api/plan")
        assert len(plan["gpu_kw"]) == len(cfg.control.horizon_steps_s) == len(plan["step_start_s"])

        # powerctl status asks this daemon
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "powerctl.cli", "status", str(tmp_path / "site.toml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, (out, err)
        lines = out.decode().splitlines()
        assert any(ln.startswith("battery bess") and "%" in ln for ln in lines), lines
        assert any(ln.startswith("genset gen1") for ln in lines) and any(ln.startswith("health") and "ok" in ln for ln in lines)

        # the page is one self-contained document
        code, page, ct = await aget(base + "/")
        assert code == 200 and ct.startswith("text/html") and b"/api/state" in page and b"<script src" not in page

        # metrics: the official text format, parsed by the official parser
        code, text, ct = await aget(base + "/metrics")
        assert code == 200 and ct.startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
        guard = {s.name: s.value for s in fams["powerctl_guard_cycle_seconds"].samples}
        assert fams["powerctl_guard_cycle_seconds"].type == "histogram" and guard["powerctl_guard_cycle_seconds_count"] >= 5
        assert fams["powerctl_dispatch_cycle_seconds"].type == "histogram"
        plans = {s.labels.get("rung"): s.value for s in fams["powerctl_plans"].samples if s.name.endswith("_total")}
        assert sum(plans.values()) >= 1 and set(plans) <= {"primary", "secondary", "rule", "safe"}
        (stale,) = fams["powerctl_stale_signals"].samples
        assert stale.value == 0 and stale.labels == {"site": "demo", "module": "m1"}
        soc = {s.labels["device"]: s.value for s in fams["powerctl_battery_soc_pct"].samples}
        assert set(soc) == {"bess"}

        # read-only: nothing but GET
        req = urllib.request.Request(base + "/api/state", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            await asyncio.to_thread(urllib.request.urlopen, req, timeout=5)
        assert e.value.code == 405

        # SCADA: an independent Modbus client reads the site block
        assert cfg.scada is not None
        regs = await mbpoll_read(cfg.scada.port, 5, "input", 0, 30)
        assert regs[0] == 1 and regs[1] == 1 and regs[2] == 1  # map 1, mode plan, healthy
        pv_kw = ((regs[10] << 16) | regs[11]) / 10.0
        assert pv_kw == pytest.approx(daemon.status.pv_kw, abs=15.0)  # a cycle or two apart

        # the PV inverter stops answering: its signal goes stale and health says so
        site.sims["pv1"].fault = Fault.EXCEPTION  # every read refused: the signal goes stale

        async def unhealthy() -> dict | None:  # type: ignore[type-arg]
            code, body, _ = await aget(base + "/health")
            doc = json.loads(body) if code == 503 else None
            return doc if doc and any("pv1.p_kw" in r for r in doc["reasons"]) else None

        doc = await until(unhealthy, "health stayed 200 with a stale PV inverter")
        assert doc["ok"] is False and any("pv1.p_kw" in r for r in doc["reasons"]), doc
        site.sims["pv1"].fault = Fault.NONE

        async def pv_fresh() -> bool:
            code, body, _ = await aget(base + "/health")
            return code != 0 and "pv1.p_kw" not in body.decode()

        # fresh again within its poll period + the driver's backoff cap (powerctl/io/modbus.py),
        # plus 10 s for a loaded machine; then healthy once the guard and the plan follow
        await until(pv_fresh, "pv1.p_kw still stale after the inverter answered again",
                    timeout_s=cfg.device("pv1").poll_period_s + BACKOFF_MAX_S + 10.0)
        await until(healthy, "health did not recover after the inverter came back", timeout_s=60.0)
    notify.close()
    shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.timeout(120)
async def test_a_taken_http_port_stops_the_daemon_with_the_address(tmp_path: Path) -> None:
    cfg = site_with_surfaces(tmp_path)
    assert cfg.http is not None
    with socket.create_server(("127.0.0.1", cfg.http.port)):
        plant = Plant(cfg, t0_s=time.time())
        daemon = Daemon(cfg, gpu_backend=PlantGpus(plant), forecaster=persistence_forecaster(cfg), on_cycle=lambda st: None)
        with pytest.raises(OSError, match=rf"HTTP server: cannot listen on 127.0.0.1:{cfg.http.port}"):
            async with asyncio.timeout(30):
                await daemon.run(asyncio.Event())
    # it never left the safe cap
    assert max(plant.gpu.caps_w) <= cfg.gpu.safe_cap_w + 1e-6
