"""Child processes of the process-level tests: the watchdog started as its systemd unit would run
it, and a clean stop (SIGTERM, exit 0, no traceback) or a kill on the way out of a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_watchdog(cfg_path: Path, **opts: float) -> subprocess.Popen[str]:
    """``main_watchdog(cfg_path, **opts)`` (stale_after_s, poll_s, reapply_s...) in its own process,
    output captured as text."""
    args = ", ".join(f"{k}={v!r}" for k, v in opts.items())
    return subprocess.Popen(
        [sys.executable, "-c",
         f"import sys; from powerctl.watchdog import main_watchdog; sys.exit(main_watchdog(sys.argv[1], {args}))",
         str(cfg_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def stop_cleanly(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    """SIGTERM; the process must exit 0 without a traceback. Returns its output."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0 and "Traceback" not in out, out
    return out


def reap(*procs: subprocess.Popen[str] | subprocess.Popen[bytes] | None) -> None:
    """Kill and wait for any of ``procs`` still running (a test's ``finally``)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
