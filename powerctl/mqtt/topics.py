"""The MQTT topic tree of one daemon, and Home Assistant discovery messages.

Everything lives under ``<prefix>/<site>/<module>/`` (``prefix`` = ``mqtt.topic_prefix``):

| topic | retained | payload |
|---|---|---|
| ``status`` | yes | ``online`` / ``offline`` (``offline`` is also the last will) |
| ``state`` | yes | JSON: the latest status of the site (powers, SoC, caps, mode, stale signals) |
| ``plan`` | yes | JSON: the current plan over the horizon |
| ``caps`` | yes | JSON: GPU caps in W per GPU and their sum |
| ``alarms`` | no | JSON: one alarm or event per message |
| ``commands/<name>/set`` | no | operator command (subscribed; the only topics listened to) |
| ``commands/<name>/result`` | no | JSON: accepted or refused, with the reason |
| ``commands/state`` | yes | JSON: the active leases |

Command names: ``mode``, ``gpu_budget_max_kw``, ``battery_reserve_pct``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from powerctl.mqtt.commands import COMMANDS, MODES


def _safe_level(s: str) -> str:
    # a topic level must not contain wildcards or separators
    return "".join("_" if c in "/+#\0" else c for c in s)


@dataclass(frozen=True)
class TopicTree:
    prefix: str
    site: str
    module: str

    @property
    def base(self) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), _safe_level(self.site), _safe_level(self.module)) if p)

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def plan(self) -> str:
        return f"{self.base}/plan"

    @property
    def caps(self) -> str:
        return f"{self.base}/caps"

    @property
    def alarms(self) -> str:
        return f"{self.base}/alarms"

    @property
    def commands_state(self) -> str:
        return f"{self.base}/commands/state"

    def command_set(self, name: str) -> str:
        return f"{self.base}/commands/{name}/set"

    def command_result(self, name: str) -> str:
        return f"{self.base}/commands/{name}/result"

    def command_topics(self) -> dict[str, str]:
        """set-topic -> command name, for exactly the configured commands."""
        return {self.command_set(n): n for n in COMMANDS}


# (object id, name, value key in the state JSON, unit, device_class)
_SENSORS = (
    ("pv_kw", "PV power", "pv_kw", "kW", "power"),
    ("battery_kw", "Battery power", "battery_kw", "kW", "power"),
    ("soc_pct", "Battery SoC", "soc_pct", "%", "battery"),
    ("genset_kw", "Genset power", "genset_kw", "kW", "power"),
    ("gpu_kw", "GPU power", "gpu_kw", "kW", "power"),
    ("available_kw", "Available power", "available_kw", "kW", "power"),
    ("stale", "Stale signals", "stale | length", None, None),
    ("control_mode", "Control mode", "mode", None, None),  # plan | safe | hold | manual (what the loop does)
    ("plan_rung", "Plan rung", "plan_rung", None, None),
)
# per battery / genset (object id suffix, name suffix, key in the state's per-device entry, unit, class)
_BATTERY_SENSORS = (("soc_pct", "SoC", "soc_pct", "%", "battery"), ("kw", "power", "p_kw", "kW", "power"))
_GENSET_SENSORS = (("kw", "power", "p_kw", "kW", "power"), ("running", "running", "running", None, None))


def _sensor_rows(batteries: Sequence[str], gensets: Sequence[str]) -> list[tuple[str, str, str, str | None, str | None]]:
    """Every sensor: the site totals, then one set per battery and per genset (the state's
    ``batteries`` / ``gensets`` maps, keyed by device name)."""
    rows = list(_SENSORS)
    for group, names, sensors in (("batteries", batteries, _BATTERY_SENSORS), ("gensets", gensets, _GENSET_SENSORS)):
        for dev in names:
            for oid, label, key, unit, dclass in sensors:
                rows.append((f"{_safe_level(dev)}_{oid}", f"{dev} {label}", f"{group}[{json.dumps(dev)}].{key}", unit, dclass))
    return rows


def homeassistant_discovery(
    tree: TopicTree, limits: Any, discovery_prefix: str = "homeassistant",
    *, batteries: Sequence[str] = (), gensets: Sequence[str] = (),
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) pairs, published retained; limits: a CommandLimits.

    Every template reads a field the state (or, for the mode select, the ``commands/state``
    topic) really publishes: tests/ops/test_homeassistant.py renders each one against the
    daemon's messages. The select shows the operator's mode lease (auto/hold/manual); what the
    loop does (plan/safe/hold/manual) is the "Control mode" sensor."""
    node = _safe_level(f"powerctl_{tree.site}_{tree.module}")
    device = {"identifiers": [node], "name": f"powerctl {tree.site}/{tree.module}", "manufacturer": "powerctl"}
    common = {"availability_topic": tree.status, "payload_available": "online",
              "payload_not_available": "offline", "device": device}
    out: list[tuple[str, dict[str, Any]]] = []
    for oid, name, key, unit, dclass in _sensor_rows(batteries, gensets):
        cfg: dict[str, Any] = {**common, "name": name, "unique_id": f"{node}_{oid}", "state_topic": tree.state,
                               "value_template": f"{{{{ value_json.{key} }}}}"}
        if unit:
            cfg["unit_of_measurement"] = unit
            cfg["state_class"] = "measurement"
        if dclass:
            cfg["device_class"] = dclass
        out.append((f"{discovery_prefix}/sensor/{node}/{oid}/config", cfg))
    out.append((f"{discovery_prefix}/select/{node}/mode/config", {
        **common, "name": "Mode", "unique_id": f"{node}_mode", "options": list(MODES),
        "command_topic": tree.command_set("mode"), "state_topic": tree.commands_state,
        "value_template": "{{ value_json.mode.value if value_json.mode else 'auto' }}",
    }))
    out.append((f"{discovery_prefix}/number/{node}/gpu_budget_max_kw/config", {
        **common, "name": "GPU budget ceiling", "unique_id": f"{node}_gpu_budget_max_kw",
        "command_topic": tree.command_set("gpu_budget_max_kw"), "unit_of_measurement": "kW",
        "min": limits.gpu_budget_min_kw, "max": limits.gpu_budget_max_kw, "step": 1, "mode": "box",
    }))
    if limits.reserve_min_pct is not None:
        out.append((f"{discovery_prefix}/number/{node}/battery_reserve_pct/config", {
            **common, "name": "Battery reserve", "unique_id": f"{node}_battery_reserve_pct",
            "command_topic": tree.command_set("battery_reserve_pct"), "unit_of_measurement": "%",
            "min": limits.reserve_min_pct, "max": limits.reserve_max_pct, "step": 1, "mode": "box",
        }))
    return out


def to_json(obj: Any) -> bytes:
    """Compact JSON; non-finite floats become null (JSON has no NaN)."""
    return json.dumps(_finite(obj), separators=(",", ":"), default=str).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _finite(obj.tolist())
    return obj
