"""``powerctl watchdog``: a separate small process that puts GPUs at the safe cap when the daemon's
heartbeat stops.

The daemon touches ``control.heartbeat_path`` every cycle (``touch_heartbeat``). The watchdog
looks at the file's mtime; when it is older than ``stale_after_s`` (or the file never appears
within that time of the watchdog starting) it applies safe caps, re-applies them every
``reapply_s`` while the heartbeat stays silent (a restarted driver or another tool may have raised
them), and re-arms when the heartbeat comes back. It never raises a cap, so it is harmless to run
next to a healthy daemon. Run it as its own systemd unit (examples/systemd/).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from powerctl.config import ConfigError, SiteConfig, load_config
from powerctl.gpu.base import GpuBackend, GpuError, make_backend
from powerctl.gpu.failsafe import apply_safe_caps_to

log = logging.getLogger("powerctl.watchdog")


def touch_heartbeat(path: str | Path) -> None:
    """Mark the daemon alive (cheap: one utime, or a create on first use)."""
    p = Path(path)
    try:
        os.utime(p)
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def heartbeat_age_s(path: str | Path, now_wall_s: float, started_wall_s: float) -> float:
    """Seconds since the last heartbeat; a missing file counts from the watchdog's start."""
    try:
        return now_wall_s - os.stat(path).st_mtime
    except FileNotFoundError:
        return now_wall_s - started_wall_s


def default_stale_after_s(cfg: SiteConfig) -> float:
    """Generous enough for a slow solve, short enough that the battery is not drained at full load."""
    return max(3.0, 5.0 * cfg.control.dispatch_period_s)


class Watchdog:
    """The decision part, callable step by step (tests) or in a loop (``main_watchdog``)."""

    def __init__(self, cfg: SiteConfig, backend: GpuBackend, *, stale_after_s: float | None = None,
                 reapply_s: float = 30.0, started_wall_s: float | None = None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.path = Path(cfg.control.heartbeat_path)
        self.stale_after_s = stale_after_s if stale_after_s is not None else default_stale_after_s(cfg)
        self.reapply_s = reapply_s
        self.started_wall_s = started_wall_s if started_wall_s is not None else time.time()
        self.tripped_at: float | None = None
        self.last_apply: float | None = None
        self.trips = 0

    def step(self, now_wall_s: float) -> bool:
        """One check; returns True when safe caps were applied in this step."""
        age = heartbeat_age_s(self.path, now_wall_s, self.started_wall_s)
        if age <= self.stale_after_s:
            if self.tripped_at is not None:
                log.warning("heartbeat back after %.1f s: watchdog re-armed", now_wall_s - self.tripped_at)
            self.tripped_at = None
            return False
        if self.tripped_at is None:
            self.tripped_at = now_wall_s
            self.trips += 1
            log.error("heartbeat %s silent for %.1f s (> %.1f s): applying safe caps (%.0f W)",
                      self.path, age, self.stale_after_s, self.cfg.gpu.safe_cap_w)
        elif self.last_apply is not None and now_wall_s - self.last_apply < self.reapply_s:
            return False
        self.last_apply = now_wall_s
        for r in apply_safe_caps_to(self.backend, self.cfg.gpu.safe_cap_w):
            if not r.ok:
                log.error("%s", r.message)
        return True


def main_watchdog(cfg_path: str | Path, *, stale_after_s: float | None = None, poll_s: float = 0.5,
                  reapply_s: float = 30.0) -> int:
    """Run the watchdog until SIGTERM/SIGINT. Returns the exit code (2 on a config/GPU error)."""
    try:
        cfg = load_config(cfg_path)
        backend = make_backend(cfg.gpu, clock=time.monotonic)
    except (ConfigError, GpuError) as exc:
        print(f"watchdog: {exc}")
        return 2
    dog = Watchdog(cfg, backend, stale_after_s=stale_after_s, reapply_s=reapply_s)
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("watchdog on %s: safe cap %.0f W after %.1f s of silence",
             dog.path, cfg.gpu.safe_cap_w, dog.stale_after_s)
    while not stop:
        dog.step(time.time())
        time.sleep(poll_s)
    return 0
