"""On-disk spool for line-protocol batches that could not be written yet.

A spool is a directory of segment files ``<seq>-<points>.lp``: each segment is one batch of lines,
written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves either
the whole segment or none of it. Segments are sent oldest first and deleted only after the server
accepted them. The spool survives restarts: a new ``Spool`` on the same directory picks the segments
up. The total size is bounded; when a new segment would exceed the bound the oldest segments are
deleted and their points counted as dropped.

A spool never takes the daemon down: a directory it cannot make or list (read-only remount, a full
disk) leaves it empty with ``unusable`` set (``append`` then raises ``OSError``, which the writer
turns into in-memory buffering); an entry it cannot delete or move (a segment path that is a
directory) is forgotten, logged and counted, never retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("powerctl.telemetry.spool")

_SEGMENT = re.compile(r"^(\d{12})-(\d+)\.lp$")


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    seq: int
    points: int
    size_bytes: int


def _fsync_dir(path: Path) -> None:
    # The rename or unlink is only durable once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Bounded, crash-safe FIFO of line-protocol segments in ``directory``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be > 0")
        self.dir = directory
        self.max_bytes = max_bytes
        self.dropped_points = 0
        self.unusable: str | None = None  # why the directory cannot be used (None: it can)
        # The writer thread and the shutdown path (event-loop thread) may both touch the spool.
        self._lock = threading.RLock()
        self._segments: list[Segment] = []
        self._bytes = self._points = 0
        self._next_seq = 1
        try:
            self._scan()
        except OSError as exc:
            self.unusable = f"{self.dir}: {exc.strerror or exc}"
            log.error("telemetry spool %s unusable: %s", self.dir, exc.strerror or exc)

    def _scan(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob(".tmp-*"):
            with contextlib.suppress(OSError):  # a crash mid-write: never acknowledged as spooled
                tmp.unlink(missing_ok=True)
        found = []
        for p in self.dir.iterdir():
            m = _SEGMENT.match(p.name)
            if m:
                with contextlib.suppress(OSError):  # vanished or unreadable: not ours to count
                    found.append(Segment(p, int(m.group(1)), int(m.group(2)), p.stat().st_size))
        self._segments = sorted(found, key=lambda s: s.seq)
        self._bytes = sum(s.size_bytes for s in self._segments)
        self._points = sum(s.points for s in self._segments)
        self._next_seq = max(self._next_seq, self._segments[-1].seq + 1 if self._segments else 1)

    # --- queries ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._segments)

    @property
    def points(self) -> int:
        return self._points

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def oldest(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    # --- changes ----------------------------------------------------------------------------

    def append(self, lines: list[str]) -> int:
        """Write one segment atomically; returns points dropped (old segments, or this one if too big)."""
        with self._lock:
            return self._append(lines)

    def _append(self, lines: list[str]) -> int:
        if not lines:
            return 0
        if self.unusable is not None:
            try:
                self._scan()
                self.unusable = None
            except OSError as exc:
                raise OSError(exc.errno, f"spool unusable: {self.unusable}") from None
        data = ("\n".join(lines) + "\n").encode()
        if len(data) > self.max_bytes:
            # A single batch larger than the whole spool: keep nothing rather than evict everything.
            self.dropped_points += len(lines)
            return len(lines)
        dropped = 0
        while self._segments and self.size_bytes + len(data) > self.max_bytes:
            dropped += self._remove(self._segments[0])
        seq = self._next_seq
        self._next_seq += 1
        final = self.dir / f"{seq:012d}-{len(lines)}.lp"
        tmp = self.dir / f".tmp-{seq:012d}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        self._segments.append(Segment(final, seq, len(lines), len(data)))
        self._bytes += len(data)
        self._points += len(lines)
        self.dropped_points += dropped
        return dropped

    def read(self, seg: Segment) -> bytes:
        return seg.path.read_bytes()

    def remove(self, seg: Segment) -> None:
        """Delete a segment after the server accepted it."""
        with self._lock:
            if seg in self._segments:
                self._remove(seg)
        with contextlib.suppress(OSError):
            _fsync_dir(self.dir)

    def _remove(self, seg: Segment) -> int:
        try:
            seg.path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. a directory where a segment should be, a read-only remount
            log.error("telemetry spool: cannot delete %s (%s): forgotten", seg.path, exc.strerror or exc)
        self._forget(seg)
        return seg.points

    def _forget(self, seg: Segment) -> None:
        self._segments.remove(seg)
        self._bytes -= seg.size_bytes
        self._points -= seg.points

    def set_aside(self, seg: Segment, reason: str) -> Path:
        """Move a segment the server rejected as malformed out of the queue (kept for inspection)."""
        with self._lock:
            target = self.dir / "rejected" / seg.path.name
            try:
                target = self._rejected_dir() / seg.path.name
                os.replace(seg.path, target)
                target.with_suffix(".reason").write_text(reason + "\n")
            except OSError as exc:
                log.error("telemetry spool: cannot set %s aside (%s): forgotten", seg.path, exc.strerror or exc)
            if seg in self._segments:
                self._forget(seg)
            return target

    def reject(self, lines: list[str], reason: str) -> Path:
        """Keep a batch the server refused as malformed for inspection, outside the send queue."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            target = self._rejected_dir() / f"{seq:012d}-{len(lines)}.lp"
            target.write_text("\n".join(lines) + "\n")
            target.with_suffix(".reason").write_text(reason + "\n")
            return target

    def _rejected_dir(self) -> Path:
        bad = self.dir / "rejected"
        bad.mkdir(exist_ok=True)
        return bad
