"""Telemetry against a real VictoriaMetrics on loopback (InfluxDB v2 write API, read back by export).

VictoriaMetrics stands in for InfluxDB, which cannot be installed from this project's package
sources. Unless a test says otherwise the server keeps duplicates (no dedup), so a point the client
sent twice would show up twice: "exactly once" is checked for real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from powerctl.config import Influx
from powerctl.config import Telemetry as TelemetryCfg
from powerctl.telemetry import Telemetry
from tests.servers import VictoriaMetrics, or_missing

pytestmark = pytest.mark.servers

T0 = 1_700_000_000.0  # fixed, so expected timestamps are exact


def start_vm(path: Path, *, dedup: bool = False) -> VictoriaMetrics:
    vm = or_missing(lambda: VictoriaMetrics(path, dedup=dedup))
    vm.start()
    return vm


def make_tel(url: str, spool: Path, **kw: float) -> Telemetry:
    cfg = TelemetryCfg(influx=Influx(url=url, org="ops", bucket="powerctl", spool_dir=str(spool),
                                     batch_size=5000, flush_interval_s=0.2))
    return Telemetry(cfg, "site1", "mod1", spool.parent, **kw)  # type: ignore[arg-type]


async def stop(task: asyncio.Task[None], tel: Telemetry) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tel.close()


def timestamps_ms(vm: VictoriaMetrics, metric: str) -> dict[str, list[int]]:
    """device -> sorted sample timestamps (ms) of one metric."""
    return {s["metric"]["device"]: sorted(s["timestamps"]) for s in vm.export(f'{{__name__="{metric}"}}')}


async def test_100k_points_arrive_exactly_once(tmp_path: Path) -> None:
    vm = start_vm(tmp_path / "vm")
    try:
        tel = make_tel(vm.url, tmp_path / "spool")
        task = asyncio.create_task(tel.run())
        for i in range(10_000):
            for d in range(10):
                tel.emit("pv", {"p_kw": i + d / 100}, T0 + i * 0.001, device=f"inv{d}")
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the writer run, as the control loop would
        await tel.flush()
        st = tel.stats()
        assert (st["emitted"], st["written"], st["spooled"], st["dropped"]) == (100_000, 100_000, 0, 0)
        series = vm.export('{__name__="pv_p_kw"}')
        assert sorted(s["metric"]["device"] for s in series) == [f"inv{d}" for d in range(10)]
        for s in series:
            assert s["metric"]["site"] == "site1" and s["metric"]["module"] == "mod1"
            d = int(s["metric"]["device"][3:])
            got = sorted(zip(s["timestamps"], s["values"], strict=True))
            assert got == [(1_700_000_000_000 + i, pytest.approx(i + d / 100)) for i in range(10_000)]
        await stop(task, tel)
    finally:
        vm.stop()


async def test_server_down_30s_mid_stream_and_daemon_restart_lose_and_double_nothing(tmp_path: Path) -> None:
    """Stream; stop the server for 30 s; restart the daemon during the outage (spool on disk);
    bring the server back; every point arrives exactly once."""
    vm = start_vm(tmp_path / "vm")
    spool = tmp_path / "spool"
    k = 0

    async def stream(tel: Telemetry, seconds: float) -> None:
        nonlocal k
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(40):  # 5 devices x 40 steps every 50 ms = 4000 points/s
                for d in range(5):
                    tel.emit("battery", {"p_kw": float(k), "soc_pct": 50.0}, T0 + k * 0.001, device=f"b{d}")
                k += 1
            await asyncio.sleep(0.05)

    try:
        tel = make_tel(vm.url, spool, retry_max_s=2.0, spool_after_s=1.0)
        task = asyncio.create_task(tel.run())
        await stream(tel, 2.0)
        outage_start = time.monotonic()
        await asyncio.to_thread(vm.stop)
        await stream(tel, 10.0)
        assert tel.stats()["spool_points"] > 0
        await stop(task, tel)  # daemon restart in the middle of the outage
        spooled_before = tel.stats()["spool_points"]
        assert spooled_before > 0

        tel = make_tel(vm.url, spool, retry_max_s=2.0, spool_after_s=1.0)
        assert tel.stats()["spool_points"] == spooled_before  # the new process found the spool
        task = asyncio.create_task(tel.run())
        await stream(tel, 30.0 - (time.monotonic() - outage_start))
        await asyncio.to_thread(vm.start)
        await stream(tel, 3.0)
        await tel.flush()
        st = tel.stats()
        assert st["spool_points"] == 0 and st["buffered"] == 0 and st["dropped"] == 0
        await stop(task, tel)

        expected = [1_700_000_000_000 + i for i in range(k)]
        # Every write was acknowledged (spool empty, nothing dropped); a just-restarted
        # VictoriaMetrics can take a moment to make acknowledged rows searchable, so read until
        # the counts settle (a loss or a double still fails the exact checks below).
        deadline = time.monotonic() + 20.0
        got = timestamps_ms(vm, "battery_p_kw")
        while time.monotonic() < deadline and any(len(ts) != k for ts in got.values()):
            await asyncio.sleep(1.0)
            got = timestamps_ms(vm, "battery_p_kw")
        assert sorted(got) == [f"b{d}" for d in range(5)]
        for dev, ts in got.items():
            assert len(ts) == k, f"{dev}: {len(ts)} samples, expected {k} (lost or doubled)"
            assert ts == expected, f"{dev}: timestamps differ from the stream"
        assert not list(spool.glob("*.lp"))
    finally:
        vm.stop()


async def test_restart_with_a_non_empty_spool_delivers_it(tmp_path: Path) -> None:
    vm = start_vm(tmp_path / "vm")
    spool = tmp_path / "spool"
    try:
        vm.stop()
        tel = make_tel(vm.url, spool)
        task = asyncio.create_task(tel.run())
        for i in range(3000):
            tel.emit("genset", {"p_kw": float(i)}, T0 + i * 0.001, device="g1")
        await tel.flush()
        await stop(task, tel)
        assert tel.stats()["spool_points"] == 3000 and tel.stats()["written"] == 0

        vm.start()
        tel2 = make_tel(vm.url, spool)
        task = asyncio.create_task(tel2.run())
        for _ in range(100):  # the background task alone must deliver it
            await asyncio.sleep(0.05)
            if tel2.stats()["spool_points"] == 0:
                break
        assert tel2.stats()["written"] == 3000
        await stop(task, tel2)
        assert timestamps_ms(vm, "genset_p_kw")["g1"] == [1_700_000_000_000 + i for i in range(3000)]
    finally:
        vm.stop()


async def test_a_resent_batch_does_not_double_on_an_idempotent_server(tmp_path: Path) -> None:
    """InfluxDB semantics (same series + timestamp = same point), given by dedup here: a batch whose
    acknowledgement was lost and that is sent again by a restarted daemon stays single."""
    vm = start_vm(tmp_path / "vm", dedup=True)
    try:
        for run in range(2):  # the second process re-sends exactly the same points
            tel = make_tel(vm.url, tmp_path / f"spool{run}")
            task = asyncio.create_task(tel.run())
            for i in range(500):
                tel.emit("gpu", {"cap_kw": 1.0 + i}, T0 + i * 0.001, device="pool", tags={"class": "train"})
            await tel.flush()
            await stop(task, tel)
        assert timestamps_ms(vm, "gpu_cap_kw")["pool"] == [1_700_000_000_000 + i for i in range(500)]
    finally:
        vm.stop()


async def test_spool_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    tel = make_tel("http://127.0.0.1:9", tmp_path / "spool")  # nothing listens on the discard port
    cfg_bound = int(0.05 * 1024 * 1024)
    tel.spool.max_bytes = cfg_bound  # type: ignore[union-attr]
    task = asyncio.create_task(tel.run())
    for i in range(20_000):
        tel.emit("meter", {"p_kw": float(i)}, T0 + i * 0.001, device="m1")
        if i % 1000 == 999:
            await tel.flush()
    st = tel.stats()
    await stop(task, tel)
    assert st["spool_bytes"] <= cfg_bound
    assert st["dropped"] > 0
    assert st["spool_points"] + st["dropped"] == 20_000


async def test_a_hung_server_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """The server accepts connections but never answers (SIGSTOP): writes time out in the worker
    thread while a 10 ms ticker on the loop keeps running."""
    vm = start_vm(tmp_path / "vm")
    assert vm.proc is not None
    try:
        tel = make_tel(vm.url, tmp_path / "spool", timeout_s=1.0)
        task = asyncio.create_task(tel.run())
        os.kill(vm.proc.pid, signal.SIGSTOP)
        ticks = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            tel.emit("site", {"load_kw": 1.0}, T0 + ticks * 0.01)
            ticks += 1
            await asyncio.sleep(0.01)
        os.kill(vm.proc.pid, signal.SIGCONT)
        assert ticks > 100  # ~190 expected; a blocked loop would manage a handful
        await tel.flush()
        assert tel.stats()["written"] + tel.stats()["spool_points"] >= ticks
        await stop(task, tel)
    finally:
        if vm.proc is not None:
            os.kill(vm.proc.pid, signal.SIGCONT)
        vm.stop()
