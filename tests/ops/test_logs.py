"""Logs for journald: priorities, JSON lines, repeats held back and counted, sd_notify datagrams."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from pathlib import Path

from powerctl.logs import JournalFormatter, JsonFormatter, RepeatFilter, setup_logging, stderr_is_journal
from powerctl.sdnotify import Notifier


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _logger(stream: io.StringIO, clock: Clock) -> logging.Logger:
    log = logging.getLogger(f"t{id(stream)}")
    log.propagate = False
    h = logging.StreamHandler(stream)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    h.addFilter(RepeatFilter(60.0, clock))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    return log


def test_a_repeated_message_passes_once_a_window_and_says_how_often_it_came() -> None:
    out, clock = io.StringIO(), Clock()
    log = _logger(out, clock)
    for i in range(300):  # one write failure a cycle for 30 s
        clock.t = i * 0.1
        log.warning("write %s failed: %s", "bess.p_set_kw", f"timeout {i}")
    log.info("another message")
    clock.t = 61.0
    log.warning("write %s failed: %s", "bess.p_set_kw", "timeout")
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING write bess.p_set_kw failed: timeout 0"
    assert lines[1] == "INFO another message"
    assert lines[2] == "WARNING write bess.p_set_kw failed: timeout [repeated 299 times in 61 s]"
    assert len(lines) == 3


def test_journald_lines_carry_the_syslog_priority() -> None:
    fmt = JournalFormatter()
    rec = logging.LogRecord("powerctl", logging.WARNING, __file__, 1, "guard: %s", ("cut",), None)
    assert fmt.format(rec) == "<4>WARNING powerctl: guard: cut"
    rec = logging.LogRecord("powerctl", logging.INFO, __file__, 1, "a\nb", (), None)
    assert fmt.format(rec) == "<6>INFO powerctl: a\n<6>b"
    rec = logging.LogRecord("powerctl", logging.ERROR, __file__, 1, "x", (), None)
    assert fmt.format(rec).startswith("<3>")


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(f, {})


def test_json_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("powerctl.guard", logging.ERROR, __file__, 1, "n=%d", (3,), sys.exc_info())
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "n=3" and doc["level"] == "ERROR" and doc["priority"] == 3
    assert doc["logger"] == "powerctl.guard" and "ValueError: boom" in doc["exc"]


def test_setup_logging_json_to_a_stream() -> None:
    out = io.StringIO()
    setup_logging(json_lines=True, stream=out)
    try:
        logging.getLogger("powerctl").info("hello %s", "operator")
        assert json.loads(out.getvalue().splitlines()[-1])["msg"] == "hello operator"
    finally:
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)


def test_sd_notify_ready_once_then_watchdog_pings(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4"})  # 4 us: every call pings
        n.guard_ran("up")
        assert sock.recv(256) == b"READY=1\nSTATUS=up"
        n.guard_ran()
        assert sock.recv(256) == b"WATCHDOG=1"
        assert n.watchdog_s == 4e-6
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")
