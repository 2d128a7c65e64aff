"""Logging an operator can live with: journald priorities, JSON lines, rate-limited repeats.

- Under systemd, stderr goes to journald (``$JOURNAL_STREAM`` names that stream): each line is
  prefixed ``<N>`` with its syslog priority (sd-daemon(3); journald strips the prefix and files
  the line at that priority, so a WARNING is a warning in ``journalctl -p warning``), and the
  timestamp is left to journald.
- ``--log-json``: one JSON object a line (``t``, ``level``, ``logger``, ``msg``, ``exc``).
- ``RepeatFilter``: the same message (same logger, level and format string) passes once per
  window; the next one after the window says how many were held back:
  ``... [repeated 300 times in 60 s]``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

REPEAT_WINDOW_S = 60.0
# syslog priorities by logging level (sd-daemon(3): SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (0, 7))
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    return next(p for lvl, p in _PRIORITY if levelno >= lvl)


class RepeatFilter(logging.Filter):
    """Let one record per (logger, level, format string) through per ``window_s``; count the rest."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (window start, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        start, held = self._seen.get(key, (None, 0))
        if start is not None and now - start < self.window_s:
            self._seen[key] = (start, held + 1)
            return False
        if len(self._seen) > 10_000:  # bounded: forget everything rather than grow without end
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [repeated {held} times in {now - start:.0f} s]"  # type: ignore[operator]
        return True


class JournalFormatter(logging.Formatter):
    """``<priority>`` prefix for journald's stream parser; no timestamp (journald keeps one)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = syslog_priority(record.levelno)
        # every line of a multi-line record (a traceback) at the record's priority
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "t": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "priority": syslog_priority(record.levelno),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def stderr_is_journal(stream: TextIO | None = None, env: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald stream systemd named in ``$JOURNAL_STREAM`` (dev:inode)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def formatter_for(json_lines: bool, journal: bool) -> logging.Formatter:
    if json_lines:
        return JsonFormatter()
    return JournalFormatter() if journal else logging.Formatter(TEXT_FORMAT)


def setup_logging(verbose: bool = False, json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Configure the root logger once for a command (replaces any handler set before)."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_for(json_lines, stderr_is_journal(out)))
    if not verbose:  # with -v every line counts
        handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the status page polls every second
