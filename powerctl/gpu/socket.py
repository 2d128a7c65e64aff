"""The ``socket`` backend: the unprivileged daemon asks the privileged cap-setter over a Unix socket.

``gpu.backend = "socket"`` in the daemon's config; ``powerctl capsetter`` (root, its own config)
listens on ``gpu.socket_path``. Protocol: ``powerctl.capsetter`` (one JSON line per request and per
reply). Blocking calls with a timeout on every send and receive, like the NVML backend they stand in
for: the guard calls the backend synchronously and each call is a local round trip of ~0.1 ms.
A broken connection is reopened once per call (the cap-setter may have restarted); if that fails too
the call raises ``GpuError`` naming the socket, which the guard logs and retries next cycle.
A cap the cap-setter refuses comes back as ``CapResult(ok=False, message=<its reason>)``.
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any

from powerctl.gpu.base import CapResult, GpuError, GpuInfo

# Where the cap-setter listens when the config names no ``gpu.socket_path``.
DEFAULT_SOCKET_PATH = "/run/powerctl/capsetter.sock"
MAX_REPLY_BYTES = 1 << 20  # a list of 1000 GPUs is ~150 kB


class SocketGpus:
    """GPU backend that forwards every call to the cap-setter (see module docstring)."""

    name = "socket"

    def __init__(self, path: str, *, timeout_s: float = 2.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._infos: list[GpuInfo] | None = None

    # --- transport ----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            hint = " (is powerctl-capsetter.service running?)" if isinstance(exc, FileNotFoundError | ConnectionRefusedError) else ""
            if isinstance(exc, PermissionError):
                hint = " (is this user in the socket's group, gpu.socket_group?)"
            raise GpuError(f"cap-setter socket {self.path}: {exc.strerror or exc}{hint}") from None
        self._buf.clear()
        return s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _readline(self, s: socket.socket) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > MAX_REPLY_BYTES:
                raise GpuError(f"cap-setter socket {self.path}: reply over {MAX_REPLY_BYTES} bytes")
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("the cap-setter closed the connection")
            self._buf += chunk

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, one reply (a dict with ``ok``); reconnects once if the connection broke."""
        line = json.dumps(request, allow_nan=False, separators=(",", ":")).encode() + b"\n"
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(line)
                raw = self._readline(self._sock)
                break
            except TimeoutError:
                self.close()
                raise GpuError(f"cap-setter socket {self.path}: no reply within {self.timeout_s:g} s") from None
            except OSError as exc:  # reset, broken pipe: the cap-setter restarted; try a fresh connection
                self.close()
                if attempt == 2:
                    raise GpuError(f"cap-setter socket {self.path}: {exc.strerror or exc}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            self.close()
            raise GpuError(f"cap-setter socket {self.path}: reply is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise GpuError(f"cap-setter socket {self.path}: malformed reply")
        return reply

    def _read(self, request: dict[str, Any], key: str) -> float:
        reply = self.call(request)
        if not reply["ok"]:
            raise GpuError(f"cap-setter: {reply.get('error', 'refused')}")
        v = reply.get(key)
        return math.nan if v is None else float(v)

    # --- GpuBackend ---------------------------------------------------------------------------

    def list_gpus(self) -> list[GpuInfo]:
        if self._infos is None:
            reply = self.call({"op": "list"})
            if not reply["ok"]:
                raise GpuError(f"cap-setter: {reply.get('error', 'refused')}")
            try:
                self._infos = [
                    GpuInfo(int(g["index"]), str(g["name"]), str(g["uuid"]), float(g["min_w"]), float(g["max_w"]),
                            float(g["default_w"]))
                    for g in reply["gpus"]
                ]
            except (KeyError, TypeError, ValueError):
                raise GpuError(f"cap-setter socket {self.path}: malformed GPU list") from None
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        return self._read({"op": "power", "gpu": index}, "w")

    def read_energy_j(self, index: int) -> float:
        return self._read({"op": "energy", "gpu": index}, "j")

    def read_limits_w(self, index: int) -> tuple[float, float]:
        reply = self.call({"op": "limits", "gpu": index})
        if not reply["ok"]:
            raise GpuError(f"cap-setter: {reply.get('error', 'refused')}")
        req, enf = reply.get("requested_w"), reply.get("enforced_w")
        return (math.nan if req is None else float(req), math.nan if enf is None else float(enf))

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        if not math.isfinite(cap_w):
            return CapResult(index, cap_w, None, None, False, f"GPU {index}: refusing to send a non-finite cap")
        reply = self.call({"op": "set", "gpu": index, "w": float(cap_w)})

        def num(key: str) -> float | None:
            v = reply.get(key)
            return None if v is None else float(v)

        if "requested_w" not in reply:  # refused before reaching the driver
            return CapResult(index, cap_w, None, None, False, f"cap-setter refused: {reply.get('error', '?')}")
        return CapResult(index, float(reply["requested_w"]), num("readback_w"), num("enforced_w"), reply["ok"],
                         str(reply.get("message") or reply.get("error") or ""), bool(reply.get("outside_limit")))
