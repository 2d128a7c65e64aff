"""The agent's systemd unit keeps its sandboxing, and the example agent config loads."""

from __future__ import annotations

import shutil
import subprocess

from powerctl.agent.config import AgentBackend, load_agent_config
from tests.security.test_systemd_units import COMMON, UNITS, parse_unit
from tests.servers import ServerMissing, skip_or_fail

UNIT = UNITS / "powerctl-agent.service"


def test_agent_unit_holds_only_cap_sys_admin_and_is_sandboxed() -> None:
    parsed = parse_unit(UNIT)
    svc, head = parsed["Service"], parsed["Unit"]
    for key, want in COMMON.items():
        assert svc.get(key) == [want], f"{key} should be {want}, is {svc.get(key)}"
    assert svc["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"] and svc["AmbientCapabilities"] == [""]
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert svc["IPAddressDeny"] == ["any"] and svc["IPAddressAllow"]
    assert "ReadWritePaths" not in svc  # it writes nothing
    assert svc.get("PrivateDevices", ["no"]) == ["no"], "NVML needs /dev/nvidia*"
    assert svc["ExecStart"][0].split()[1:] == ["agent", "/etc/powerctl/agent.toml"]
    assert {"slurmd.service", "kubelet.service"} <= set(head["Before"][0].split())  # jobs after the safe cap


def test_systemd_rates_the_agent_unit_ok() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail(ServerMissing("systemd-analyze is not installed"))
        return
    out = subprocess.run([tool, "security", "--offline=yes", "--threshold=30", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    score = float(out.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 3.0, out.stdout[-2000:]  # it listens on the network, unlike the cap-setter


def test_example_agent_config_loads() -> None:
    cfg = load_agent_config(UNITS.parent / "agent.toml")
    assert cfg.backend is AgentBackend.NVML and cfg.safe_cap_w == 300.0
    assert cfg.tls.key == (UNITS.parent / "pki" / "agent-000.key")
