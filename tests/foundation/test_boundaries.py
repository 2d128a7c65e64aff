"""The package's import boundaries, as tests.

- The edge daemon (``pip install powerctl``, no ``[sim]`` extra) imports neither the simulator
  (``powerctl.sim``) nor matplotlib, dask or pyarrow: checked in a fresh interpreter whose import
  system refuses those names and records every attempt, so a ``try: import ... except ImportError``
  cannot hide one. The same interpreter runs ``powerctl check`` and a short ``powerctl run``.
- ``optimizer/`` is the pure numerical core: it imports nothing of powerctl outside
  ``powerctl.optimizer``.
- ``powerctl/control/`` does no I/O: no sockets, subprocesses, device or broker clients, no open().

The installed-wheel check (a fresh venv, ``pip install .``) is ``make lean-check`` (README, Layout).
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that refuses the simulator and its extra, as if they were not installed, and
# appends to a file each attempt made by our code (any of powerctl.sim, or an extra imported from a
# file of this repository; a third-party probe such as pandas looking for pyarrow is just refused).
_GUARD = r"""
import sys, json
REFUSED = ("powerctl.sim", "matplotlib", "dask", "distributed", "pyarrow")
LOG = sys.argv.pop(1)
ROOT = sys.argv.pop(1)

def _importer():
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith("<frozen"):
        f = f.f_back
    return "" if f is None else f.f_code.co_filename

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == r or name.startswith(r + ".") for r in REFUSED):
            by = _importer()
            if name.startswith("powerctl.") or (by.startswith(ROOT) and "site-packages" not in by):
                with open(LOG, "a") as f:
                    f.write(json.dumps(f"{name} (imported by {by})") + "\n")
            raise ImportError(f"refused by test_boundaries: {name}")
        return None

sys.meta_path.insert(0, Refuse())
"""


def _refused(log: Path) -> list[str]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _guarded(tmp_path: Path, body: str) -> tuple[list[str], Path]:
    script = tmp_path / "guarded.py"
    script.write_text(_GUARD + body)
    log = tmp_path / "refused.jsonl"
    return [sys.executable, str(script), str(log), str(ROOT) + "/"], log


def test_edge_modules_import_no_simulator(tmp_path: Path) -> None:
    argv, log = _guarded(tmp_path, """
import powerctl.cli, powerctl.daemon, powerctl.watchdog, powerctl.capsetter
import powerctl.gpu.failsafe, powerctl.gpu.factory, powerctl.hooks, powerctl.control.planner
print("imported")
""")
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    assert _refused(log) == []


def test_powerctl_check_and_run_without_simulator(tmp_path: Path) -> None:
    """`powerctl check` and `powerctl run` (no device reachable: stale means worst case) with the
    simulator and its extra refused; the run plans, then stops cleanly on SIGINT."""
    text = (ROOT / "examples" / "demo-site.toml").read_text()
    for port in (15020, 15021, 15022):
        text = text.replace(f"port = {port}", f"port = {free_port()}")  # nothing listens there
    text = text.replace('"run/', f'"{tmp_path}/').replace('state_dir = "run"', f'state_dir = "{tmp_path}"')
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    argv, log = _guarded(tmp_path, "import sys\nfrom powerctl.cli import main\nsys.argv[0] = 'powerctl'\nmain()\n")

    check = subprocess.run([*argv, "check", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stdout

    err_path = tmp_path / "run.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen([*argv, "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120.0
            while "[plan]" not in err_path.read_text():
                assert proc.poll() is None, f"powerctl run exited early:\n{err_path.read_text()}"
                assert time.monotonic() < deadline, f"no plan within 120 s:\n{err_path.read_text()}"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = err_path.read_text()
    assert rc == 0, log_text
    assert "GPUs at or below the safe cap" in log_text
    assert _refused(log) == []


def test_sim_command_without_extra_says_what_to_install(tmp_path: Path) -> None:
    argv, _log = _guarded(tmp_path, "import sys\nfrom powerctl.cli import main\nsys.argv[0] = 'powerctl'\nmain()\n")
    cfg = str(ROOT / "examples" / "demo-site.toml")
    for cmd in (["demo", cfg], ["sim", "replay", cfg]):
        out = subprocess.run([*argv, *cmd], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 2, (cmd, out.stdout, out.stderr)
        assert "install powerctl[sim]" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved against powerctl."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "<relative>"))
            elif node.module:
                found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_optimizer_imports_only_itself_from_powerctl() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line}: {mod}"
        for p in sorted((ROOT / "optimizer").rglob("*.py"))
        for line, mod in _imports(p)
        if mod == "<relative>" or (mod.split(".")[0] == "powerctl" and not mod.startswith("powerctl.optimizer"))
    ]
    assert bad == []


IO_MODULES = ("socket", "subprocess", "asyncio.subprocess", "urllib", "http", "ssl", "pymodbus", "aiomqtt",
              "influxdb_client", "pynvml", "requests", "shutil", "tempfile")
IO_ASYNCIO_NAMES = ("open_connection", "start_server", "create_subprocess_exec", "create_subprocess_shell",
                    "open_unix_connection", "start_unix_server")


def test_control_does_no_io() -> None:
    bad: list[str] = []
    for p in sorted((ROOT / "powerctl" / "control").rglob("*.py")):
        where = p.relative_to(ROOT)
        for line, mod in _imports(p):
            if any(mod == m or mod.startswith(m + ".") for m in IO_MODULES):
                bad.append(f"{where}:{line}: imports {mod}")
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "open":
                    bad.append(f"{where}:{node.lineno}: open()")
                if isinstance(f, ast.Attribute) and f.attr in (*IO_ASYNCIO_NAMES, "read_text", "write_text",
                                                               "read_bytes", "write_bytes", "open"):
                    bad.append(f"{where}:{node.lineno}: .{f.attr}()")
    assert bad == []
