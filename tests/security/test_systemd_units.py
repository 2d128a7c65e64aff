"""The shipped systemd units keep their sandboxing: the daemon holds no capability, the cap-setter
only CAP_SYS_ADMIN, and both run on a read-only system without homes, with restricted sockets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import ServerMissing, skip_or_fail

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows repeated keys; comments and blanks skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


COMMON = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize("unit", ["powerctl.service", "powerctl-capsetter.service"])
def test_common_sandboxing(unit: str) -> None:
    svc = parse_unit(UNITS / unit)["Service"]
    for key, want in COMMON.items():
        assert svc.get(key) == [want], f"{unit}: {key} should be {want}, is {svc.get(key)}"
    assert "@system-service" in svc["SystemCallFilter"]


def test_daemon_is_unprivileged() -> None:
    svc = parse_unit(UNITS / "powerctl.service")["Service"]
    assert svc["User"] == ["powerctl"]
    assert svc["CapabilityBoundingSet"] == [""], "the daemon must hold no capability"
    assert svc.get("AmbientCapabilities", [""]) == [""]
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "/var/lib/powerctl" in svc["ReadWritePaths"]
    assert svc["PrivateDevices"] == ["yes"]
    assert svc["ExecStart"][0].split()[1:] == ["run", "/etc/powerctl/site.toml"]
    unit = parse_unit(UNITS / "powerctl.service")["Unit"]
    assert "powerctl-capsetter.service" in unit["Requires"][0].split()


def test_capsetter_holds_only_cap_sys_admin_and_no_network() -> None:
    svc = parse_unit(UNITS / "powerctl-capsetter.service")["Service"]
    assert svc["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert svc["PrivateNetwork"] == ["yes"]
    assert "/run/powerctl" in svc["ReadWritePaths"]
    assert svc["Group"] == ["powerctl"]  # the socket's group: only the powerctl user may connect
    assert svc["ExecStart"][0].split()[1:] == ["capsetter", "/etc/powerctl/site.toml"]


@pytest.mark.parametrize("unit", ["powerctl.service", "powerctl-capsetter.service"])
def test_systemd_rates_the_units_ok(unit: str) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unsafe) stays at or under 2."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail(ServerMissing("systemd-analyze is not installed"))
        return
    out = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", str(UNITS / unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    score = float(out.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 2.0, out.stdout[-2000:]


@pytest.mark.parametrize("unit", ["powerctl-safe-caps.service", "powerctl-watchdog.service"])
def test_failsafe_units_reach_the_gpus_without_the_capsetter(unit: str) -> None:
    """The fail-safe units set caps themselves (CAP_SYS_ADMIN, NVML; powerctl/gpu/failsafe.py):
    they neither wait for nor depend on the cap-setter, and are sandboxed like the others."""
    parsed = parse_unit(UNITS / unit)
    svc, head = parsed["Service"], parsed["Unit"]
    assert svc["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"] and svc["AmbientCapabilities"] == ["CAP_SYS_ADMIN"]
    for key in ("After", "Requires", "BindsTo", "PartOf", "Requisite"):
        for value in head.get(key, []):
            assert "powerctl-capsetter.service" not in value.split(), f"{unit}: {key}={value}"
            assert "powerctl.service" not in value.split(), f"{unit}: {key}={value}"
    for key, want in COMMON.items():
        assert svc.get(key) == [want], f"{unit}: {key} should be {want}, is {svc.get(key)}"
    assert svc.get("PrivateDevices", ["no"]) == ["no"], "NVML needs /dev/nvidia*"
    assert svc["ExecStart"][0].split()[1:2] == [unit.removeprefix("powerctl-").removesuffix(".service")
                                               .replace("safe-caps", "apply-safe-caps")]


def test_boot_order_puts_safe_caps_first() -> None:
    before = parse_unit(UNITS / "powerctl-safe-caps.service")["Unit"]["Before"][0].split()
    assert {"powerctl.service", "powerctl-capsetter.service", "powerctl-watchdog.service",
            "slurmd.service", "kubelet.service"} <= set(before)
    capsetter_after = parse_unit(UNITS / "powerctl-capsetter.service")["Unit"]["After"][0].split()
    assert "powerctl-safe-caps.service" in capsetter_after


def test_daemon_notifies_readiness_and_feeds_the_watchdog() -> None:
    svc = parse_unit(UNITS / "powerctl.service")["Service"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    watchdog_s = float(svc["WatchdogSec"][0])
    # the daemon pings at most every watchdog/4 from the guard (every 0.2 s): room for a slow cycle
    assert 5.0 <= watchdog_s <= 30.0
    assert float(svc["TimeoutStopSec"][0]) >= 15.0  # STOP_GRACE_S in powerctl/cli.py
