"""Config validation: every bad config exits with file, field path and problem."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from powerctl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.toml"


def _write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _demo_with(tmp_path: Path, old: str, new: str) -> Path:
    text = DEMO.read_text()
    assert old in text, f"demo config no longer contains {old!r}"
    return _write(tmp_path, text.replace(old, new, 1))


def test_demo_config_loads() -> None:
    cfg = load_config(DEMO)
    assert cfg.site.id == "demo"
    assert cfg.gpu.count == 192
    assert [d.nature.value for d in cfg.devices] == ["pv", "battery", "genset"]
    assert len(cfg.control.horizon_steps_s) == 152


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("max_discharge_kw = 60.0", "max_discharge_kw = -5", "devices[1].limits.max_discharge_kw: must be > 0 (got -5)"),
        ("soc_min_pct = 10.0", "soc_min_pct = 97.0", "devices[1].limits: soc_min_pct (97) must be below soc_max_pct (95)"),
        ("port = 15021", "port = 70000", "devices[1].transport.port: must be <= 65535 (got 70000)"),
        ('kind = "modbus_tcp", host = "127.0.0.1", port = 15022', 'kind = "canbus", host = "127.0.0.1", port = 15022',
         "devices[2].transport: unknown kind 'canbus'"),
        ("safe_cap_w = 300.0", "safe_cap_w = 900.0", "gpu: safe_cap_w (900) must lie within [min_w, max_w] = [200, 700]"),
        ("guard_period_s = 0.2", "guard_perod_s = 0.2", "control.guard_perod_s: unknown key (typo?)"),
        ('nature = "genset"', 'nature = "windmill"',
         "devices[2]: unknown nature 'windmill'; expected one of pv, battery, genset, meter"),
        ("rating_kw = 120.0", 'rating_kw = "big"', "devices[2].limits.rating_kw: input should be a valid number"),
    ],
)
def test_bad_config_messages(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _demo_with(tmp_path, old, new)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert expected in msg, msg


def test_duplicate_device_names(tmp_path: Path) -> None:
    path = _demo_with(tmp_path, 'name = "gen1"', 'name = "bess"')
    with pytest.raises(ConfigError, match=r"devices\[2\]\.name: 'bess' is used twice"):
        load_config(path)


def test_not_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "[site\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_missing_section(tmp_path: Path) -> None:
    data = tomllib.loads(DEMO.read_text())
    text = DEMO.read_text().split("[gpu]")[0]
    assert "gpu" in data
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"gpu: is required"):
        load_config(path)


def test_secret_in_world_readable_file_refused(tmp_path: Path) -> None:
    text = DEMO.read_text() + '\n[mqtt]\nhost = "127.0.0.1"\npassword = "hunter2"\n'
    path = _write(tmp_path, text)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        load_config(path)
    os.chmod(path, 0o600)
    assert load_config(path).mqtt is not None


def test_check_command_prints_message_not_traceback(tmp_path: Path) -> None:
    path = _demo_with(tmp_path, "max_discharge_kw = 60.0", "max_discharge_kw = 0")
    out = subprocess.run(
        [sys.executable, "-m", "powerctl.cli", "check", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 2
    assert "devices[1].limits.max_discharge_kw: must be > 0" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_check_command_ok_and_profile_nature_mismatch(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "powerctl.cli", "check", str(DEMO)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    path = _demo_with(tmp_path, 'profile = "dse/gencomm"', 'profile = "sma/sunny_island"')
    bad = subprocess.run(
        [sys.executable, "-m", "powerctl.cli", "check", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert bad.returncode == 2
    assert "devices[2].profile: sma/sunny_island is a battery profile, but the device is a genset" in bad.stderr
