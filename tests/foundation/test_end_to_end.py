"""End to end: simulated devices over real Modbus TCP on loopback + the daemon, for a few seconds."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import SiteConfig, load_config
from powerctl.daemon import Daemon
from powerctl.sim.plant.site import Plant
from powerctl.sim.serve import PlantGpus, SimSite

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(tmp_path: Path, **control: object) -> SiteConfig:
    text = (ROOT / "examples" / "demo-site.toml").read_text()
    for port in (15020, 15021, 15022):
        text = text.replace(f"port = {port}", f"port = {free_port()}")
    text = text.replace('"run/', f'"{tmp_path}/run/')
    text = text.replace("mpc_period_s = 5.0", "mpc_period_s = 2.0")
    path = tmp_path / "site.toml"
    path.write_text(text)
    return load_config(path)


def persistence_forecaster(cfg: SiteConfig):  # type: ignore[no-untyped-def]
    def fc(now_s: float, image, steps_s: np.ndarray):  # type: ignore[no-untyped-def]
        pv = image.worst("pv1", "p_kw", now_s, high=250.0)
        n = len(steps_s)
        demand = np.array([[c.gpus * cfg.gpu.max_w / 1000.0] * n for c in cfg.gpu.classes])
        return np.full((1, n), pv), demand, np.zeros(n)

    return fc


async def _run(cfg: SiteConfig, seconds: float, pv_kw_fn=None):  # type: ignore[no-untyped-def]
    plant = Plant(cfg, pv_kw_fn=pv_kw_fn, t0_s=time.time(), soc0_pct=60.0)
    site = SimSite(cfg, plant)
    caps_seen: list[float] = []
    backend = PlantGpus(plant)
    real_set = backend.set_cap_w

    def recording_set(index: int, cap_w: float):  # type: ignore[no-untyped-def]
        caps_seen.append(cap_w)
        return real_set(index, cap_w)

    backend.set_cap_w = recording_set  # type: ignore[method-assign]
    daemon = Daemon(cfg, gpu_backend=backend, forecaster=persistence_forecaster(cfg), on_cycle=lambda st: None)
    site_task = asyncio.create_task(site.run(time.time, tick_s=0.05))
    await asyncio.sleep(0.3)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    try:
        await daemon.run(stop)
    finally:
        site_task.cancel()
        await asyncio.gather(site_task, return_exceptions=True)
    return daemon, plant, site, caps_seen


@pytest.mark.timeout(120)
async def test_loop_writes_setpoints_and_caps_within_limits(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path)
    daemon, plant, site, caps_seen = await _run(cfg, seconds=7.0, pv_kw_fn=lambda t: 150.0)
    st = daemon.status
    # the loop ran and planned with the primary solver
    assert st.cycles >= 4
    assert st.plan_rung in {"primary", "secondary"}, st.plan_rung
    # the battery setpoint went over Modbus to the simulated SMA inverter, inside its range
    bess_writes = [v for s, v in site.sims["bess"].writes if s == "p_set_kw"]
    assert bess_writes, "no battery setpoint was written over Modbus"
    lim = cfg.device("bess").limits
    assert all(-lim.max_charge_kw - 1e-6 <= v <= lim.max_discharge_kw + 1e-6 for v in bess_writes)
    # the genset got an explicit command (stop: PV covers the load)
    assert site.sims["gen1"].writes and site.sims["gen1"].writes[-1] == ("start_cmd", 0.0)
    # every cap ever sent was within the GPU range, and caps rose above the safe cap with PV available
    assert caps_seen and min(caps_seen) >= cfg.gpu.min_w - 1e-6 and max(caps_seen) <= cfg.gpu.max_w + 1e-6
    assert st.caps_w_max > cfg.gpu.safe_cap_w
    # on the way out every GPU went back to (at most) the safe cap
    assert np.all(plant.gpu.caps_w <= cfg.gpu.safe_cap_w + 1e-6)
    # the supply carried the load: nothing unserved in the plant
    assert plant.e["unserved"] == pytest.approx(0.0, abs=1e-3)
    # telemetry went to the line-protocol file
    lp = Path(cfg.telemetry.file or "").read_text()  # noqa: ASYNC240 (test, after the loop)
    assert "battery,device=bess,module=m1,site=demo " in lp and "soc_pct=" in lp
    assert "\nplan," in lp or lp.startswith("plan,")
