"""Telemetry and MQTT payloads of the daemon: one cycle, one plan, guard events, other events."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from powerctl.config import SiteConfig
from powerctl.control.core import Commands
from powerctl.control.guard import GuardDecision
from powerctl.gpu_io import GPU_DEVICE
from powerctl.grid_billing import plan_grid_fields, plan_grid_payload
from powerctl.guard_events import GuardEvents
from powerctl.optimizer import Plan
from powerctl.process_image import ProcessImage
from powerctl.status import Status
from powerctl.telemetry import Telemetry

if TYPE_CHECKING:
    from powerctl.mqtt.link import MqttLink

log = logging.getLogger("powerctl")


class Publisher:
    def __init__(self, cfg: SiteConfig, telemetry: Telemetry, mqtt: MqttLink | None,
                 clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.telemetry = telemetry
        self.mqtt = mqtt
        self.clock = clock
        # per-node GPU rows (tag node), set by the daemon when the GPUs are on node agents
        self.gpu_node_rows: Callable[[Mapping[int, float]], list[tuple[str, dict[str, float]]]] | None = None
        # guard decisions -> state changes (a cut starts / ends, safe cap, shed, restore)
        self.guard_events = GuardEvents()
        self.on_alarm: Callable[[dict[str, Any]], None] | None = None  # the HTTP alarm list
        self.on_plan: Callable[[dict[str, Any], Plan], None] | None = None  # /api/plan and metrics

    def alarm(self, doc: dict[str, Any]) -> None:
        """An alarm for the operator: MQTT ``alarms`` and the status page."""
        if self.mqtt is not None:
            self.mqtt.publish_alarm(doc)
        if self.on_alarm is not None:
            self.on_alarm(doc)

    def event(self, kind: str, fields: Mapping[str, Any], device: str | None = None) -> None:
        self.telemetry.emit("event", {"kind": kind, **fields}, self.clock(), device)

    def guard(self, d: GuardDecision) -> None:
        # once per state change, not per 200 ms tick (powerctl/guard_events.py); the log filter
        # (powerctl/logs.py) rate-limits what still repeats
        for e in self.guard_events.on_decision(d, self.clock()):
            log.log(e.level, e.fmt, *e.args)
            self.event(e.kind, {k: e.alarm[k] for k in ("reason", "class", "gpus") if k in e.alarm})
            self.alarm(e.alarm)
        # plausibility findings (powerctl/control/plausibility.py), once each when raised and cleared
        for f in d.findings:
            self.event("implausible", {"finding": f})
            self.alarm({"t_s": self.clock(), "kind": "implausible", "reason": f})
        for f in d.cleared:
            self.event("plausible_again", {"finding": f})
            self.alarm({"t_s": self.clock(), "kind": "plausible_again", "reason": f})

    def cycle(self, now: float, st: Status, cmd: Commands, image: ProcessImage, caps_w: Mapping[int, float]) -> None:
        t = self.telemetry
        per_device: dict[str, dict[str, Any]] = {}
        for d, s, sig in image.items(now):
            if sig.good:
                per_device.setdefault(d, {})[s] = sig.value
        for d, fields_d in per_device.items():
            nature = "gpu" if d == GPU_DEVICE else self.cfg.device(d).nature.value
            t.emit(nature, fields_d, now, device=d)
        fields: dict[str, Any] = {
            "mode": str(st.mode),
            "stale_signals": len(st.stale),
            "caps_w_mean": st.caps_w_mean,
            "guard_cuts": st.guard_cuts,
        }
        if st.available_kw is not None:
            fields["available_kw"] = st.available_kw
        if st.last_solve_ms is not None:
            fields["solve_ms"] = st.last_solve_ms
        t.emit("site", fields, now)
        if self.mqtt is not None:
            self.mqtt.publish_state(st.doc(self.cfg))  # every device (powerctl.site_state)
            self.mqtt.publish_caps(
                {"t_s": now, "budget_kw": cmd.gpu_budget_kw, "caps_w": {str(i): c for i, c in caps_w.items()}}
            )
        for cls, kw in cmd.gpu_budget_kw.items():
            t.emit("gpu", {"budget_kw": kw}, now, device=GPU_DEVICE, tags={"class": cls})
        if self.gpu_node_rows is not None:
            for node, fields_n in self.gpu_node_rows(caps_w):
                t.emit("gpu", fields_n, now, device=GPU_DEVICE, tags={"node": node})

    def plan(self, now: float, plan: Plan) -> None:
        fields: dict[str, Any] = {"solve_ms": plan.solve_time_s * 1000.0, "rung": plan.rung, "status": plan.status}
        if plan.battery_kw.size:
            fields["battery_kw"] = float(plan.battery_kw[:, 0].sum())
        if plan.genset_kw.size:
            fields["genset_kw"] = float(plan.genset_kw[:, 0].sum())
        fields["gpu_kw"] = float(plan.gpu_kw[:, 0].sum())
        fields["pv_kw"] = float(plan.pv_kw[:, 0].sum()) if plan.pv_kw.size else 0.0
        fields["unserved_kw"] = float(plan.unserved_kw[0])
        fields.update(plan_grid_fields(plan))  # grid-tied sites: grid power, prices and their source
        fields.update(plan_why_fields(plan))  # commitment rung, MIP gap, slack names and sizes
        self.telemetry.emit("plan", fields, now)
        if self.mqtt is not None or self.on_plan is not None:
            steps = np.asarray(plan.steps_s, dtype=float)
            doc: dict[str, Any] = (
                {
                    "t_s": now, "rung": plan.rung, "status": plan.status, "solver": plan.solver,
                    "solve_ms": plan.solve_time_s * 1000.0,
                    "step_start_s": (np.concatenate([[0.0], np.cumsum(steps)[:-1]])).tolist(),
                    "gpu_kw": plan.gpu_kw.sum(axis=0).tolist(),
                    "battery_kw": plan.battery_kw.sum(axis=0).tolist() if plan.battery_kw.size else [],
                    "genset_kw": plan.genset_kw.sum(axis=0).tolist() if plan.genset_kw.size else [],
                    "pv_kw": plan.pv_kw.sum(axis=0).tolist() if plan.pv_kw.size else [],
                    "soc_pct": plan.soc_pct.tolist(),
                    "slack": [str(x) for x in plan.slack],
                    "commitment": plan.commitment,
                    "mip_gap": None if math.isnan(plan.mip_gap) else plan.mip_gap,
                    "explain": plan.explain(),
                    **plan_grid_payload(plan),
                }
            )
            if self.mqtt is not None:
                self.mqtt.publish_plan(doc)
            if self.on_plan is not None:
                self.on_plan(doc, plan)


def plan_why_fields(plan: Plan) -> dict[str, Any]:
    """Telemetry fields that say why: the commitment's rung, the MIP gap, and per slack constraint
    its largest violation (kW) and energy (kWh), e.g. ``slack_power_balance_unserved_load_kw``."""
    out: dict[str, Any] = {"commitment": plan.commitment, "slack_count": len(plan.slack),
                           "notes": len(plan.notes)}
    if not math.isnan(plan.mip_gap):
        out["mip_gap"] = plan.mip_gap
    for sl in plan.slack:
        name = sl.constraint.replace(".", "_")
        out[f"slack_{name}_kw"] = sl.max_kw
        out[f"slack_{name}_kwh"] = sl.energy_kwh
    return out
