"""Least privilege: a real ``powerctl capsetter`` process on a Unix socket (simulated GPUs behind it)
and the unprivileged ``socket`` backend talking to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerctl.capsetter import MAX_CONNECTIONS, MAX_PER_UID, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S, bind_socket
from powerctl.config import ConfigError, load_config
from powerctl.daemon import Daemon
from powerctl.gpu.base import GpuError
from powerctl.gpu.factory import make_backend
from powerctl.gpu.socket import SocketGpus

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.toml"


def site_toml(tmp: Path, name: str, gpu_lines: str, max_w: float = 700.0) -> Path:
    """The demo site with its [gpu] backend line replaced by ``gpu_lines`` and max_w set."""
    text = DEMO.read_text().replace('backend = "simulated"', gpu_lines)
    text = text.replace("max_w = 700.0", f"max_w = {max_w}").replace('"run/', f'"{tmp}/run/')
    path = tmp / name
    path.write_text(text)
    os.chmod(path, 0o640)
    return path


class CapSetterProc:
    def __init__(self, tmp: Path, max_w: float = 400.0) -> None:
        self.sock = str(tmp / "cap.sock")
        self.state = tmp / "gpus.json"
        self.config = site_toml(
            tmp, "capsetter.toml",
            f'backend = "socket"\ncapsetter_backend = "simulated"\nsocket_path = "{self.sock}"\n'
            f'sim_state_file = "{self.state}"',
            max_w=max_w,
        )
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "powerctl.cli", "capsetter", str(self.config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"capsetter exited {self.proc.returncode}: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("capsetter did not start listening")

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return out

    def caps_in_state_file(self) -> list[float] | None:
        """What the simulated 'driver' holds, read independently of the socket (None: never set)."""
        if not self.state.exists():
            return None
        return json.loads(self.state.read_text())["caps_w"]


@pytest.fixture
def capsetter(tmp_path: Path) -> Iterator[CapSetterProc]:
    cs = CapSetterProc(tmp_path)
    cs.start()
    try:
        yield cs
    finally:
        cs.stop()


class Raw:
    """A raw line client for hostile messages."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(5)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def ask(self, line: bytes) -> dict:  # type: ignore[type-arg]
        self.s.sendall(line if line.endswith(b"\n") else line + b"\n")
        reply = self.f.readline()
        assert reply, "connection closed"
        return json.loads(reply)

    def close(self) -> None:
        self.f.close()
        self.s.close()


def test_in_range_set_works_and_reads_back(capsetter: CapSetterProc) -> None:
    gpus = SocketGpus(capsetter.sock)
    infos = gpus.list_gpus()
    assert len(infos) == load_config(capsetter.config).gpu.count
    # the cap-setter reports ITS limits (its config says max_w = 400)
    assert (infos[0].min_w, infos[0].max_w) == (200.0, 400.0)
    res = gpus.set_cap_w(3, 250.0)
    assert res.ok and res.readback_w == 250.0 and res.enforced_w == 250.0, res
    assert gpus.read_limits_w(3) == (250.0, 250.0)
    assert (capsetter.caps_in_state_file() or [])[3] == 250.0
    assert gpus.read_power_w(3) > 0
    assert gpus.read_energy_j(3) >= 0
    gpus.close()


def test_socket_is_not_world_accessible(capsetter: CapSetterProc) -> None:
    mode = stat.S_IMODE(os.stat(capsetter.sock).st_mode)
    assert mode == 0o660, oct(mode)


async def test_client_cannot_exceed_the_capsetters_config(capsetter: CapSetterProc, tmp_path: Path) -> None:
    # the daemon's own config allows 700 W; the cap-setter's allows 400 W: 400 wins
    client_cfg = load_config(site_toml(tmp_path, "daemon.toml", f'backend = "socket"\nsocket_path = "{capsetter.sock}"'))
    assert client_cfg.gpu.max_w == 700.0
    backend = make_backend(client_cfg.gpu)
    assert isinstance(backend, SocketGpus)
    before = capsetter.caps_in_state_file()
    res = backend.set_cap_w(0, 600.0)
    assert not res.ok
    assert "outside the cap-setter's limits [200, 400]" in res.message and "capsetter.toml" in res.message
    assert capsetter.caps_in_state_file() == before  # nothing reached the driver
    assert backend.set_cap_w(0, 199.0).ok is False
    assert backend.set_cap_w(0, 400.0).ok is True
    # the daemon built on this backend plans within the cap-setter's range, not its own
    daemon = Daemon(client_cfg, forecaster=lambda *a: None)  # type: ignore[arg-type,return-value]
    assert max(s.max_w for s in daemon.slots) == 400.0


HOSTILE: list[tuple[bytes, str]] = [
    (b"not json", "not JSON"),
    (b'{"op":"set","gpu":0,"w":NaN}', "NaN"),
    (b'{"op":"set","gpu":0,"w":Infinity}', "Infinity"),
    (b'{"op":"set","gpu":0,"w":1e309}', "finite"),
    (b'{"op":"set","gpu":0,"w":true}', "number of watts"),
    (b'{"op":"set","gpu":0,"w":"300"}', "number of watts"),
    (b'{"op":"set","gpu":100000,"w":300}', "does not exist"),
    (b'{"op":"set","gpu":-1,"w":300}', "does not exist"),
    (b'{"op":"set","gpu":0.0,"w":300}', "integer index"),
    (b'{"op":"set","gpu":0,"w":' + b"9" * 400 + b"}", "outside the cap-setter's limits"),
    (b'{"op":"set","gpu":0,"w":-300}', "outside the cap-setter's limits"),
    (b'{"op":"set","gpu":0,"w":300,"force":true}', "unknown"),
    (b'{"op":"set","gpu":0}', "missing"),
    (b'{"op":"reboot"}', "op must be one of"),
    (b'{"op":["set"]}', "op must be one of"),
    (b"[1,2,3]", "JSON object"),
    (b"[" * 200 + b"]" * 200, "JSON object"),
    (b"\xff\xfe\x00", "not UTF-8"),
]


def test_hostile_messages_are_refused_and_the_connection_survives(capsetter: CapSetterProc) -> None:
    raw = Raw(capsetter.sock)
    before = capsetter.caps_in_state_file()
    for line, why in HOSTILE:
        reply = raw.ask(line)
        assert reply["ok"] is False, (line, reply)
        assert why in reply["error"], (line, reply)
    assert capsetter.caps_in_state_file() == before  # none of them set anything
    # same connection, a valid request still works
    reply = raw.ask(b'{"op":"set","gpu":1,"w":220}')
    assert reply["ok"] is True and reply["readback_w"] == 220.0
    raw.close()


def test_oversized_message_is_refused_then_closed_and_the_server_lives_on(capsetter: CapSetterProc) -> None:
    raw = Raw(capsetter.sock)
    reply = raw.ask(b'{"op":"list","pad":"' + b"x" * (4 * MAX_REQUEST_BYTES) + b'"}')
    assert reply["ok"] is False and f"over {MAX_REQUEST_BYTES} bytes" in reply["error"]
    assert raw.f.readline() == b""  # closed cleanly after the refusal
    raw.close()
    # an endless line without a newline is cut off the same way, without the server buffering it
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(capsetter.sock)
        with pytest.raises(OSError):  # the server closes mid-stream: reset or broken pipe
            for _ in range(10_000):
                s.sendall(b"y" * 4096)
    gpus = SocketGpus(capsetter.sock)
    assert gpus.set_cap_w(2, 300.0).ok


def held_connection(path: str) -> Raw:
    """A connection the server has accepted and answered on (start()'s probe may still be closing)."""
    for _ in range(50):
        r = Raw(path)
        try:
            if r.ask(b'{"op":"limits","gpu":0}')["ok"]:
                return r
        except (OSError, AssertionError):
            pass
        r.close()
        time.sleep(0.1)
    raise AssertionError("could not hold a connection")


def test_connection_limit_per_uid_evicts_the_least_recently_active(capsetter: CapSetterProc) -> None:
    held = [held_connection(capsetter.sock) for _ in range(MAX_PER_UID)]
    newest = held_connection(capsetter.sock)  # the uid's quota is full: its oldest goes, not the newcomer
    assert held[0].f.readline() == b""
    assert newest.ask(b'{"op":"limits","gpu":0}')["ok"] is True
    for r in [*held, newest]:
        r.close()


async def test_half_sent_connections_do_not_lock_out_the_daemon(capsetter: CapSetterProc, tmp_path: Path) -> None:
    """Issue 12: eight idle half-sent connections locked the cap-setter for 300 s and the daemon
    died at start. Now a new client always gets in, and a half line is dropped after
    REQUEST_TIMEOUT_S."""
    half = []
    for _ in range(2 * MAX_CONNECTIONS):
        r = Raw(capsetter.sock)
        r.s.settimeout(REQUEST_TIMEOUT_S + 60)
        with contextlib.suppress(OSError):
            r.s.sendall(b'{"op":"li')  # no newline: never finished
        half.append(r)
    client_cfg = load_config(site_toml(tmp_path, "daemon.toml", f'backend = "socket"\nsocket_path = "{capsetter.sock}"'))
    daemon = Daemon(client_cfg, forecaster=lambda *a: None)  # type: ignore[arg-type,return-value]
    assert len(daemon.slots) == client_cfg.gpu.count  # it started: list_gpus went through
    # the most recent half-sent connection is still open; the server closes it on its own
    last = half[-1]
    with contextlib.suppress(OSError):
        assert last.f.readline() == b""
    for r in half:
        r.close()


def test_capsetter_refuses_a_config_directory_its_clients_could_write(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # anyone could replace capsetter.toml by rename, whatever its mode
    cs = CapSetterProc(open_dir)
    out = subprocess.run([sys.executable, "-m", "powerctl.cli", "capsetter", str(cs.config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "config directory writable by group or others" in out.stdout and str(open_dir) in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_socket_cannot_be_swapped_for_a_symlink_after_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker who wins the race after bind() and puts a symlink at the socket path must not
    get our chmod/chown applied to the link's target. The race is forced: the swap happens when
    bind_socket restores its umask, right after bind()."""
    victim = tmp_path / "victim"
    victim.write_text("secret")
    os.chmod(victim, 0o600)
    path = tmp_path / "cap.sock"
    real_umask = os.umask
    calls = []

    def umask_then_swap(mask: int) -> int:
        calls.append(mask)
        if len(calls) == 2:  # the restore after bind: swap whatever is at the path for a link
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.symlink(victim, path)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", umask_then_swap)
    with contextlib.suppress(OSError):
        sock = bind_socket(path, mode=0o660)
        sock.close()
    monkeypatch.setattr(os, "umask", real_umask)
    assert len(calls) == 2
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600, "chmod followed the planted symlink"
    assert victim.read_text() == "secret"


def test_socket_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "run"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(ConfigError, match="socket directory writable by group or others"):
        bind_socket(open_dir / "cap.sock")
    assert list(open_dir.iterdir()) == []


def test_client_reconnects_after_a_capsetter_restart(capsetter: CapSetterProc) -> None:
    gpus = SocketGpus(capsetter.sock)
    assert gpus.set_cap_w(5, 260.0).ok
    capsetter.stop()
    with pytest.raises(GpuError, match=r"cap-setter socket .*cap\.sock"):
        gpus.set_cap_w(5, 270.0)
    capsetter.start()
    assert gpus.set_cap_w(5, 280.0).ok
    assert (capsetter.caps_in_state_file() or [])[5] == 280.0


def test_unreachable_capsetter_is_one_clear_error(tmp_path: Path) -> None:
    gpus = SocketGpus(str(tmp_path / "nobody.sock"), timeout_s=0.5)
    with pytest.raises(GpuError, match=r"nobody\.sock: No such file or directory \(is powerctl-capsetter"):
        gpus.list_gpus()


def test_capsetter_refuses_a_config_its_clients_could_edit(tmp_path: Path) -> None:
    cs = CapSetterProc(tmp_path)
    os.chmod(cs.config, 0o664)
    out = subprocess.run([sys.executable, "-m", "powerctl.cli", "capsetter", str(cs.config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "writable by group or others" in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert not Path(cs.sock).exists()


def test_world_accessible_socket_mode_is_a_config_error(tmp_path: Path) -> None:
    path = site_toml(tmp_path, "s.toml", 'backend = "socket"\nsocket_mode = 0o666')
    with pytest.raises(ConfigError, match=r"gpu\.socket_mode: must not give 'other' any access"):
        load_config(path)


def test_capsetter_will_not_replace_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    cs = CapSetterProc(tmp_path)
    Path(cs.sock).write_text("precious")
    out = subprocess.run([sys.executable, "-m", "powerctl.cli", "capsetter", str(cs.config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is not a socket" in out.stdout
    assert Path(cs.sock).read_text() == "precious"
