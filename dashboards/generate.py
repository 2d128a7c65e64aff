"""Writes the Grafana dashboards and alert rules in this folder from one description.

    python dashboards/generate.py        # rewrites the JSON/YAML next to this file

The files are checked in (Grafana provisions them as they are); tests/telemetry/test_dashboard.py
checks that they are what this script writes, that every query uses only the telemetry schema
(powerctl/telemetry/schema.py) and that each panel's units match the schema's.

Datasource: the dashboards use the ``datasource`` template variable (InfluxDB, Flux), so they work
both when imported by hand and when provisioned from files (provisioning/datasources/influxdb.yaml
names the source ``powerctl-influxdb``); the alert rules name that uid directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "influxdb", "uid": "${datasource}"}
ALERT_DS_UID = "powerctl-influxdb"
SCHEMA_VERSION = 39
# schema unit -> Grafana unit id
UNITS = {"kW": "kwatt", "W": "watt", "%": "percent", "ms": "ms", "s": "s", "": "short"}
FILTER = ('  |> filter(fn: (r) => contains(value: r.site, set: ${site:json}) and '
          'contains(value: r.module, set: ${module:json}))\n')


def flux(measurement: str, fields: list[str], *, fn: str = "mean", window: bool = True,
         keep: str = "", tail: str = "", bucket: str = "${bucket}") -> str:
    field_expr = " or ".join(f'r._field == "{f}"' for f in fields)
    q = (f'from(bucket: "{bucket}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'
         f'  |> filter(fn: (r) => r._measurement == "{measurement}")\n{FILTER}'
         f"  |> filter(fn: (r) => {field_expr})\n")
    if keep:
        q += f'  |> keep(columns: ["_time", "_value", "_field", {keep}])\n'
    if window:
        q += f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)\n"
    return q + tail


def target(ref: str, query: str) -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "query": query}


def override_unit(ref: str, unit: str, right: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: list[dict[str, Any]] = [{"id": "unit", "value": unit}]
    if right:
        props.append({"id": "custom.axisPlacement", "value": "right"})
    for k, v in (extra or {}).items():
        props.append({"id": k, "value": v})
    return {"matcher": {"id": "byFrameRefID", "options": ref}, "properties": props}


class Layout:
    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(self, kind: str, title: str, unit: str, targets: list[dict[str, Any]], *, w: int = 12, h: int = 8,
              overrides: list[dict[str, Any]] | None = None, options: dict[str, Any] | None = None,
              description: str = "", defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        p = {
            "id": self.next_id, "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": self.place(w, h),
            "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": overrides or []},
            "options": options or {}, "targets": targets,
        }
        self.next_id += 1
        return p


def stat(lay: Layout, title: str, unit: str, q: str, *, decimals: int = 1, thresholds: list[dict[str, Any]] | None = None,
         mappings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"decimals": decimals}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        defaults["color"] = {"mode": "thresholds"}
    if mappings:
        defaults["mappings"] = mappings
    return lay.panel("stat", title, unit, [target("A", q)], w=4, h=4, defaults=defaults,
                     options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                              "colorMode": "background" if thresholds else "value", "graphMode": "area",
                              "textMode": "value_and_name"})


GREEN, ORANGE, RED = "green", "orange", "red"


def _steps(*pairs: tuple[float | None, str]) -> list[dict[str, Any]]:
    return [{"value": v, "color": c} for v, c in pairs]


def templating() -> dict[str, Any]:
    def tag_var(name: str, predicate: str = "") -> dict[str, Any]:
        pred = f", predicate: (r) => {predicate}" if predicate else ""
        return {"name": name, "label": name, "type": "query", "datasource": DS, "refresh": 2, "multi": True,
                "includeAll": True, "current": {"text": ["All"], "value": ["$__all"]}, "sort": 1,
                "query": f'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "${{bucket}}", tag: "{name}"{pred})'}

    return {"list": [
        {"name": "datasource", "label": "InfluxDB", "type": "datasource", "query": "influxdb",
         "current": {"text": "powerctl-influxdb", "value": "powerctl-influxdb"}},
        {"name": "bucket", "label": "bucket", "type": "textbox", "query": "powerctl",
         "current": {"text": "powerctl", "value": "powerctl"}},
        tag_var("site"),
        tag_var("module", "contains(value: r.site, set: ${site:json})"),
    ]}


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], tags: list[str]) -> dict[str, Any]:
    return {"uid": uid, "title": title, "description": description, "tags": tags, "timezone": "utc",
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "refresh": "10s",
            "time": {"from": "now-6h", "to": "now"}, "templating": templating(), "annotations": {"list": []},
            "panels": panels}


MODE_MAPPINGS = [{"type": "value", "options": {
    "plan": {"text": "plan", "color": GREEN, "index": 0}, "safe": {"text": "safe cap", "color": RED, "index": 1},
    "hold": {"text": "hold", "color": ORANGE, "index": 2}, "manual": {"text": "manual", "color": ORANGE, "index": 3},
    "primary": {"text": "primary", "color": GREEN, "index": 4}, "secondary": {"text": "secondary", "color": "yellow", "index": 5},
    "rule": {"text": "rules", "color": ORANGE, "index": 6}}}]


def site_dashboard() -> dict[str, Any]:
    lay = Layout()
    last = "  |> last()\n"
    panels = [
        stat(lay, "PV now", "kwatt", flux("pv", ["p_kw"], window=False, tail=last + '  |> group()\n  |> sum()\n')),
        stat(lay, "Battery SoC now", "percent", flux("battery", ["soc_pct"], window=False, tail=last),
             thresholds=_steps((None, RED), (20, ORANGE), (40, GREEN))),
        stat(lay, "Genset now", "kwatt", flux("genset", ["p_kw"], window=False, tail=last)),
        stat(lay, "GPU power now", "kwatt", flux("gpu", ["p_kw"], window=False, tail=last)),
        stat(lay, "Available supply now", "kwatt", flux("site", ["available_kw"], window=False, tail=last)),
        stat(lay, "Stale signals now", "short", flux("site", ["stale_signals"], window=False, tail=last), decimals=0,
             thresholds=_steps((None, GREEN), (1, RED))),
        lay.panel("timeseries", "Power flows: PV, battery (+ discharge), genset, GPU, meter", "kwatt", [
            target("A", flux("pv", ["p_kw"])), target("B", flux("battery", ["p_kw"])),
            target("C", flux("genset", ["p_kw"])), target("D", flux("gpu", ["p_kw"])),
            target("E", flux("meter", ["p_kw"]))], w=24,
            options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "mean", "max"]}}),
        lay.panel("state-timeline", "Mode and plan rung", "short", [
            target("A", flux("site", ["mode"], window=False)), target("B", flux("plan", ["rung"], window=False))],
            w=24, h=5, defaults={"mappings": MODE_MAPPINGS, "color": {"mode": "thresholds"}},
            description="mode: plan / safe cap / hold / manual; rung: which solver rung made the plan (primary, "
                        "secondary, rules, safe)",
            options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.8}),
        lay.panel("timeseries", "Battery state of charge", "percent", [target("A", flux("battery", ["soc_pct"]))],
                  defaults={"min": 0, "max": 100}),
        lay.panel("timeseries", "Genset: output (kW), running (right), fuel (%, right)", "kwatt", [
            target("A", flux("genset", ["p_kw"])), target("B", flux("genset", ["running"], fn="max")),
            target("C", flux("genset", ["fuel_pct"]))],
            overrides=[override_unit("B", "short", right=True, extra={"custom.drawStyle": "line", "custom.lineInterpolation": "stepAfter"}),
                       override_unit("C", "percent", right=True)]),
        lay.panel("timeseries", "GPU budget per workload class", "kwatt", [target("A", flux("gpu", ["budget_kw"]))],
                  options={"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "mean"]}}),
        lay.panel("timeseries", "GPU caps (mean over GPUs)", "watt", [target("A", flux("site", ["caps_w_mean"]))]),
        lay.panel("timeseries", "Planned (first step) vs actual", "kwatt", [
            target("A", flux("plan", ["gpu_kw", "battery_kw", "genset_kw", "pv_kw"])),
            target("B", flux("gpu", ["p_kw"])), target("C", flux("battery", ["p_kw"]))]),
        lay.panel("timeseries", "Solve time", "ms", [target("A", flux("plan", ["solve_ms"], fn="max"))],
                  defaults={"custom": {"drawStyle": "points"}}),
        lay.panel("timeseries", "Available supply (guard)", "kwatt", [target("A", flux("site", ["available_kw"]))]),
        lay.panel("timeseries", "Stale signals and guard cuts", "short", [
            target("A", flux("site", ["stale_signals"], fn="max")), target("B", flux("site", ["guard_cuts"], fn="last"))]),
        lay.panel("timeseries", "Unserved load in the plan", "kwatt", [target("A", flux("plan", ["unserved_kw"], fn="max"))],
                  defaults={"color": {"mode": "fixed", "fixedColor": RED}}),
        lay.panel("table", "Events", "short", [target("A", flux(
            "event", ["kind", "reason", "message", "class"], window=False,
            tail='  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                 '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 200)\n'))], w=24, h=10),
    ]
    return dashboard("powerctl-site", "powerctl site", "One powerctl module (or several: site and module are "
                     "multi-select): power flows, SoC, genset, GPU budget and caps, plan, mode, events.",
                     panels, ["powerctl"])


def fleet_dashboard() -> dict[str, Any]:
    lay = Layout()
    by_module = '  |> last()\n  |> group(columns: ["site", "module"])\n  |> sum()\n'
    legend = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "min", "max"]}}
    bar = {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    panels = [
        lay.panel("bargauge", "Available power by module (now)", "kwatt",
                  [target("A", flux("site", ["available_kw"], window=False, tail=by_module))], w=6, h=9, options=bar),
        lay.panel("bargauge", "PV power by module (now)", "kwatt",
                  [target("A", flux("pv", ["p_kw"], window=False, tail=by_module))], w=6, h=9, options=bar),
        lay.panel("bargauge", "GPU power by module (now)", "kwatt",
                  [target("A", flux("gpu", ["p_kw"], window=False, tail=by_module))], w=6, h=9, options=bar),
        lay.panel("bargauge", "Battery SoC by module (now, mean of its batteries)", "percent",
                  [target("A", flux("battery", ["soc_pct"], window=False,
                                    tail='  |> last()\n  |> group(columns: ["site", "module"])\n  |> mean()\n'))],
                  w=6, h=9, options=bar, defaults={"min": 0, "max": 100, "thresholds": {"mode": "absolute", "steps": _steps(
                      (None, RED), (20, ORANGE), (40, GREEN))}}),
        lay.panel("timeseries", "Available power vs GPU power, every module", "kwatt", [
            target("A", flux("site", ["available_kw"])), target("B", flux("gpu", ["p_kw"]))], w=24, options=legend),
        lay.panel("state-timeline", "Gensets running, every module", "short",
                  [target("A", flux("genset", ["running"], fn="max"))], w=12, h=8,
                  defaults={"mappings": [{"type": "value", "options": {"0": {"text": "stopped", "color": "gray"},
                                                                      "1": {"text": "running", "color": ORANGE}}}]}),
        lay.panel("state-timeline", "Mode, every module", "short", [target("A", flux("site", ["mode"], window=False))],
                  w=12, h=8, defaults={"mappings": MODE_MAPPINGS}),
        lay.panel("timeseries", "Stale signals, every module", "short",
                  [target("A", flux("site", ["stale_signals"], fn="max"))], w=12, options=legend),
        lay.panel("timeseries", "Unserved load in the plan, every module", "kwatt",
                  [target("A", flux("plan", ["unserved_kw"], fn="max"))], w=12, options=legend),
        lay.panel("table", "Alarms and events, every module", "short", [target("A", flux(
            "event", ["kind", "reason", "class"], window=False,
            tail='  |> pivot(rowKey: ["_time", "site", "module"], columnKey: ["_field"], valueColumn: "_value")\n'
                 '  |> group()\n  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 500)\n'))], w=24, h=10),
    ]
    return dashboard("powerctl-fleet", "powerctl fleet", "Every powerctl module on one page: available power, GPU "
                     "power, SoC, gensets, mode, stale signals, unserved load, alarms.", panels, ["powerctl", "fleet"])


# --- alert rules (Grafana unified alerting, file provisioning format) ------------------------------

def _alert_query(measurement: str, field: str, fn: str, to_number: str = "") -> str:
    q = (f'from(bucket: "powerctl")\n  |> range(start: -5m)\n  |> filter(fn: (r) => r._measurement == "{measurement}")\n'
         f'  |> filter(fn: (r) => r._field == "{field}")\n')
    if to_number:
        q += f"  |> map(fn: (r) => ({{r with _value: if {to_number} then 1.0 else 0.0}}))\n"
    return q + f'  |> group(columns: ["site", "module"])\n  |> {fn}()\n'


def _rule(uid: str, title: str, query: str, above: float, for_s: str, summary: str, severity: str) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "condition": "C", "for": for_s,
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": 300, "to": 0}, "datasourceUid": ALERT_DS_UID,
             "model": {"refId": "A", "query": query}},
            {"refId": "C", "datasourceUid": "__expr__",
             "model": {"refId": "C", "type": "threshold", "expression": "A",
                       "conditions": [{"evaluator": {"type": "gt", "params": [above]}}]}},
        ],
        "noDataState": "OK", "execErrState": "Error",
        "annotations": {"summary": summary, "dashboardUid": "powerctl-site"},
        "labels": {"severity": severity, "service": "powerctl"},
    }


ALERTS = [
    ("powerctl-stale-supply", "Stale supply signals", ("site", "stale_signals", "max", ""), 0, "1m",
     "{{ $labels.site }}/{{ $labels.module }}: signals stale for a minute; the guard counts them as worst case", "warning"),
    ("powerctl-safe-cap", "GPUs held at the safe cap", ("site", "mode", "max", 'r._value == "safe"'), 0, "2m",
     "{{ $labels.site }}/{{ $labels.module }}: no usable plan or stale supply: GPUs at the safe cap", "critical"),
    ("powerctl-shedding", "Workload shed", ("event", "kind", "sum", 'r._value == "shed"'), 0, "0s",
     "{{ $labels.site }}/{{ $labels.module }}: a workload class was shed (supply short even at GPU floors)", "critical"),
    ("powerctl-solver-fallback", "Planner fell back from its solvers",
     ("plan", "rung", "max", 'r._value == "rule" or r._value == "safe"'), 0, "5m",
     "{{ $labels.site }}/{{ $labels.module }}: plans come from the rule-based or safe rung", "warning"),
    ("powerctl-unserved-load", "Unserved load planned", ("plan", "unserved_kw", "max", ""), 0.5, "2m",
     "{{ $labels.site }}/{{ $labels.module }}: the plan cannot serve the load (slack above 0.5 kW)", "critical"),
]


def alert_rules() -> dict[str, Any]:
    rules = [_rule(uid, title, _alert_query(*q), above, for_s, summary, sev)
             for uid, title, q, above, for_s, summary, sev in ALERTS]
    return {"apiVersion": 1, "groups": [{"orgId": 1, "name": "powerctl", "folder": "powerctl", "interval": "1m",
                                         "rules": rules}]}


def provisioning() -> dict[str, str]:
    return {
        "provisioning/datasources/powerctl-influxdb.yaml": (
            "# Grafana datasource provisioning: the InfluxDB (Flux) source the dashboards and alerts use.\n"
            "apiVersion: 1\ndatasources:\n  - name: powerctl-influxdb\n    uid: powerctl-influxdb\n"
            "    type: influxdb\n    access: proxy\n    url: http://localhost:8086\n"
            "    jsonData:\n      version: Flux\n      organization: powerctl\n      defaultBucket: powerctl\n"
            "    secureJsonData:\n      token: $INFLUX_TOKEN  # from Grafana's environment, never in this file\n"),
        "provisioning/dashboards/powerctl.yaml": (
            "# Grafana dashboard provisioning: copy dashboards/*.json to the path below.\n"
            "apiVersion: 1\nproviders:\n  - name: powerctl\n    folder: powerctl\n    type: file\n"
            "    disableDeletion: true\n    allowUiUpdates: false\n    options:\n"
            "      path: /var/lib/grafana/dashboards/powerctl\n"),
    }


def outputs() -> dict[str, str]:
    out = {
        "powerctl-site.json": json.dumps(site_dashboard(), indent=2) + "\n",
        "powerctl-fleet.json": json.dumps(fleet_dashboard(), indent=2) + "\n",
        # JSON is YAML: Grafana reads alert rule files in either
        "provisioning/alerting/powerctl-alerts.json": json.dumps(alert_rules(), indent=2) + "\n",
    }
    out.update(provisioning())
    return out


def main() -> None:
    for name, text in outputs().items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
