"""A small ``powerctl sim serve`` for the restart test: serves a config's devices from a simulated
plant over Modbus TCP and keeps a log the test can read while the daemon is killed and restarted.

    python -m tests.restart.sim_runner site.toml OUT_DIR [--pv-kw 150] [--genset-running] [--soc 60]

``OUT_DIR/writes.jsonl``: one line per setpoint write the devices took, with the wall time and the
genset status at that moment (flushed per line). ``OUT_DIR/plant.json``: the plant's state every
tick (written atomically). The plant's GPUs follow the caps in ``gpu.sim_state_file`` (what the
daemon's simulated backend writes), so the load follows the daemon's caps across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

import numpy as np

from powerctl.config import load_config
from powerctl.sim.plant.genset import GensetStatus
from powerctl.sim.plant.site import Plant
from powerctl.sim.serve import SimSite


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (start-up, before serving)
    plant = Plant(cfg, pv_kw_fn=lambda _t: args.pv_kw, t0_s=time.time(), soc0_pct=args.soc)
    if args.genset_running:
        for g in plant.gensets.values():
            g.command(True)
            g.status = GensetStatus.RUNNING
    site = SimSite(cfg, plant)
    log = open(out / "writes.jsonl", "a", buffering=1)  # noqa: ASYNC230 (start-up; line-buffered log)

    def recorder(name: str, inner):  # type: ignore[no-untyped-def]
        def on_write(sig: str, value: float) -> None:
            gens = {n: int(g.status) for n, g in plant.gensets.items()}
            log.write(json.dumps({"t": time.time(), "device": name, "signal": sig, "value": value,
                                  "genset_status": gens}) + "\n")
            inner(sig, value)
        return on_write

    for name, sim in site.sims.items():
        sim.on_write = recorder(name, sim.on_write)
    state_file = Path(cfg.gpu.sim_state_file) if cfg.gpu.sim_state_file else None
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("serving", flush=True)
    try:
        while not stop.is_set():
            if state_file is not None:
                try:
                    caps = json.loads(state_file.read_text())["caps_w"]
                    plant.set_gpu_caps_w(np.asarray(caps, dtype=float))
                except (OSError, ValueError, KeyError):
                    pass
            site.step(time.time())
            snap = {
                "t": time.time(),
                "soc_pct": {n: b.soc_pct for n, b in plant.batteries.items()},
                "genset_status": {n: int(g.status) for n, g in plant.gensets.items()},
                "genset_starts": {n: g.starts for n, g in plant.gensets.items()},
                "genset_run_time_s": {n: g.run_time_s for n, g in plant.gensets.items()},
                "unserved_kwh": plant.e["unserved"],
            }
            _atomic_write(out / "plant.json", json.dumps(snap))
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass
    finally:
        await site.stop()
        log.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--pv-kw", type=float, default=150.0)
    ap.add_argument("--soc", type=float, default=60.0)
    ap.add_argument("--genset-running", action="store_true")
    asyncio.run(main(ap.parse_args()))
