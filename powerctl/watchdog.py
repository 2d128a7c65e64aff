"""``powerctl watchdog``: a separate small process that puts GPUs at the safe cap when the daemon's
heartbeat stops.

The daemon touches ``control.heartbeat_path`` every cycle (``touch_heartbeat``: one ``utime``, which
needs no free disk space). The watchdog does not trust the file's mtime as a clock: it records the
file's identity (inode, mtime, ctime) and the *monotonic* time at which it last saw that identity
change. The heartbeat is stale when no change was seen for ``stale_after_s``. So an mtime set in the
future cannot blind it (the file must keep changing), and a wall-clock step cannot trip it. Only the
first look trusts an mtime, and only one in the past (a future one counts as stale).

When the daemon cannot touch the file (deleted, and a full or read-only disk will not let it make
it again) it stamps the heartbeat's directory instead: its *access* time set to a counter in a
marker range (1973, ``DIR_BEAT_BASE_S``), which needs no space and which nothing else writes (a
file created there moves the directory's mtime, not its atime; a reader moves atime out of the
range). While the file is missing the watchdog counts a new marker as a beat, so a live daemon on
a full disk is not fought every 30 s.

On a stale heartbeat it applies safe caps through ``powerctl.gpu.failsafe.failsafe_routes`` (with
``gpu.backend = "socket"``: NVML directly first, the cap-setter's socket second), re-applies them
every ``reapply_s`` while the heartbeat stays silent, retries every ``retry_s`` while no route
reaches the GPUs, and re-arms when the heartbeat comes back. It never raises a cap, so it is
harmless next to a healthy daemon. Run it as its own systemd unit (examples/systemd/).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import time
from pathlib import Path

from powerctl.config import ConfigError, SiteConfig, load_config
from powerctl.gpu.base import GpuBackend
from powerctl.gpu.failsafe import Route, apply_via, failsafe_routes

log = logging.getLogger("powerctl.watchdog")

Identity = tuple[str, int, int, int]
DIR_BEAT_BASE_S = 100_000_000  # 1973-03-03: the directory-stamp marker range [base, base + span)
DIR_BEAT_SPAN = 1_000_000
_dir_beats = itertools.count(1)


def touch_heartbeat(path: str | Path) -> bool:
    """Mark the daemon alive: utime the file (created on first use). When it can be neither touched
    nor made (full or read-only disk), utime its directory, which the watchdog also watches.
    Returns False when even that failed (the caller logs it)."""
    p = Path(path)
    try:
        os.utime(p)
        return True
    except FileNotFoundError:
        pass
    except OSError:
        return _touch_dir(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        return True
    except OSError:
        return _touch_dir(p)


def _touch_dir(p: Path) -> bool:
    try:
        st = os.stat(p.parent)
        beat_s = DIR_BEAT_BASE_S + next(_dir_beats) % DIR_BEAT_SPAN
        os.utime(p.parent, ns=(beat_s * 1_000_000_000, st.st_mtime_ns))  # mtime left as it was
        return True
    except OSError:
        return False


def heartbeat_identity(path: Path) -> tuple[Identity | None, float | None]:
    """(what changes when the daemon touches it, the file's mtime or None when it is missing)."""
    try:
        st = os.stat(path)
        return ("file", st.st_ino, st.st_mtime_ns, st.st_ctime_ns), st.st_mtime
    except OSError:
        pass
    try:
        st = os.stat(path.parent)
    except OSError:
        return None, None
    atime_s = st.st_atime_ns // 1_000_000_000
    if DIR_BEAT_BASE_S <= atime_s < DIR_BEAT_BASE_S + DIR_BEAT_SPAN:
        return ("dir", st.st_ino, st.st_atime_ns, 0), None
    return None, None  # a directory without the daemon's stamp says nothing


class HeartbeatMonitor:
    """Age of the heartbeat by the watchdog's own monotonic clock (see the module docstring)."""

    def __init__(self, path: Path, started_s: float) -> None:
        self.path = path
        self.started_s = started_s
        self._seen: Identity | None = None
        self._changed_s: float | None = None  # monotonic time of the last change we saw
        self._first = True

    def age_s(self, now_s: float, now_wall_s: float) -> float:
        ident, mtime = heartbeat_identity(self.path)
        if self._first:
            self._first = False
            self._seen = ident
            if mtime is not None:
                # first look: a past mtime says how old it is; a future one is not believed
                self._changed_s = now_s - (now_wall_s - mtime) if mtime <= now_wall_s + 1.0 else -math.inf
            return now_s - (self._changed_s if self._changed_s is not None else self.started_s)
        if ident != self._seen:
            self._seen = ident
            if ident is not None:  # the file, or (file missing) its directory: only the daemon writes there
                self._changed_s = now_s
        return now_s - (self._changed_s if self._changed_s is not None else self.started_s)


def default_stale_after_s(cfg: SiteConfig) -> float:
    """Generous enough for a slow solve, short enough that the battery is not drained at full load."""
    return max(3.0, 5.0 * cfg.control.dispatch_period_s)


class Watchdog:
    """The decision part, callable step by step (tests) or in a loop (``main_watchdog``).
    Times passed to ``step`` are the watchdog's monotonic clock."""

    def __init__(self, cfg: SiteConfig, backend: GpuBackend | None = None, *, stale_after_s: float | None = None,
                 reapply_s: float = 30.0, retry_s: float = 2.0, started_s: float | None = None,
                 routes: list[Route] | None = None) -> None:
        self.cfg = cfg
        if routes is None:
            routes = failsafe_routes(cfg) if backend is None else [Route(backend.name, lambda: backend)]
        self.routes = routes
        self.path = Path(cfg.control.heartbeat_path)
        self.stale_after_s = stale_after_s if stale_after_s is not None else default_stale_after_s(cfg)
        self.reapply_s = reapply_s
        self.retry_s = min(retry_s, reapply_s)
        self.heartbeat = HeartbeatMonitor(self.path, started_s if started_s is not None else time.monotonic())
        self.tripped_at: float | None = None
        self.last_apply: float | None = None
        self.last_ok = False
        self.trips = 0
        self._logged: set[str] = set()

    def step(self, now_s: float, now_wall_s: float | None = None) -> bool:
        """One check; returns True when safe caps were applied (or tried) in this step."""
        wall = time.time() if now_wall_s is None else now_wall_s
        age = self.heartbeat.age_s(now_s, wall)
        if age <= self.stale_after_s:
            if self.tripped_at is not None:
                log.warning("heartbeat back after %.1f s: watchdog re-armed", now_s - self.tripped_at)
            self.tripped_at = None
            return False
        if self.cfg.control.observe_only:
            # commissioning: powerctl writes nothing, this process included (the GPUs are someone
            # else's to cap until observe_only is off); say what it would do, once per trip
            if self.tripped_at is None:
                self.tripped_at = now_s
                self.trips += 1
                log.error("heartbeat %s silent for %.1f s (> %.1f s): control.observe_only is on, so "
                          "the watchdog only reports; it would apply safe caps (%.0f W)",
                          self.path, age, self.stale_after_s, self.cfg.gpu.safe_cap_w)
            return False
        if self.tripped_at is None:
            self.tripped_at = now_s
            self.trips += 1
            self._logged.clear()
            log.error("heartbeat %s silent for %.1f s (> %.1f s): applying safe caps (%.0f W)",
                      self.path, age, self.stale_after_s, self.cfg.gpu.safe_cap_w)
        elif self.last_apply is not None and now_s - self.last_apply < (self.reapply_s if self.last_ok else self.retry_s):
            return False
        self.last_apply = now_s
        out = apply_via(self.routes, self.cfg.gpu.safe_cap_w)
        self.last_ok = out.ok
        for line in [*out.errors, *(r.message for r in out.results if not r.ok)]:
            if line not in self._logged:  # once per trip, not every retry
                self._logged.add(line)
                log.error("safe caps: %s", line)
        if not out.reached:
            log.error("safe caps: no route reached the GPUs; retrying every %.0f s", self.retry_s)
        return True


def main_watchdog(cfg_path: str | Path, *, stale_after_s: float | None = None, poll_s: float = 0.5,
                  reapply_s: float = 30.0) -> int:
    """Run the watchdog until SIGTERM/SIGINT. Returns the exit code (2 on a config error). A GPU
    route that does not work is logged and retried, never fatal: the watchdog must outlive it."""
    try:
        cfg = load_config(cfg_path)
    except ConfigError as exc:
        print(f"watchdog: {exc}")
        return 2
    dog = Watchdog(cfg, stale_after_s=stale_after_s, reapply_s=reapply_s)
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("watchdog on %s: safe cap %.0f W after %.1f s of silence, via %s",
             dog.path, cfg.gpu.safe_cap_w, dog.stale_after_s, " then ".join(r.name for r in dog.routes))
    while not stop:
        try:
            dog.step(time.monotonic())
        except Exception:  # a bug here must not end the second line of defence
            log.exception("watchdog step failed; going on")
        time.sleep(poll_s)
    return 0
