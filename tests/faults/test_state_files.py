"""A bad ``leases.json`` in the state directory must not stop the daemon starting (issue 12): deep
nesting (RecursionError), a symlink to /dev/zero (endless), a FIFO (blocks), a huge file. Each
means "no lease" and one log line naming the file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from powerctl.mqtt.commands import CommandLimits, CommandState

ROOT = Path(__file__).resolve().parents[2]
LIMITS = CommandLimits(10.0, 100.0, 10.0, 90.0)


def load(path: Path) -> CommandState:
    return CommandState(LIMITS, 60.0, time.time, path)


def test_a_good_lease_file_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    now = time.time()
    path.write_text(json.dumps({"leases": {"mode": {"value": "hold", "set_at_s": now, "expires_at_s": now + 30}}}))
    assert load(path).mode() == "hold"


@pytest.mark.parametrize("make", ["nested", "huge", "fifo"])
def test_bad_lease_file_means_no_lease_and_a_named_log_line(tmp_path: Path, make: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "leases.json"
    if make == "nested":
        path.write_text('{"leases": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif make == "huge":
        path.write_text('{"leases": {}, "pad": "' + "x" * (4 << 20) + '"}')
    else:
        os.mkfifo(path)  # nobody writes: a plain open would block forever
    with caplog.at_level(logging.WARNING, logger="powerctl.mqtt.commands"):
        state = load(path)
    assert state.active() == {}
    assert any(str(path) in r.getMessage() and "no lease" in r.getMessage() for r in caplog.records), caplog.text


def test_lease_file_linked_to_dev_zero_does_not_hang_the_start(tmp_path: Path) -> None:
    """In a subprocess with a deadline: on the old code this read never ends (and grows without bound)."""
    path = tmp_path / "leases.json"
    os.symlink("/dev/zero", path)
    code = ("import sys, time, logging; logging.basicConfig(level=logging.WARNING)\n"
            "from powerctl.mqtt.commands import CommandLimits, CommandState\n"
            "s = CommandState(CommandLimits(10.0, 100.0, 10.0, 90.0), 60.0, time.time, sys.argv[1])\n"
            "print('started', s.active())\n")
    # the old code's read of /dev/zero grows without bound: cap the child's memory
    out = subprocess.run([sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n{code}",
                          str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started {}" in out.stdout
    assert str(path) in out.stderr and "symlink" in out.stderr
