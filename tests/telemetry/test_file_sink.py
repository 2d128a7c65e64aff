"""Telemetry without InfluxDB: a line-protocol file, written by the background task."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from powerctl.config import Telemetry as TelemetryCfg
from powerctl.telemetry import Telemetry


async def _stop(task: asyncio.Task[None], tel: Telemetry | None = None) -> None:
    """How the daemon stops telemetry: cancel the task, then close (flushes even if run never started)."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if tel is not None:
        tel.close()


async def test_points_reach_the_file_with_site_module_device_tags(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "dir" / "t.lp"
    tel = Telemetry(TelemetryCfg(file=str(out), period_s=0.05), "site-1", "mod a", tmp_path)
    task = asyncio.create_task(tel.run())
    tel.emit("battery", {"p_kw": -12.5, "soc_pct": 55.0}, 1000.0, device="bat1")
    tel.emit("site", {"load_kw": 80.0}, 1000.0, tags={"source": "guard"})
    for _ in range(100):
        await asyncio.sleep(0.02)
        if tel.stats()["written"] == 2:
            break
    assert out.read_text().splitlines() == [
        r"battery,device=bat1,module=mod\ a,site=site-1 p_kw=-12.5,soc_pct=55.0 1000000000000",
        r"site,module=mod\ a,site=site-1,source=guard load_kw=80.0 1000000000000",
    ]
    await _stop(task)


async def test_caller_tags_cannot_override_site_and_module(tmp_path: Path) -> None:
    out = tmp_path / "t.lp"
    tel = Telemetry(TelemetryCfg(file=str(out)), "s", "m", tmp_path)
    task = asyncio.create_task(tel.run())
    tel.emit("event", {"n": 1}, 1.0, device="d", tags={"site": "evil", "module": "evil", "kind": "x"})
    await _stop(task, tel)
    assert out.read_text() == "event,device=d,kind=x,module=m,site=s n=1i 1000000000\n"


async def test_cancel_flushes_everything_buffered(tmp_path: Path) -> None:
    out = tmp_path / "t.lp"
    tel = Telemetry(TelemetryCfg(file=str(out), period_s=3600), "s", "m", tmp_path)
    task = asyncio.create_task(tel.run())
    await asyncio.sleep(0)
    for i in range(1234):
        tel.emit("pv", {"p_kw": float(i)}, i * 0.001, device="inv")
    await _stop(task)
    assert len(out.read_text().splitlines()) == 1234
    assert tel.stats()["written"] == 1234


async def test_non_finite_values_never_written_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "t.lp"
    tel = Telemetry(TelemetryCfg(file=str(out)), "s", "m", tmp_path)
    task = asyncio.create_task(tel.run())
    tel.emit("pv", {"p_kw": math.nan, "e_kwh": 5.0}, 1.0)
    tel.emit("pv", {"p_kw": math.inf}, 2.0)
    await _stop(task, tel)
    assert out.read_text() == "pv,module=m,site=s e_kwh=5.0 1000000000\n"
    st = tel.stats()
    assert (st["emitted"], st["written"], st["dropped"], st["dropped_fields"]) == (2, 1, 1, 2)


async def test_relative_file_is_resolved_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tel = Telemetry(TelemetryCfg(file="run/telemetry.lp"), "s", "m", Path("run"))
    monkeypatch.chdir("/")  # later changes of directory must not move the file
    task = asyncio.create_task(tel.run())
    tel.emit("pv", {"p_kw": 1.0}, 1.0)
    await _stop(task, tel)
    assert (tmp_path / "run" / "telemetry.lp").read_text().startswith("pv,")


def test_emit_never_raises_on_bad_input(tmp_path: Path) -> None:
    tel = Telemetry(TelemetryCfg(file=str(tmp_path / "t.lp")), "s", "m", tmp_path)
    tel.emit("pv", {"p_kw": 1.0}, "not a time")  # type: ignore[arg-type]
    tel.emit("pv", {"x": object()}, 1.0)  # type: ignore[dict-item]
    tel.emit("", {"p_kw": 1.0}, 1.0)
    assert tel.stats()["dropped"] == 3
