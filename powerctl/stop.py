"""The stop request of a long-running command: SIGTERM or SIGINT sets an event (systemd stops
with SIGTERM, a terminal with Ctrl-C); the command's own shutdown path then runs as usual."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets; call from inside the running event loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
