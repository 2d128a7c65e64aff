"""Real servers on loopback for tests and benchmarks: Mosquitto and VictoriaMetrics.

Plain context managers (usable from pytest fixtures, from ``bench/`` and from a REPL)::

    with VictoriaMetrics(tmp_path / "vm") as vm:      # vm.url, vm.export(), vm.stop(), vm.start()
        ...
    certs = make_test_pki(tmp_path / "pki")          # CA + server cert + an unrelated CA, via openssl
    with Mosquitto(tmp_path / "mq", certs=certs) as mq:  # mq.port (anonymous), mq.auth_port,
        ...                                          # mq.tls_port (TLS + password), mq.users

Each binary is looked up with ``find_binary``; a missing one raises ``ServerMissing``, which
``tests/conftest.py`` turns into a skip with the reason printed, or a failure when ``CI=true``.
Everything binds 127.0.0.1 only and lives in the caller's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "mosquitto")
MOSQUITTO_PASSWD_CANDIDATES = ("/usr/bin/mosquitto_passwd", "mosquitto_passwd")
VICTORIA_CANDIDATES = ("/usr/bin/victoria-metrics", "victoria-metrics", "victoria-metrics-prod")
OPENSSL_CANDIDATES = ("/usr/bin/openssl", "openssl")
T = TypeVar("T")


class ServerMissing(RuntimeError):
    """A server binary (or a tool to set it up) is not installed here."""


def skip_or_fail(exc: ServerMissing) -> None:
    """For pytest: skip (reason printed) or, when CI=true, fail. A missing server is never silent."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a test server is missing: {exc}")
    print(f"SKIP: {exc}")
    pytest.skip(str(exc))


def or_missing(make: Callable[[], T]) -> T:
    """``make()`` (a server, a binary's path); a ``ServerMissing`` goes to ``skip_or_fail``."""
    try:
        return make()
    except ServerMissing as exc:
        skip_or_fail(exc)
        raise


def find_binary(candidates: tuple[str, ...], package: str) -> str:
    for c in candidates:
        found = c if os.path.isabs(c) and os.access(c, os.X_OK) else shutil.which(c)
        if found:
            return found
    raise ServerMissing(f"{candidates[0]} not found (install the Debian package {package!r})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class _Process:
    """One server process with start/stop that keep its ports and data (for outage tests)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"
        self._served = False  # has it listened once (its ports are then known to clients)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready_port(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        for attempt in range(3):
            log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            try:
                wait_port(self.ready_port(), proc=self.proc)
                self._served = True
                return
            except Exception as exc:
                self.stop()
                taken = "address already in use" in self.log_path.read_bytes()[log_from:].decode(errors="replace").lower()
                # free_port() only says a port was free a moment ago: another test's server can
                # take it first. A first start moves to new ports; a restart keeps its own (an
                # outage test's clients know them) and fails
                if taken and not self._served and attempt < 2 and self.new_ports():
                    continue
                raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log_tail()}") from None

    def new_ports(self) -> bool:
        """Pick new free ports (before the first successful start); False where a server cannot."""
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# --- VictoriaMetrics ----------------------------------------------------------------------------


class VictoriaMetrics(_Process):
    """VictoriaMetrics single-node: accepts the InfluxDB v2 write API at ``/api/v2/write``.

    ``-dedup.minScrapeInterval=1ms`` gives InfluxDB's "same series + timestamp = one point"
    semantics (VictoriaMetrics keeps ms timestamps, so test points must differ by >= 1 ms).
    """

    name = "victoria-metrics"

    def __init__(self, workdir: Path, port: int | None = None, dedup: bool = True) -> None:
        super().__init__(workdir)
        self.binary = find_binary(VICTORIA_CANDIDATES, "victoria-metrics")
        self.port = port or free_port()
        self._port_pinned = port is not None
        self.dedup = dedup
        self.storage = self.workdir / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = [
            self.binary,
            f"-storageDataPath={self.storage}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-loggerLevel=ERROR",
            "-search.latencyOffset=0s",
            "-memory.allowedPercent=20",
            "-retentionPeriod=100y",  # tests use fixed timestamps years in the past
        ]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        return args

    def ready_port(self) -> int:
        return self.port

    def new_ports(self) -> bool:
        if self._port_pinned:
            return False
        self.port = free_port()
        return True

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the port opens slightly before /health says ok
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics not healthy on {self.url}\n{self.log_tail()}")

    def force_flush(self) -> None:
        """Make just-ingested samples visible to queries (they sit in a buffer for ~1 s otherwise)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as r:
            r.read()

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """All raw series matching a selector: ``[{"metric": {...}, "values": [...], "timestamps": [...]}]``."""
        self.force_flush()
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=60) as r:
            body = r.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def sample_count(self, match: str = '{__name__!=""}') -> int:
        return sum(len(s["values"]) for s in self.export(match))


# --- PKI for TLS tests (openssl CLI; the cryptography package is not a dependency) ---------------


@dataclass(frozen=True)
class Pki:
    ca_crt: Path  # the CA the broker's certificate is signed by
    server_crt: Path
    server_key: Path
    other_ca_crt: Path  # an unrelated CA: a client trusting only this must refuse the broker


def _openssl(openssl: str, *args: str, cwd: Path) -> None:
    res = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {res.stderr.strip()}")


def make_test_pki(directory: Path) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost signed by it, and a second CA."""
    openssl = find_binary(OPENSSL_CANDIDATES, "openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        _openssl(openssl, "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                 "-days", "2", "-subj", f"/CN=powerctl test {name}", cwd=d)
    _openssl(openssl, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    for p in d.iterdir():
        p.chmod(0o644)  # mosquitto may drop privileges before reading them
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "other-ca.crt")


# --- Mosquitto ----------------------------------------------------------------------------------


class Mosquitto(_Process):
    """Mosquitto with up to three loopback listeners.

    - ``port``: plain, anonymous allowed (simple device simulators and clients);
    - ``auth_port``: plain, username/password from ``users`` required;
    - ``tls_port`` (when ``certs`` is given): TLS with the test CA's server cert, password required.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        certs: Pki | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary(MOSQUITTO_CANDIDATES, "mosquitto")
        self.certs = certs
        self.users = dict(users or {"powerctl": "s3cret-test-pw", "operator": "op-test-pw"})
        self.port = free_port()
        self.auth_port = free_port()
        self.tls_port = free_port() if certs else None
        self.conf = self.workdir / "mosquitto.conf"
        self._write_config()

    def _write_config(self) -> None:
        passwd = self.workdir / "passwd"
        passwd.write_text("")
        tool = find_binary(MOSQUITTO_PASSWD_CANDIDATES, "mosquitto")
        for user, pw in self.users.items():
            subprocess.run([tool, "-b", str(passwd), user, pw], check=True, capture_output=True, timeout=30)
        passwd.chmod(0o600)
        lines = [
            "per_listener_settings true",
            "persistence false",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 10000",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"listener {self.auth_port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
        ]
        if self.certs is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                "allow_anonymous false",
                f"password_file {passwd}",
                f"cafile {self.certs.ca_crt}",
                f"certfile {self.certs.server_crt}",
                f"keyfile {self.certs.server_key}",
            ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else it drops to 'mosquitto' and cannot read the tmp dir
        self.conf.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def new_ports(self) -> bool:
        self.port, self.auth_port = free_port(), free_port()
        self.tls_port = free_port() if self.certs else None
        self._write_config()
        return True

    def ready_port(self) -> int:
        return self.tls_port or self.auth_port

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc)
        wait_port(self.auth_port, proc=self.proc)
