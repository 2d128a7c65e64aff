"""The agent's reply to a set: NVML's read-back after setting, not the caps asked for (no network)."""

from __future__ import annotations

import json
import time

from powerctl.agent.config import parse_agent_config
from powerctl.agent.protocol import encode
from powerctl.agent.server import AgentCore
from powerctl.gpu.nvml import NvmlGpus
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def test_set_reply_carries_nvmls_read_back_and_a_swallowed_set_is_not_ok() -> None:
    fake = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", set_swallowed=True)])
    cfg = parse_agent_config({"agent": {
        "name": "node-a", "listen": "127.0.0.1:7443", "allowed_controllers": ["controller"],
        "min_w": 200.0, "max_w": 700.0, "safe_cap_w": 300.0,
        "tls": {"ca": "/pki/ca.pem", "cert": "/pki/a.pem", "key": "/pki/a.key"}}})
    core = AgentCore(cfg, NvmlGpus(pynvml_module=fake.module()))
    body = encode({"op": "set", "client": "test", "seq": time.time_ns() // 1000, "ts": time.time(),
                   "caps_w": [450.0, 450.0], "lease_s": 5.0})[4:]
    reply = json.loads(encode(core.handle("controller", body))[4:])  # as it goes over the wire
    assert fake.gpus[0].limit_mw == 450_000 and fake.gpus[1].set_calls == [450_000]
    assert reply["requested_w"] == [450.0, 700.0]  # GPU b's set reported success but did not take
    assert reply["set_ok"] == [True, False] and reply["ok"] is False
    assert "read-back mismatch" in reply["message"][1]
    assert reply["power_w"] == [352.0, 352.0] and len(reply["energy_j"]) == 2
    assert "gpus" not in reply  # the fixed fields (names, ranges) come with "state" only
