"""MQTT: device sources, state/plan/caps/alarm publishing, operator commands as leases.

- ``MqttLink`` (``link.py``): the daemon's connection, see its docstring;
- ``CommandState``, ``CommandLimits`` (``commands.py``): pure lease logic with an injected clock;
- ``TopicTree`` (``topics.py``): the documented topic tree, Home Assistant discovery;
- ``build_sources`` (``sources.py``): MQTT device profiles -> topic bindings;
- ``decode`` (``payload.py``): plain / JSON path / Victron Venus / Tasmota / Shelly payloads.
"""

from powerctl.mqtt.commands import COMMANDS, MODES, CommandLimits, CommandResult, CommandState, Lease
from powerctl.mqtt.link import MqttLink, explain_error
from powerctl.mqtt.payload import Decoded, decode
from powerctl.mqtt.sources import MqttSources, build_sources, declare_signals
from powerctl.mqtt.topics import TopicTree, homeassistant_discovery

__all__ = [
    "COMMANDS",
    "MODES",
    "CommandLimits",
    "CommandResult",
    "CommandState",
    "Decoded",
    "Lease",
    "MqttLink",
    "MqttSources",
    "TopicTree",
    "build_sources",
    "declare_signals",
    "decode",
    "explain_error",
    "homeassistant_discovery",
]
