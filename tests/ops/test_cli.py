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
