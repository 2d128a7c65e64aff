"""Operator command leases survive a restart: kept in ``control.state_dir/leases.json``, written
atomically (a kill -9 mid-write leaves the old or the new file, never half of one)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from powerctl.mqtt.commands import CommandLimits, CommandState

LIMITS = CommandLimits(38.4, 134.4, 10.0, 95.0)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_leases_resume_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    clock = Clock()
    a = CommandState(LIMITS, 60.0, clock, state_path=path)
    assert a.set("gpu_budget_max_kw", 50.0).accepted
    assert a.set("mode", "hold", lease_s=10.0).accepted
    clock.t += 5.0
    b = CommandState(LIMITS, 60.0, clock, state_path=path)  # the restarted daemon
    assert b.gpu_budget_ceiling_kw() == 50.0
    assert b.mode() == "hold"
    assert b.active()["gpu_budget_max_kw"].expires_at_s == a.active()["gpu_budget_max_kw"].expires_at_s
    clock.t += 6.0  # the 10 s mode lease has run out; the ceiling has not
    c = CommandState(LIMITS, 60.0, clock, state_path=path)
    assert c.mode() == "auto" and c.gpu_budget_ceiling_kw() == 50.0
    c.set("gpu_budget_max_kw", None)  # cleared: gone for the next start too
    assert CommandState(LIMITS, 60.0, clock, state_path=path).active() == {}


def test_lease_never_longer_than_its_maximum_after_restart(tmp_path: Path) -> None:
    """The clock stepped back between runs: a stored expiry far ahead is cut to lease_s from now."""
    path = tmp_path / "leases.json"
    clock = Clock()
    CommandState(LIMITS, 60.0, clock, state_path=path).set("gpu_budget_max_kw", 50.0)
    clock.t -= 3600.0
    b = CommandState(LIMITS, 60.0, clock, state_path=path)
    assert b.active()["gpu_budget_max_kw"].expires_at_s <= clock.t + 60.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"leases": 5}',
        '{"leases": {"gpu_budget_max_kw": {"value": 9999, "set_at_s": 0, "expires_at_s": 1e12}}}',
        '{"leases": {"mode": {"value": "turbo", "set_at_s": 0, "expires_at_s": 1e12}}}',
        '{"leases": {"bogus": {"value": 1, "set_at_s": 0, "expires_at_s": 1e12}}}',
        '{"leases": {"mode": {"value": "hold"}}}',
    ],
)
def test_bad_lease_file_means_no_command(tmp_path: Path, text: str) -> None:
    path = tmp_path / "leases.json"
    path.write_text(text)
    st = CommandState(LIMITS, 60.0, Clock(), state_path=path)
    assert st.active() == {}


_WRITER = """
import itertools, sys, time
from powerctl.mqtt.commands import CommandLimits, CommandState
st = CommandState(CommandLimits(38.4, 134.4, 10.0, 95.0), 60.0, time.time, state_path=sys.argv[1])
print("ready", flush=True)
for i in itertools.count():
    st.set("gpu_budget_max_kw", 40.0 + i % 90)
    st.set("battery_reserve_pct", 10.0 + i % 80)
"""


def test_kill_9_mid_write_leaves_a_whole_file(tmp_path: Path) -> None:
    """A process rewriting leases as fast as it can, killed -9 at random moments: the file left
    behind always parses and holds leases a new daemon takes."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = tmp_path / "leases.json"
    root = Path(__file__).resolve().parents[2]
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=root,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        doc = json.loads(path.read_text())  # whole JSON, never a torn write
        assert set(doc["leases"]) <= {"gpu_budget_max_kw", "battery_reserve_pct"}
        st = CommandState(LIMITS, 60.0, time.time, state_path=path)
        assert st.gpu_budget_ceiling_kw() is not None
