"""Operator commands received over MQTT, held as leases.

A command (mode, GPU budget ceiling, battery reserve) holds only while its lease runs: it expires
``lease_s`` after it was last set unless renewed by sending it again, and the controller falls back
to its own defaults. This is pure logic with an injected clock, so the controller and tests can ask
"what is active now" without any broker.

Payloads: a bare value (``hold``, ``120``) or JSON ``{"value": 120, "lease_s": 30}``; ``lease_s`` may
shorten the configured lease, never extend it. ``{"value": null}``, ``clear`` or an empty payload
ends the lease now. Every result says whether it was accepted and, if not, why.

Commands move the plant, so they are paced like any other change: a command's value may change
(set to a new value, or cleared) at most once per ``min_change_interval_s`` (renewing the same value
is always allowed), and a rise of the GPU budget ceiling (a higher value, or clearing it) reaches the
controller at ``ceiling_rise_kw_per_s`` at most; a lower ceiling applies at once (the safe way).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.statefile import StateFileError, read_state_json

log = logging.getLogger("powerctl.mqtt.commands")

MODES = ("auto", "hold", "manual")
COMMANDS = ("mode", "gpu_budget_max_kw", "battery_reserve_pct")


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """What an operator may ask for; derived from the site's physical limits."""

    gpu_budget_min_kw: float
    gpu_budget_max_kw: float
    reserve_min_pct: float | None  # None: the site has no battery, reserve commands are refused
    reserve_max_pct: float | None

    @classmethod
    def from_site(cls, cfg: SiteConfig) -> CommandLimits:
        """GPU ceiling within [all GPUs at min_w, all at max_w]; reserve within the battery SoC window
        (the tightest window when there are several batteries)."""
        n = cfg.gpu.count
        bats = cfg.by_nature(Nature.BATTERY)
        lo = max((b.limits.soc_min_pct for b in bats), default=None)
        hi = min((b.limits.soc_max_pct for b in bats), default=None)
        return cls(n * cfg.gpu.min_w / 1000.0, n * cfg.gpu.max_w / 1000.0, lo, hi)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    value: str | float
    set_at_s: float
    expires_at_s: float

    def as_dict(self, now_s: float) -> dict[str, Any]:
        return {"value": self.value, "set_at_s": self.set_at_s, "expires_at_s": self.expires_at_s,
                "remaining_s": max(0.0, self.expires_at_s - now_s)}


@dataclass(frozen=True, slots=True)
class CommandResult:
    name: str
    accepted: bool
    reason: str  # why refused, or what happened ("set", "renewed", "cleared")
    value: str | float | None = None
    expires_at_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.name, "accepted": self.accepted, "reason": self.reason,
                "value": self.value, "expires_at_s": self.expires_at_s}


class CommandError(ValueError):
    """A command that is refused; the message is published back to the operator."""


def parse_command_payload(payload: bytes) -> tuple[Any, float | None]:
    """(value, lease_s or None). Raises CommandError for malformed payloads."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8") from None
    if text == "" or text.lower() == "clear":
        return None, None
    if text[0] in "{[":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"not JSON: {exc.msg}") from None
        except RecursionError:
            raise CommandError("not JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer over Python's 4300-digit conversion limit
            raise CommandError(f"not JSON: {str(exc)[:60]}") from None
        if not isinstance(doc, dict) or "value" not in doc:
            raise CommandError('JSON command needs a "value" key')
        unknown = set(doc) - {"value", "lease_s", "id"}
        if unknown:
            raise CommandError(f"unknown key(s) {sorted(unknown)} (allowed: value, lease_s, id)")
        lease = doc.get("lease_s")
        if lease is not None and (isinstance(lease, bool) or not isinstance(lease, int | float)):
            raise CommandError("lease_s must be a number of seconds")
        try:
            return doc["value"], None if lease is None else float(lease)
        except OverflowError:
            raise CommandError("lease_s out of range") from None
    try:
        return json.loads(text), None  # bare numbers, "null", quoted strings
    except ValueError:
        return text, None  # bare words: hold, auto


class CommandState:
    """Active command leases; every query ages them against ``clock``."""

    def __init__(self, limits: CommandLimits, lease_s: float = 60.0, clock: Callable[[], float] | None = None,
                 state_path: str | Path | None = None, *, min_change_interval_s: float = 0.0,
                 ceiling_rise_kw_per_s: float | None = None) -> None:
        """``state_path``: a JSON file the leases are kept in (written atomically on every change), so
        a restarted daemon honours the commands still running; needs a wall ``clock``.
        ``ceiling_rise_kw_per_s``: GPU kW/s (None: a rise applies at once)."""
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        import time

        self.limits = limits
        self.lease_s = lease_s
        self.clock = clock or time.monotonic
        self.min_change_interval_s = min_change_interval_s
        self.ceiling_rise_kw_per_s = ceiling_rise_kw_per_s
        self._changed_at: dict[str, float] = {}  # command -> when its value last changed
        self._ceiling: tuple[float, float] | None = None  # (effective ceiling kW, at) while slewing
        self._leases: dict[str, Lease] = {}
        self._state_path = Path(state_path) if state_path is not None else None
        self._load()

    @classmethod
    def for_site(cls, cfg: SiteConfig, clock: Callable[[], float], state_path: str | Path | None = None
                 ) -> CommandState:
        """The daemon's command state: lease, change pacing and ceiling slew from the config (a
        ceiling rises no faster than caps may: ``gpu.ramp_up_kw_per_s`` is site kW/s)."""
        m = cfg.mqtt
        lease_s = m.command_lease_s if m is not None else 60.0
        interval_s = m.command_min_interval_s if m is not None else 0.0
        return cls(CommandLimits.from_site(cfg), lease_s, clock, state_path, min_change_interval_s=interval_s,
                   ceiling_rise_kw_per_s=cfg.gpu.ramp_up_kw_per_s / (1.0 + cfg.gpu.facility_overhead))

    # --- persistence ----------------------------------------------------------------------------

    def _load(self) -> None:
        """Leases from a previous run that are still running; anything unreadable is ignored (the
        safe default is no command), a lease is never longer than ``lease_s`` from now."""
        if self._state_path is None:
            return
        try:  # bounded: size, nesting, regular files only (powerctl/statefile.py)
            doc = read_state_json(self._state_path)
            if doc is None:
                return
            items = doc["leases"].items()
        except StateFileError as exc:
            log.warning("command leases: %s: starting with no lease", exc)
            return
        except (KeyError, AttributeError, TypeError) as exc:
            log.warning("command leases %s: no 'leases' object (%s): starting with no lease", self._state_path, exc)
            return
        now = self.clock()
        for name, d in items:
            try:
                value = self._validate(name, d["value"]) if name in COMMANDS else None
                expires = min(float(d["expires_at_s"]), now + self.lease_s)
                set_at = float(d["set_at_s"])
            except (CommandError, KeyError, TypeError, ValueError) as exc:
                log.warning("command lease %s from %s dropped: %s", name, self._state_path, exc)
                continue
            if value is not None and expires > now:
                self._leases[name] = Lease(name, value, min(set_at, now), expires)
        if self._leases:
            log.info("command leases resumed: %s", ", ".join(f"{n}={le.value}" for n, le in self._leases.items()))

    def _save(self) -> None:
        """Write the leases atomically (temp file, fsync, rename): a crash leaves the old or the new."""
        if self._state_path is None:
            return
        doc = {"leases": {n: {"value": le.value, "set_at_s": le.set_at_s, "expires_at_s": le.expires_at_s}
                          for n, le in self._leases.items()}}
        tmp = self._state_path.with_name(f".{self._state_path.name}.{os.getpid()}.tmp")
        try:
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(doc))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.error("command leases: cannot write %s: %s", self._state_path, exc)

    # --- changes ------------------------------------------------------------------------------

    def apply(self, name: str, payload: bytes) -> CommandResult:
        """Parse, validate and apply one command payload; never raises."""
        try:
            value, lease_s = parse_command_payload(payload)
        except CommandError as exc:
            return CommandResult(name, False, str(exc))
        return self.set(name, value, lease_s)

    def set(self, name: str, value: Any, lease_s: float | None = None) -> CommandResult:
        """Validate and set (or renew) a lease; ``value=None`` clears it."""
        if name not in COMMANDS:
            return CommandResult(name, False, f"unknown command (allowed: {', '.join(COMMANDS)})")
        now = self.clock()
        if value is None:
            if name not in self.active(now):
                return CommandResult(name, True, "was not active")
            if (wait := self._too_soon(name, now)) is not None:
                return CommandResult(name, False, wait)
            self._note_ceiling(now)
            self._leases.pop(name, None)
            self._changed_at[name] = now
            self._save()
            return CommandResult(name, True, "cleared")
        if lease_s is not None and not 0 < lease_s <= self.lease_s:  # NaN fails the comparison too
            return CommandResult(name, False, f"lease_s {lease_s:g} out of range (0, {self.lease_s:g}] s")
        try:
            checked = self._validate(name, value)
        except CommandError as exc:
            return CommandResult(name, False, str(exc), value if isinstance(value, str | float | int) else None)
        renewed = name in self.active(now) and self._leases[name].value == checked
        if not renewed and (wait := self._too_soon(name, now)) is not None:
            return CommandResult(name, False, wait, checked)
        if not renewed:
            self._note_ceiling(now)
            self._changed_at[name] = now
        lease = Lease(name, checked, now, now + (lease_s if lease_s is not None else self.lease_s))
        self._leases[name] = lease
        self._save()
        return CommandResult(name, True, "renewed" if renewed else "set", checked, lease.expires_at_s)

    def _too_soon(self, name: str, now: float) -> str | None:
        """Why a change of ``name`` is refused now (rate limit), or None."""
        last = self._changed_at.get(name)
        if last is None or self.min_change_interval_s <= 0:
            return None
        wait_s = last + self.min_change_interval_s - now
        if wait_s <= 0 or wait_s > self.min_change_interval_s:  # (a clock step back: allow)
            return None
        return (f"rate-limited: {name} changed {now - last:.1f} s ago, at most one change per "
                f"{self.min_change_interval_s:g} s (next in {wait_s:.1f} s)")

    def _note_ceiling(self, now: float) -> None:
        """Before the ceiling lease changes: remember where the effective ceiling is, so a rise
        starts from there."""
        if self.ceiling_rise_kw_per_s is not None:
            eff = self.gpu_budget_ceiling_kw(now)
            self._ceiling = None if eff is None else (eff, now)

    def on_clock_step(self, step_s: float) -> None:
        """The clock was stepped: leases keep their real duration (a step back must not stretch one)."""
        self._leases = {n: Lease(n, lease.value, lease.set_at_s + step_s, lease.expires_at_s + step_s)
                        for n, lease in self._leases.items()}
        self._changed_at = {n: t + step_s for n, t in self._changed_at.items()}
        if self._ceiling is not None:
            self._ceiling = (self._ceiling[0], self._ceiling[1] + step_s)
        self._save()

    def _validate(self, name: str, value: Any) -> str | float:
        lim = self.limits
        if name == "mode":
            if not isinstance(value, str) or value.lower() not in MODES:
                raise CommandError(f"mode {value!r} is not one of {', '.join(MODES)}")
            return value.lower()
        try:  # float() of a huge JSON integer overflows: that is not a finite number either
            v = math.nan if isinstance(value, bool) or not isinstance(value, int | float) else float(value)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v):
            raise CommandError(f"{name} must be a finite number (got {str(value)[:40]!r})")
        if name == "gpu_budget_max_kw":
            if not lim.gpu_budget_min_kw <= v <= lim.gpu_budget_max_kw:
                raise CommandError(
                    f"gpu_budget_max_kw {v:g} out of range [{lim.gpu_budget_min_kw:g}, {lim.gpu_budget_max_kw:g}] kW "
                    "(all GPUs at min_w .. all at max_w)"
                )
            return v
        if lim.reserve_min_pct is None or lim.reserve_max_pct is None:
            raise CommandError("battery_reserve_pct: the site has no battery")
        if not lim.reserve_min_pct <= v <= lim.reserve_max_pct:
            raise CommandError(
                f"battery_reserve_pct {v:g} out of range [{lim.reserve_min_pct:g}, {lim.reserve_max_pct:g}] % "
                "(the battery SoC window)"
            )
        return v

    # --- queries ------------------------------------------------------------------------------

    def active(self, now: float | None = None) -> dict[str, Lease]:
        """Leases still running at ``now`` (expired ones are forgotten)."""
        t = self.clock() if now is None else now
        for name in [n for n, lease in self._leases.items() if lease.expires_at_s <= t]:
            del self._leases[name]
        return dict(self._leases)

    def mode(self, now: float | None = None) -> str:
        """``auto`` unless an operator lease says otherwise."""
        lease = self.active(now).get("mode")
        return str(lease.value) if lease else "auto"

    def gpu_budget_ceiling_kw(self, now: float | None = None) -> float | None:
        """The ceiling in force: the lease's value, except that a rise (a higher value, the lease
        cleared or expired) climbs at ``ceiling_rise_kw_per_s`` from where the ceiling was."""
        t = self.clock() if now is None else now
        lease = self.active(t).get("gpu_budget_max_kw")
        target = float(lease.value) if lease else None
        rate = self.ceiling_rise_kw_per_s
        if rate is None:
            return target
        top = self.limits.gpu_budget_max_kw  # no ceiling = every GPU at max_w
        goal = top if target is None else target
        if self._ceiling is None:
            eff = goal if target is not None else None  # first ceiling: a cut, at once
        else:
            prev, at = self._ceiling
            dt_s = min(max(0.0, t - at), 2.0)  # a long pause or a clock jump hands out no big rise
            eff = min(goal, prev + rate * dt_s)
            if target is None and eff >= top - 1e-9:
                eff = None  # climbed back to "no ceiling"
        self._ceiling = None if eff is None else (eff, t)
        return eff

    def battery_reserve_pct(self, now: float | None = None) -> float | None:
        lease = self.active(now).get("battery_reserve_pct")
        return float(lease.value) if lease else None

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready view for the ``commands/state`` topic."""
        t = self.clock() if now is None else now
        active = self.active(t)
        return {name: (active[name].as_dict(t) if name in active else None) for name in COMMANDS}
