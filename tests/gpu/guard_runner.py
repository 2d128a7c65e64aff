"""A tiny daemon stand-in for fail-safe tests: the guard loop on simulated GPUs whose caps live in
``gpu.sim_state_file``, a planner asking for max caps, PV and SoC kept fresh, a heartbeat touched
every guard cycle. SIGTERM cancels the guard, which must leave every GPU at the safe cap.

    python tests/gpu/guard_runner.py site.toml READY_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from powerctl.config import load_config
from powerctl.control.guard import Guard, GuardDecision
from powerctl.control.split import slots_from_pool
from powerctl.gpu.factory import make_backend
from powerctl.guard_task import guard_loop, run_guard
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.watchdog import touch_heartbeat


async def main(cfg_path: str, ready: Path) -> int:
    cfg = load_config(cfg_path)
    gpus = make_backend(cfg.gpu, clock=time.monotonic)
    slots = slots_from_pool(cfg.gpu, gpus.list_gpus())
    img = ProcessImage()
    img.declare("pv1", Nature.PV, "p_kw", 1.0)
    img.declare("bat1", Nature.BATTERY, "soc_pct", 1.0)

    async def acquisition() -> None:
        while True:
            now = time.monotonic()
            img.update("pv1", "p_kw", 25.0, now)
            img.update("bat1", "soc_pct", 80.0, now)
            await asyncio.sleep(0.1)

    def on_decision(_d: GuardDecision) -> None:
        touch_heartbeat(cfg.control.heartbeat_path)
        if not ready.exists():
            ready.write_text("ok")

    acq = asyncio.create_task(acquisition())
    guard = asyncio.create_task(run_guard(
        guard_loop(cfg, slots, img, gpus, {s.index: s.max_w for s in slots}, guard=Guard(cfg, slots),
                   clock=time.monotonic), gpus,
        clock=time.monotonic, on_decision=on_decision))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, guard.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await guard
    acq.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]))))
