"""A notify socket nobody reads (systemd busy, or a test that stopped reading) must not stall the
daemon: sd_notify runs on the guard's event loop (powerctl/sdnotify.py). With a 1 s send timeout
each WATCHDOG ping into the full queue blocked the loop ~1 s, and every device went stale (the
HTTP test's PV inverter "did not recover" for this reason, issue 12)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from powerctl.sdnotify import Notifier

SENDS = 40


def test_pings_into_a_full_notify_queue_are_dropped_not_waited_on() -> None:
    with tempfile.TemporaryDirectory(prefix="pc-", dir="/tmp") as d:  # AF_UNIX paths are short
        path = str(Path(d) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
            rx.bind(path)  # bound, never read: the queue fills after a few datagrams
            n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4"})
            t0 = time.monotonic()
            sent = [n.send("WATCHDOG=1") for _ in range(SENDS)]
            took_s = time.monotonic() - t0
            assert sent[0] and not sent[-1], sent  # the first ones queued; once full, dropped
            # a generous bound: 40 waits of 1 s each would take 40 s, non-blocking sends take ms
            assert took_s < SENDS / 4, f"{SENDS} sends into a full queue took {took_s:.1f} s"
            # and the queued ones are intact
            rx.setblocking(False)
            assert rx.recv(64) == b"WATCHDOG=1"
