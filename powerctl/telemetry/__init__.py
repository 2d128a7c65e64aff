"""Telemetry: every value the daemon sees or decides, as InfluxDB line protocol.

``Telemetry.emit`` formats one point and appends it to an in-memory buffer: no I/O, never raises
on I/O, safe to call from the control loop. ``Telemetry.run`` is the background task that writes
batches:

- no ``[telemetry.influx]``: appended to the line-protocol file ``telemetry.file``;
- with ``[telemetry.influx]``: posted to the InfluxDB v2 write API (``/api/v2/write``) with the
  synchronous ``influxdb-client`` in one worker thread, so a slow or dead server never blocks the
  event loop. A batch the server does not take (unreachable, timeout, 5xx, 401/403, 429) goes to an
  on-disk ``Spool`` and is re-sent, oldest first, when the server is back. Lines are encoded
  deterministically (sorted tags and fields, integer ns timestamps), so a re-sent point has the
  same series and timestamp and overwrites itself instead of doubling.

Telemetry never takes control down: when the spool cannot be written (read-only remount, full disk,
a directory where a segment should be) the batches are kept in memory instead, bounded by
``max_buffer_points`` (oldest dropped, counted), logged once when it starts and once when it ends;
an unexpected error in a flush is logged once and the writer goes on.

On cancellation the buffer is written synchronously (file, or spool) before ``run`` re-raises, so a
clean stop loses nothing; a spool left behind is delivered by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any

from powerctl import config
from powerctl.telemetry.lineproto import FieldValue, format_line, format_tags
from powerctl.telemetry.spool import Segment, Spool

__all__ = ["Telemetry"]

log = logging.getLogger("powerctl.telemetry")


class _Outcome(Enum):
    OK = "ok"
    RETRY = "retry"  # keep it, try again later (server away or refusing for now)
    REJECT = "reject"  # the server says the data itself is bad: retrying cannot help


# HTTP statuses that mean "this batch is malformed": set aside instead of retried forever.
_POISON_STATUS = frozenset({400, 422})


def _resolve(path: str) -> Path:
    """A configured path; relative paths are taken from the current directory."""
    return Path(path).expanduser().resolve()


def _read_token(influx: config.Influx) -> str | None:
    if influx.token:
        return influx.token
    if influx.token_file:
        try:
            return _resolve(influx.token_file).read_text().strip() or None
        except OSError as exc:
            log.error("telemetry.influx.token_file %s: cannot read: %s", influx.token_file, exc)
    return None


class Telemetry:
    """Non-blocking point sink with a background writer; see the module docstring."""

    def __init__(
        self,
        cfg: config.Telemetry,
        site: str,
        module: str,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buffer_points: int = 500_000,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
        timeout_s: float = 5.0,
        spool_after_s: float = 5.0,
    ) -> None:
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self._clock = clock
        self._base_tags = {"site": site, "module": module}
        self._tag_cache: dict[str | None, str] = {}
        self._buf: list[str] = []
        self._held: list[str] = []  # spool unusable: batches kept here (worker thread, under _lock)
        self._spool_down: str | None = None  # why, logged once
        self._flush_errors: set[str] = set()  # unexpected flush errors already logged
        self._buf_since = 0.0
        self._max_buffer = max(1, max_buffer_points)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._timeout_s = timeout_s
        self._spool_after_s = spool_after_s
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._outage = False
        self._wake: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None  # run() and flush() must not drain the spool twice
        self._lock = threading.Lock()  # counters touched by the worker thread and the loop thread
        self._counts = dict.fromkeys(
            ("emitted", "written", "spooled", "dropped", "dropped_fields", "rejected", "write_errors"), 0
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telemetry")
        influx = cfg.influx
        self.batch_size = influx.batch_size if influx else 5000
        self.flush_interval_s = influx.flush_interval_s if influx else max(cfg.period_s, 0.2)
        self.file: Path | None = None
        self.spool: Spool | None = None
        self._client: Any = None
        self._write_api: Any = None
        if influx is not None:
            self.spool = Spool(_resolve(influx.spool_dir), int(influx.spool_max_mb * 1024 * 1024))
            self._open_client(influx)
        elif cfg.file:
            self.file = _resolve(cfg.file)
            self.file.parent.mkdir(parents=True, exist_ok=True)

    def _open_client(self, influx: config.Influx) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        # retries=False: retrying is ours (spool + backoff); urllib3 retries would block the worker.
        self._client = InfluxDBClient(
            url=influx.url, token=_read_token(influx) or "", org=influx.org,
            timeout=int(self._timeout_s * 1000), retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    # --- producer side (control loop) --------------------------------------------------------

    def emit(
        self,
        measurement: str,
        fields: Mapping[str, FieldValue],
        ts_s: float,
        device: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one point. Tags always carry site and module (and device when given).

        Non-finite floats are left out and counted (``dropped_fields``); a point with no field left
        is counted as ``dropped``. Never blocks and never raises on I/O.
        """
        if tags:
            all_tags = {**tags, **self._base_tags}
            if device is not None:
                all_tags["device"] = device
            tags_text = format_tags(all_tags)
        else:
            tags_text = self._tag_cache.get(device) or self._device_tags(device)
        try:
            line, bad = format_line(measurement, tags_text, fields, ts_s)
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. a non-numeric timestamp
            log.warning("telemetry: point %s dropped: %s", measurement, exc)
            line, bad = None, 0
        with self._lock:
            self._counts["emitted"] += 1
            self._counts["dropped_fields"] += bad
            if line is None:
                self._counts["dropped"] += 1
                return
        buf = self._buf
        if not buf:
            self._buf_since = self._clock()
        buf.append(line)
        if len(buf) > self._max_buffer:
            # The writer cannot keep up at all: shed the oldest, counted, rather than grow without bound.
            n = len(buf) - self._max_buffer
            del buf[:n]
            self._count("dropped", n)
        if len(buf) >= self.batch_size and self._wake is not None:
            self._wake.set()

    def _device_tags(self, device: str | None) -> str:
        tags = dict(self._base_tags)
        if device is not None:
            tags["device"] = device
        text = format_tags(tags)
        if len(self._tag_cache) < 10_000:
            self._tag_cache[device] = text
        return text

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        """Counters: emitted, written, spooled, dropped, dropped_fields, rejected, write_errors,
        plus the current buffered points and spool size (points, bytes)."""
        with self._lock:
            out = dict(self._counts)
        out["buffered"] = len(self._buf) + len(self._held)
        if self.spool is not None:
            out["spool_points"] = self.spool.points
            out["spool_bytes"] = self.spool.size_bytes
            out["dropped"] += self.spool.dropped_points
        return out

    # --- writer side --------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until cancelled; on cancel, write what is buffered (file or spool) and re-raise."""
        self._wake = asyncio.Event()
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races
                # with the event being set, and run() would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self._flush(force=False)
                except Exception as exc:  # telemetry must never end the daemon: log once, go on
                    key = type(exc).__name__
                    if key not in self._flush_errors:
                        self._flush_errors.add(key)
                        log.exception("telemetry: flush failed (%s); going on", exc)
        except asyncio.CancelledError:
            self._flush_sync()
            raise
        finally:
            self._pool.shutdown(wait=False)

    async def flush(self) -> None:
        """Write everything buffered now and try the spool once, ignoring the retry backoff."""
        await self._flush(force=True)

    def _take(self, n: int | None = None) -> list[str]:
        buf = self._buf
        if n is None or n >= len(buf):
            self._buf = []
            return buf
        batch = buf[:n]
        del buf[:n]
        return batch

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def _flush(self, *, force: bool) -> None:
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            await self._flush_locked(force=force)

    async def _flush_locked(self, *, force: bool) -> None:
        with self._lock:
            held, self._held = self._held, []
        if held:  # what the spool could not take comes first (it is older)
            self._buf[:0] = held
            if not self._buf_since:
                self._buf_since = self._clock()
        if self.spool is None:
            if self._buf and self.file is not None:
                await self._in_worker(self._append_file, self._take())
            elif self._buf:
                self._count("dropped", len(self._take()))  # telemetry switched off (no file, no influx)
            return
        now = self._clock()
        if not force and now < self._retry_at:
            # Server away: keep small batches in memory a little, then spool them (fewer files).
            if self._buf and (len(self._buf) >= self.batch_size or now - self._buf_since >= self._spool_after_s):
                while self._buf:
                    await self._in_worker(self._spool_lines, self._take(self.batch_size))
            return
        ok = await self._drain_spool()
        while self._buf:
            batch = self._take(self.batch_size)
            if not ok:
                await self._in_worker(self._spool_lines, batch)
                continue
            ok = await self._in_worker(self._send_batch, batch) is not _Outcome.RETRY
        self._after_attempt(ok)

    async def _drain_spool(self) -> bool:
        """Send spooled segments oldest first; False when the server did not take one."""
        assert self.spool is not None
        while (seg := self.spool.oldest()) is not None:
            if await self._in_worker(self._send_segment, seg) is _Outcome.RETRY:
                return False
        return True

    def _after_attempt(self, ok: bool) -> None:
        if ok:
            if self._outage:
                log.warning("telemetry: InfluxDB writes resumed")
            self._outage = False
            self._backoff_s = 0.0
            self._retry_at = 0.0
            return
        if not self._outage:
            log.warning("telemetry: InfluxDB not taking writes; spooling to %s",
                        self.spool.dir if self.spool is not None else None)
        self._outage = True
        self._backoff_s = min(max(self._backoff_s * 2, self._retry_min_s), self._retry_max_s)
        self._retry_at = self._clock() + self._backoff_s

    # --- worker-thread jobs (blocking) --------------------------------------------------------

    def _post(self, body: bytes) -> _Outcome:
        from influxdb_client.client.write_api import WritePrecision
        from influxdb_client.rest import ApiException

        assert self.cfg.influx is not None
        try:
            self._write_api.write(
                bucket=self.cfg.influx.bucket, org=self.cfg.influx.org, record=body,
                write_precision=WritePrecision.NS,
            )
            return _Outcome.OK
        except ApiException as exc:
            self._count("write_errors")
            if exc.status in _POISON_STATUS:
                log.error("telemetry: server rejected a batch (%s): %s", exc.status, exc.message)
                return _Outcome.REJECT
            log.debug("telemetry: write refused (%s): %s", exc.status, exc.message)
            return _Outcome.RETRY
        except Exception as exc:  # urllib3 connection errors, timeouts, ...: all mean "later"
            self._count("write_errors")
            log.debug("telemetry: write failed: %s", exc)
            return _Outcome.RETRY

    def _send_batch(self, lines: list[str]) -> _Outcome:
        outcome = self._post("\n".join(lines).encode())
        if outcome is _Outcome.OK:
            self._count("written", len(lines))
        elif outcome is _Outcome.RETRY:
            self._spool_lines(lines)
        else:
            self._count("rejected", len(lines))
            assert self.spool is not None
            with contextlib.suppress(OSError):
                self.spool.reject(lines, "server rejected the batch as malformed")
        return outcome

    def _send_segment(self, seg: Segment) -> _Outcome:
        assert self.spool is not None
        try:
            body = self.spool.read(seg)
        except OSError as exc:
            log.error("telemetry: spool segment %s unreadable, dropped: %s", seg.path, exc)
            self.spool.remove(seg)
            self._count("dropped", seg.points)
            return _Outcome.OK
        outcome = self._post(body)
        if outcome is _Outcome.OK:
            self.spool.remove(seg)
            self._count("written", seg.points)
        elif outcome is _Outcome.REJECT:
            self.spool.set_aside(seg, "server rejected the segment as malformed")
            self._count("rejected", seg.points)
        return outcome

    def _spool_lines(self, lines: list[str]) -> None:
        assert self.spool is not None
        try:
            self.spool.append(lines)
            self._count("spooled", len(lines))
        except OSError as exc:
            self._hold(lines, f"{exc.strerror or exc}")
            return
        if self._spool_down is not None:
            log.warning("telemetry: spool %s writable again", self.spool.dir)
            self._spool_down = None

    def _hold(self, lines: list[str], why: str) -> None:
        """The spool cannot take ``lines``: keep them in memory (bounded), log once."""
        if self._spool_down is None:
            self._spool_down = why
            log.error("telemetry: cannot spool to %s (%s): keeping up to %d points in memory",
                      self.spool.dir if self.spool is not None else None, why, self._max_buffer)
        with self._lock:
            self._held.extend(lines)
            over = len(self._held) - self._max_buffer
            if over > 0:
                del self._held[:over]
                self._counts["dropped"] += over

    def _append_file(self, lines: list[str]) -> None:
        assert self.file is not None
        try:
            with open(self.file, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            self._count("written", len(lines))
        except OSError as exc:
            log.error("telemetry: cannot append to %s: %s", self.file, exc)
            self._count("dropped", len(lines))

    def _flush_sync(self) -> None:
        """Shutdown path: nothing buffered may be lost, and there is no loop time left to wait."""
        lines = self._take()
        if not lines:
            return
        if self.spool is not None:
            for i in range(0, len(lines), self.batch_size):
                self._spool_lines(lines[i : i + self.batch_size])
        elif self.file is not None:
            self._append_file(lines)
        else:
            self._count("dropped", len(lines))

    def close(self) -> None:
        """After ``run`` ended (or never started): write what is still buffered, release the client."""
        self._pool.shutdown(wait=True)
        self._flush_sync()
        if self._client is not None:
            self._client.close()
