"""The fail-safe with ``gpu.backend = "socket"`` must not depend on the cap-setter: with it stopped,
not started yet (boot) or busy, ``powerctl apply-safe-caps`` and ``powerctl watchdog`` still put
every GPU at the safe cap (issue 12 part 3, issue 13 item 4), and when no route reaches the GPUs
they say so in one line and exit non-zero, never with a traceback. Real processes; the simulated
GPUs keep their caps in a file, as a driver would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from powerctl.capsetter import MAX_CONNECTIONS
from powerctl.config import load_config
from tests.procs import reap, start_watchdog, stop_cleanly
from tests.security.test_capsetter import ROOT, CapSetterProc, held_connection, site_toml


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "powerctl.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def safe_caps(cs: CapSetterProc) -> list[float]:
    cfg = load_config(cs.config)
    return [cfg.gpu.safe_cap_w] * cfg.gpu.count


def test_apply_safe_caps_with_the_capsetter_stopped(tmp_path: Path) -> None:
    cs = CapSetterProc(tmp_path)  # never started: the boot order puts safe caps first
    out = run_cli("apply-safe-caps", str(cs.config))
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.returncode == 0, out.stdout + out.stderr
    assert cs.caps_in_state_file() == safe_caps(cs)


def test_apply_safe_caps_through_the_socket_when_the_direct_route_fails(tmp_path: Path) -> None:
    cs = CapSetterProc(tmp_path)
    cs.start()
    try:
        holders = [held_connection(cs.sock) for _ in range(2)]
        # this host's own driver is unreachable (real pynvml, no GPU): the socket is the way
        cfg = site_toml(tmp_path, "unpriv.toml", f'backend = "socket"\ncapsetter_backend = "nvml"\nsocket_path = "{cs.sock}"',
                        max_w=400.0)
        out = run_cli("apply-safe-caps", str(cfg))
        assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert out.returncode == 0, out.stdout + out.stderr
        assert cs.caps_in_state_file() == safe_caps(cs)
        for h in holders:
            h.close()
    finally:
        cs.stop()


def test_no_route_is_one_clear_error_and_exit_2(tmp_path: Path) -> None:
    cfg = site_toml(tmp_path, "nothing.toml",
                    f'backend = "socket"\ncapsetter_backend = "nvml"\nsocket_path = "{tmp_path / "absent.sock"}"')
    out = run_cli("apply-safe-caps", str(cfg))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    assert "absent.sock" in text and "no route reached the GPUs" in text, text


def test_watchdog_with_the_capsetter_busy_then_stopped(tmp_path: Path) -> None:
    cs = CapSetterProc(tmp_path)
    cs.start()
    held = [held_connection(cs.sock) for _ in range(MAX_CONNECTIONS)]  # every slot an idle client could take
    dog = start_watchdog(cs.config, stale_after_s=1.0, poll_s=0.05, reapply_s=0.5)
    try:
        # no heartbeat ever: the watchdog trips and sets the safe cap without the cap-setter
        end = time.monotonic() + 60
        while cs.caps_in_state_file() != safe_caps(cs) and time.monotonic() < end and dog.poll() is None:
            time.sleep(0.05)
        assert cs.caps_in_state_file() == safe_caps(cs)
        for h in held:
            h.close()
        cs.stop()
        # a tool raises the caps while the cap-setter is down: the re-apply still lands
        tmp = cs.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"caps_w": [400.0] * len(safe_caps(cs))}))
        os.replace(tmp, cs.state)
        end = time.monotonic() + 60
        while cs.caps_in_state_file() != safe_caps(cs) and time.monotonic() < end and dog.poll() is None:
            time.sleep(0.05)
        assert cs.caps_in_state_file() == safe_caps(cs)
        assert dog.poll() is None, "the watchdog died"
        stop_cleanly(dog)
    finally:
        reap(dog)
        if cs.proc is not None and cs.proc.poll() is None:
            cs.stop()
