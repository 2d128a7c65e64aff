"""Genset commands on the wire, against the register-level simulator on a real pymodbus server.

- ComAp IGS-NT base load: ExtValue1 at the register the site names (``devices.registers``), one
  fc16 write of the kW the dispatcher asks for, and the simulated genset holding it; without the
  site's register number nothing is written (the default-archive number is only an example);
- Woodward easYgen-3000XT start/stop: control word 1 (PDU 503), start bit then stop bit;
- a ``registers`` entry that names nothing in the profile is a config error naming file, device
  and field (``powerctl check``), not a traceback.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import parse_config
from powerctl.control.core import Commands
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.port import apply_write
from powerctl.sim.plant.site import Plant
from powerctl.writes import WriteQueue
from tests.devices.conftest import make_driver, served

ROOT = Path(__file__).resolve().parents[2]
DEMO = tomllib.loads((ROOT / "examples" / "demo-site.toml").read_text())


def _writes(sim: DeviceSimulator) -> list[tuple[int, int, list[int]]]:
    return [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]


def _comap_site() -> dict:  # type: ignore[type-arg]
    data = copy.deepcopy(DEMO)
    gen = next(d for d in data["devices"] if d["nature"] == "genset")
    gen.update(profile="comap/intelisys_nt", registers={"ExtValue1": 391})
    return data


async def test_comap_base_load_goes_to_the_site_s_extvalue1_and_the_genset_holds_it() -> None:
    cfg = parse_config(_comap_site())
    plant = Plant(cfg, pv_kw_fn=lambda t: 0.0, other_load_kw=20.0, genset_start_delay_s=0.0, genset_cooldown_s=0.0)
    plant.set_gpu_caps_w(np.full(plant.gpu.n, cfg.gpu.min_w))
    plant.set_genset_run("gen1", True)
    while not plant.genset_running("gen1"):
        plant.step(plant.t_s + 10.0)
        assert plant.t_s < 3600.0, "the simulated genset never started"
    profile = load_profile("comap/intelisys_nt").for_site({"ExtValue1": 391}, "devices.gen1")
    sim = DeviceSimulator(profile, unit_id=1, on_write=lambda s, v: apply_write(plant, Nature.GENSET, "gen1", s, v))
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("gen1", profile, srv.port, 1, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            sim.request_log.clear()
            queue = WriteQueue({"gen1": dev})
            queue.commands(Commands(t_s=0.0, genset_run={"gen1": True}, genset_kw={"gen1": 48.0}))
            async with asyncio.timeout(10):
                while "gen1.p_set_kw" not in queue.written:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            # one fc16 write of 48 (kW) to the site's register; no start word (IGS-NT: not mapped)
            assert _writes(sim) == [(16, 391, [48])]
            assert sim.writes == [("p_set_kw", 48.0)]
        finally:
            dev.close()
    for _ in range(10):
        plant.step(plant.t_s + 1.0)
    assert plant.genset_kw("gen1") == pytest.approx(48.0)  # held, the battery takes the rest
    assert plant.battery_kw("bess") == pytest.approx(plant.load_kw - 48.0, abs=0.01)


async def test_without_the_site_s_register_number_no_base_load_is_written() -> None:
    shipped = load_profile("comap/intelisys_nt")
    assert [s.name for s in shipped.setpoints if s.site_address] == ["ExtValue1"]
    profile = shipped.for_site({}, "devices.gen1")  # the site did not name it
    sim = DeviceSimulator(shipped, unit_id=1)  # a device that would take a write at 391
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("gen1", profile, srv.port, 1, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            assert not dev.supports("p_set_kw")
            sim.request_log.clear()
            queue = WriteQueue({"gen1": dev})
            queue.commands(Commands(t_s=0.0, genset_kw={"gen1": 48.0}))
            async with asyncio.timeout(10):  # the writer task runs, finds no setpoint, says so once
                await queue._tasks["gen1"]
            assert ("gen1", "p_set_kw") in queue._unsupported
            assert _writes(sim) == [] and queue.written == {}
        finally:
            dev.close()


async def test_easygen_start_and_stop_go_to_control_word_1() -> None:
    profile = load_profile("woodward/easygen_3000xt")
    sim = DeviceSimulator(profile, unit_id=1)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("gen1", profile, srv.port, 1, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            assert image.get("gen1", "p_kw", dev.clock()).value == pytest.approx(0.0)
            sim.request_log.clear()
            assert (await dev.write_signal("start_cmd", 1.0)).ok
            assert (await dev.write_signal("start_cmd", 0.0)).ok
            assert _writes(sim) == [(16, 503, [0x0001]), (16, 503, [0x0002])]  # bit 0 start, bit 1 stop
            assert sim.writes == [("start_cmd", 1.0), ("start_cmd", 0.0)]
        finally:
            dev.close()


async def test_a_registers_entry_the_profile_does_not_have_is_a_named_config_error(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "demo-site.toml").read_text()
    assert text.count('profile = "dse/gencomm"') == 1
    text = text.replace('profile = "dse/gencomm"', 'profile = "comap/intelisys_nt"\nregisters = { ExtValue9 = 394 }')
    (tmp_path / "site.toml").write_text(text)
    exe = shutil.which("powerctl", path=str(Path(sys.executable).parent)) or "powerctl"
    proc = await asyncio.create_subprocess_exec(
        exe, "check", str(tmp_path / "site.toml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 2, text
    assert "site.toml: devices[2].registers.ExtValue9:" in text, text  # file and field path
    assert "ExtValue1" in text  # what it could have named
    assert "Traceback" not in text, text
