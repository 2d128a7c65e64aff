"""MQTT devices: which topics feed which process-image signals, and how to decode them.

A profile with ``protocol: mqtt`` describes its signals in its ``mqtt`` section::

    mqtt:
      format: venus                    # default payload format (see powerctl.mqtt.payload)
      keepalive: {topic: "R/{portal_id}/keepalive", period_s: 30,
                  first_payload: "", payload: '{"keepalive-options": ["suppress-republish"]}'}
      availability: {topic: "tele/{name}/LWT", offline: ["Offline"]}
      signals:
        soc_pct: {topic: "N/{portal_id}/system/0/Dc/Battery/Soc", unit: "%", valid_min: 0, valid_max: 100}
        p_kw:    {topic: "N/{portal_id}/system/0/Dc/Battery/Power", unit: W, sign: -1}

Topic templates may use ``{name}`` (the device name in the site config) and ``{portal_id}``
(``transport.portal_id``). The site config's ``transport.topics`` replaces a signal's topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from powerctl.config import MqttTopics, SiteConfig
from powerctl.mqtt.payload import FORMATS, decode
from powerctl.natures import Nature, signal_spec
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles.model import Profile, ProfileError, load_profile, signal_factor


@dataclass(frozen=True, slots=True)
class Binding:
    """One topic feeding one signal of one device."""

    device: str
    nature: Nature
    signal: str
    topic: str
    fmt: str
    path: str | None = None
    factor: float = 1.0  # unit conversion into the signal's unit, sign included
    valid_min: float | None = None  # engineering value outside [min, max] = invalid
    valid_max: float | None = None


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A request the device needs to keep publishing (Victron Venus ``R/<portal>/keepalive``)."""

    device: str
    topic: str
    period_s: float
    payload: bytes
    first_payload: bytes  # sent after every (re)connect: asks for a full republish


@dataclass(frozen=True, slots=True)
class Availability:
    device: str
    topic: str
    offline: frozenset[str]


@dataclass
class MqttSources:
    by_topic: dict[str, list[Binding]] = field(default_factory=dict)
    keepalives: list[Keepalive] = field(default_factory=list)
    availability: dict[str, list[Availability]] = field(default_factory=dict)

    def topics(self) -> list[str]:
        """Every topic to subscribe to (exact topics, no wildcards)."""
        return sorted(set(self.by_topic) | set(self.availability))

    def signals(self) -> dict[str, set[tuple[Nature, str]]]:
        out: dict[str, set[tuple[Nature, str]]] = {}
        for bindings in self.by_topic.values():
            for b in bindings:
                out.setdefault(b.device, set()).add((b.nature, b.signal))
        return out

    def handle(self, topic: str, payload: bytes, image: ProcessImage, now: float) -> tuple[int, list[str]]:
        """Apply one message; returns (signals updated with a good value, problems)."""
        good, problems = 0, []
        for av in self.availability.get(topic, []):
            if payload.decode("utf-8", "replace").strip() in av.offline:
                image.mark_device(av.device, Quality.STALE, now, f"device announced offline on {topic}")
        for b in self.by_topic.get(topic, []):
            d = decode(b.fmt, payload, b.path)
            if d.gone:
                image.mark(b.device, b.signal, Quality.STALE, now, d.problem)
                continue
            if d.value is None:
                image.mark(b.device, b.signal, Quality.INVALID, now, f"{topic}: {d.problem}")
                problems.append(f"{b.device}.{b.signal}: {d.problem}")
                continue
            if (b.valid_min is not None and d.value < b.valid_min) or (
                b.valid_max is not None and d.value > b.valid_max
            ):
                reason = f"{d.value:g} outside [{b.valid_min}, {b.valid_max}]"
                image.mark(b.device, b.signal, Quality.INVALID, now, f"{topic}: {reason}")
                problems.append(f"{b.device}.{b.signal}: {reason}")
                continue
            image.update(b.device, b.signal, d.value * b.factor, now)
            good += 1
        return good, problems


def _fill(template: str, name: str, portal_id: str | None, where: str) -> str:
    if "{portal_id}" in template and not portal_id:
        raise ProfileError(f"{where}: topic {template!r} needs transport.portal_id")
    try:
        topic = template.format(name=name, portal_id=portal_id or "")
    except (KeyError, IndexError, ValueError) as exc:
        raise ProfileError(f"{where}: topic {template!r}: bad placeholder {exc}") from None
    if not topic or any(c in topic for c in "+#\0"):
        raise ProfileError(f"{where}: topic {topic!r} must be a non-empty topic without wildcards")
    return topic


def device_bindings(
    name: str, nature: Nature, profile: Profile, transport: MqttTopics, where: str
) -> tuple[list[Binding], list[Keepalive], list[Availability]]:
    """Bindings for one MQTT device; ProfileError naming the device, profile and field."""
    sec = profile.mqtt
    where_p = f"{where} (profile {profile.key}, {profile.path})"
    sigs = sec.get("signals") or {}
    if not sigs:
        raise ProfileError(f"{where_p}: mqtt.signals is empty: an MQTT profile must list its signals")
    unknown = set(transport.topics) - set(sigs)
    if unknown:
        raise ProfileError(f"{where}: transport.topics: {sorted(unknown)} not in the profile's mqtt.signals "
                           f"({', '.join(sorted(sigs))})")
    default_fmt = sec.get("format", "plain")
    out: list[Binding] = []
    for sig, spec in sigs.items():
        w = f"{where_p}: mqtt.signals.{sig}"
        try:
            sspec = signal_spec(nature, sig)
        except KeyError as exc:
            raise ProfileError(f"{w}: {exc.args[0]}") from None
        fmt = spec.get("format", default_fmt)
        if fmt not in FORMATS:
            raise ProfileError(f"{w}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        factor = signal_factor(spec.get("unit", ""), sspec.unit, w) * float(spec.get("sign", 1))
        topic = _fill(transport.topics.get(sig, spec["topic"]), name, transport.portal_id, w)
        out.append(Binding(name, nature, sig, topic, fmt, spec.get("path"), factor,
                           spec.get("valid_min"), spec.get("valid_max")))
    kas: list[Keepalive] = []
    if ka := sec.get("keepalive"):
        kas.append(Keepalive(
            name, _fill(ka["topic"], name, transport.portal_id, f"{where_p}: mqtt.keepalive"), float(ka["period_s"]),
            str(ka.get("payload", "")).encode(), str(ka.get("first_payload", ka.get("payload", ""))).encode(),
        ))
    avs: list[Availability] = []
    if av := sec.get("availability"):
        avs.append(Availability(
            name, _fill(av["topic"], name, transport.portal_id, f"{where_p}: mqtt.availability"),
            frozenset(av.get("offline", ["Offline", "offline"])),
        ))
    return out, kas, avs


def build_sources(site: SiteConfig, load: Callable[[str], Profile] = load_profile) -> MqttSources:
    """Every MQTT device of the site, from its profile and transport."""
    src = MqttSources()
    for i, d in enumerate(site.devices):
        if not isinstance(d.transport, MqttTopics):
            continue
        where = f"devices[{i}] ({d.name})"
        profile = load(d.profile)
        if profile.protocol != "mqtt":
            raise ProfileError(f"{where}: transport is mqtt but profile {profile.key} has protocol {profile.protocol!r}")
        bindings, kas, avs = device_bindings(d.name, d.nature, profile, d.transport, where)
        for b in bindings:
            src.by_topic.setdefault(b.topic, []).append(b)
        src.keepalives += kas
        for a in avs:
            src.availability.setdefault(a.topic, []).append(a)
    return src


def declare_signals(src: MqttSources, site: SiteConfig, image: ProcessImage) -> None:
    """Declare the MQTT devices' signals in the process image (max age from the device config)."""
    for device, sigs in src.signals().items():
        max_age = site.device(device).signal_max_age_s
        for nature, sig in sorted(sigs):
            image.declare(device, nature, sig, max_age)
