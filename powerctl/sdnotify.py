"""systemd readiness and watchdog notifications (sd_notify(3)), over the socket, no dependency.

``$NOTIFY_SOCKET`` names a datagram socket (a path, or ``@name`` in the abstract namespace);
without it (not started by systemd with ``Type=notify``) every call is a no-op. ``$WATCHDOG_USEC``
is the watchdog interval systemd expects pings within. The daemon sends ``READY=1`` once the
guard has run for the first time and ``WATCHDOG=1`` only from a guard cycle that really ran, so a
loop that hangs stops pinging and systemd restarts the service (WatchdogSec in
examples/systemd/powerctl.service).
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        e = os.environ if env is None else env
        addr = e.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        usec = e.get("WATCHDOG_USEC", "")
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self.ready = False
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram with ``fields`` (``KEY=value`` lines); False if there is no socket or it failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                # never wait: this runs on the guard's event loop, and a receiver that does not read
                # (systemd busy, a test's socket) fills its queue (net.unix.max_dgram_qlen, 10): with
                # a 1 s timeout every ping then stalled the loop ~1 s, devices went stale (issue 12)
                s.setblocking(False)
                s.connect(self.address)
                s.sendall("\n".join(fields).encode())
        except OSError:
            return False
        return True

    def guard_ran(self, status: str = "") -> None:
        """Call after each guard cycle that really ran: READY=1 the first time, then WATCHDOG=1 at
        most four times per watchdog interval (or once a second when systemd set none)."""
        now = time.monotonic()
        if not self.ready:
            self.ready = self.send("READY=1", f"STATUS={status or 'guard running'}")
            self._last_ping = now
            return
        interval = (self.watchdog_s / 4.0) if self.watchdog_s else 1.0
        if now - self._last_ping >= interval:
            self._last_ping = now
            self.send("WATCHDOG=1", *((f"STATUS={status}",) if status else ()))

    def stopping(self) -> None:
        self.send("STOPPING=1")
