"""Commissioning: observe-only writes nothing; ``check --probe`` reads every device; profiles_dir.

The observe-only daemon runs against the simulated site over Modbus TCP on loopback (the fault
rig, tests/faults/harness.py): it polls, plans and dispatches, and the simulators see zero write
requests and the GPUs zero cap sets. The probe runs as the real CLI in a subprocess against the
same kind of simulated site served in the test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from powerctl.profiles import load_profile
from powerctl.profiles.library import available, site_profile
from powerctl.profiles.model import PROFILE_ROOT
from powerctl.sim.plant.site import Plant
from powerctl.sim.serve import SimSite
from tests.faults.harness import FaultRig, fault_config


def _write_requests(rig: FaultRig) -> int:
    return sum(1 for sim in rig.site.sims.values() for _fc, _a, _n, v in sim.request_log if v is not None)


async def test_observe_only_daemon_writes_nothing(tmp_path: Path) -> None:
    rig = FaultRig(fault_config(tmp_path, control={"observe_only": True}), pv_kw=60.0)
    caps_before = rig.plant.gpu.caps_w.copy()
    async with rig:
        # it reads and plans: the dispatcher runs on its plan with fresh data ...
        await rig.wait_for(lambda: any(c.mode == "plan" and not c.stale for c in rig.cycles), 30.0, "a planned cycle")
        # ... and knows what it would write: the battery setpoint and the GPU caps
        await rig.wait_for(lambda: "bess.p_set_kw" in rig.daemon.writes.would_write, 10.0, "a battery setpoint not written")
        await rig.wait_for(lambda: rig.daemon.gpu.sets > 0, 10.0, "a GPU cap not set")  # type: ignore[attr-defined]
        polls = {n: d.stats.polls for n, d in rig.daemon.devices.items()}
    assert all(n > 0 for n in polls.values()), polls
    assert _write_requests(rig) == 0  # not one write request reached any simulated device
    assert rig.writes == [] and rig.daemon.writes.written == {}
    assert rig.caps == []  # the GPU backend was never asked to set a cap (not at start, not at stop)
    assert (rig.plant.gpu.caps_w == caps_before).all()


async def test_check_probe_prints_every_device_and_writes_nothing(tmp_path: Path) -> None:
    cfg = fault_config(tmp_path)
    site = SimSite(cfg, Plant(cfg, pv_kw_fn=lambda _t: 55.0, t0_s=time.time(), soc0_pct=61.0))
    (tmp_path / "site.toml").write_text(_toml_of(tmp_path, cfg))
    await site.start()
    try:
        exe = shutil.which("powerctl", path=str(Path(sys.executable).parent)) or "powerctl"
        proc = await asyncio.create_subprocess_exec(
            exe, "check", "--probe", str(tmp_path / "site.toml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"},
        )
        async with asyncio.timeout(60):
            out_b, err_b = await proc.communicate()
    finally:
        await site.stop()
    out = out_b.decode()
    assert proc.returncode == 0, out + err_b.decode()
    for d in cfg.devices:
        line = next((ln for ln in out.splitlines() if ln.startswith(f"{d.name}  {d.profile}")), None)
        assert line is not None and line.endswith("OK"), out
    # the values the plant put into the registers, decoded by the probe
    assert "Bat_ChaStt" in out and any(ln.split()[:2] == ["Bat_ChaStt", "61"] for ln in out.splitlines()), out
    assert sum(1 for sim in site.sims.values() for _fc, _a, _n, v in sim.request_log if v is not None) == 0


def _toml_of(tmp_path: Path, cfg) -> str:  # type: ignore[no-untyped-def]
    """The rig's site config as a file the CLI can load (same devices and ports)."""
    import tomllib

    data = tomllib.loads((Path(__file__).parents[1] / "faults" / "site.toml").read_text())
    ports = {d.name: d.transport.port for d in cfg.devices}
    lines = (Path(__file__).parents[1] / "faults" / "site.toml").read_text()
    for d in data["devices"]:
        lines = lines.replace(f"port = {d['transport']['port']},", f"port = {ports[d['name']]},", 1)
    return lines.replace('state_dir = "run"', f'state_dir = "{tmp_path / "run"}"')


def test_profiles_dir_is_searched_before_the_shipped_library(tmp_path: Path) -> None:
    own = tmp_path / "profiles" / "victron"
    own.mkdir(parents=True)
    text = (PROFILE_ROOT / "victron" / "gx_modbus.yaml").read_text().replace("unit_id: 227", "unit_id: 228")
    (own / "gx_modbus.yaml").write_text(text)
    (tmp_path / "profiles" / "acme").mkdir()
    (tmp_path / "profiles" / "acme" / "bess.yaml").write_text((PROFILE_ROOT / "sunspec" / "storage.yaml").read_text())
    site = site_profile("victron/gx_modbus", tmp_path / "profiles")
    assert site.setpoint("EssL1PowerSetpoint").unit_id == 228
    assert site.path == own / "gx_modbus.yaml"
    assert load_profile("victron/gx_modbus").setpoint("EssL1PowerSetpoint").unit_id == 227  # shipped untouched
    assert site_profile("sma/sunny_island", tmp_path / "profiles").path == PROFILE_ROOT / "sma" / "sunny_island.yaml"
    listed = {(a.key, a.shipped): a for a in available(tmp_path / "profiles")}
    assert ("acme/bess", False) in listed and ("victron/gx_modbus", False) in listed
    assert listed[("victron/gx_modbus", True)].shadowed and not listed[("sma/sunny_island", True)].shadowed


@pytest.mark.parametrize("folder", [None, "missing"])
def test_profiles_list_without_a_site_folder_is_the_shipped_library(tmp_path: Path, folder: str | None) -> None:
    got = available(None if folder is None else tmp_path / folder)
    assert all(a.shipped for a in got) and {a.key for a in got} >= {"sunspec/storage", "victron/gx_modbus"}
