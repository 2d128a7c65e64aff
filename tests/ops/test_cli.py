"""The command line as an operator meets it: one clean line for a bad profile name, --version,
shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POWERCTL = [sys.executable, "-m", "powerctl.cli"]


def powerctl(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*POWERCTL, *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env)


@pytest.mark.parametrize("command", [["run"], ["demo"], ["sim", "serve"]])
def test_a_wrong_profile_name_is_one_clean_line(tmp_path: Path, command: list[str]) -> None:
    text = (ROOT / "examples" / "demo-site.toml").read_text().replace('"sma/sunny_island"', '"sma/sunny_isle"')
    (tmp_path / "site.toml").write_text(text)
    r = powerctl(*command, str(tmp_path / "site.toml"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "devices[1].profile" in lines[0] and "sma/sunny_isle" in lines[0] and str(tmp_path) in lines[0]


def test_version() -> None:
    from importlib.metadata import version

    r = powerctl("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"powerctl {version('powerctl')}"


def test_shell_completion_script_and_answers() -> None:
    script = Path(sys.executable).parent / "powerctl"  # the console script a shell completes
    r = subprocess.run([str(script), "--show-completion", "bash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "complete -o default -F _powerctl_completion powerctl" in r.stdout, r.stdout
    # what the installed script asks (typer's protocol) for "powerctl ch<TAB>"
    env = {**os.environ, "_POWERCTL_COMPLETE": "complete_bash", "COMP_WORDS": "powerctl ch", "COMP_CWORD": "1"}
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert "check" in done.stdout.split(), (done.stdout, done.stderr)


def test_status_without_a_daemon_says_so_and_exits_2(tmp_path: Path) -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    text = (ROOT / "examples" / "demo-site.toml").read_text() + f"\n[http]\nport = {port}\n"
    (tmp_path / "site.toml").write_text(text)
    r = powerctl("status", str(tmp_path / "site.toml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"no answer from the daemon at http://127.0.0.1:{port}/api/state" in r.stderr


def _site_on_free_ports(tmp_path: Path, profile: str | None = None) -> tuple[Path, list[int]]:
    from tests.servers import free_port

    text = (ROOT / "examples" / "demo-site.toml").read_text()
    ports = [free_port() for _ in range(3)]
    for old, new in zip((15020, 15021, 15022), ports, strict=True):
        text = text.replace(f"port = {old}", f"port = {new}")
    text = text.replace('"run/', f'"{tmp_path}/run/') + f"\n[http]\nport = {free_port()}\n"
    if profile:
        text = text.replace('"sunspec/inverter_103"', f'"{profile}"')
    (tmp_path / "site.toml").write_text(text)
    return tmp_path / "site.toml", ports


@pytest.mark.parametrize("command", [["demo", "--seconds", "20"], ["sim", "serve"]])
def test_a_taken_modbus_port_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    import socket

    site, ports = _site_on_free_ports(tmp_path)
    with socket.create_server(("127.0.0.1", ports[1])):  # another process holds the battery's port
        r = powerctl(*command[:1 + (command[0] == "sim")], str(site), *command[1 + (command[0] == "sim"):])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout and "serving" not in r.stdout
    assert f"cannot listen on 127.0.0.1:{ports[1]}" in r.stderr and "in use" in r.stderr, r.stderr


def test_sim_serve_refuses_a_nameplate_its_registers_cannot_carry(tmp_path: Path) -> None:
    # SunSpec DER W is int16 with a fixed scale factor: 32.767 kW at most; the demo PV is 230 kW
    site, _ports = _site_on_free_ports(tmp_path, profile="sunspec/der_inverter")
    r = powerctl("sim", "serve", str(site))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "serving" not in r.stdout
    assert "pv1: profile sunspec/der_inverter cannot report p_kw = 230 kW" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_demo_logs_fewer_than_100_lines_in_ten_minutes(tmp_path: Path) -> None:
    """A 60 s demo with the simulated day 15x faster than `make run` (the sun, the cloud, the
    battery running full): the start-up lines plus ten times the rate after start-up stay under
    100 (one 600 s run measured for the README: see there)."""
    from datetime import datetime

    site, _ports = _site_on_free_ports(tmp_path)
    r = powerctl("demo", str(site), "--seconds", "60", "--time-scale", "300", "--plain", timeout_s=240)
    assert r.returncode == 0, r.stderr[-2000:]
    stamps = [datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f") for ln in r.stderr.splitlines()
              if len(ln) > 23 and ln[4] == "-" and ln[10] == " "]
    lines = r.stderr.splitlines()
    assert stamps, r.stderr
    t0 = stamps[0]
    startup = sum(1 for t in stamps if (t - t0).total_seconds() < 10.0)
    steady = len(stamps) - startup  # the last ~50 s
    assert startup + steady * (590.0 / 50.0) < 100, "\n".join(lines[-40:])
    assert len(lines) < 100
