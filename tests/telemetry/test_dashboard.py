"""The Grafana dashboard is valid JSON and queries only measurements and fields of the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from powerctl.telemetry.schema import SCHEMA

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "dashboards").glob("*.json"))


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_only_schema_measurements_and_fields(path: Path) -> None:
    dash = json.loads(path.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    seen = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            q = t["query"]
            ms = re.findall(r'r\._measurement == "([^"]+)"', q)
            assert len(ms) == 1, (panel["title"], q)
            assert ms[0] in SCHEMA, (panel["title"], ms[0])
            assert FLEET_FILTER in q  # multi-select site and module
            for f in re.findall(r'r\._field == "([^"]+)"', q):
                assert f in SCHEMA[ms[0]], (panel["title"], ms[0], f)
                seen.add(ms[0])
    # the panels: power flows, SoC, genset, GPU budget and caps, planned vs actual, solve time, stale
    assert {"pv", "battery", "genset", "gpu", "plan", "site"} <= seen


# --- Grafana's dashboard JSON model (grafana.com/docs/grafana/latest/dashboards/build-dashboards/
# view-dashboard-json-model/) and alert-rule file provisioning, checked without a Grafana ---

ROOT = Path(__file__).resolve().parents[2]
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "table", "bargauge", "gauge", "text", "row"}
GRAFANA_UNITS = {"kwatt": "kW", "watt": "W", "percent": "%", "ms": "ms", "s": "s", "short": "", "none": ""}
FLEET_FILTER = "contains(value: r.site, set: ${site:json}) and contains(value: r.module, set: ${module:json})"


def _generator():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("dash_generate", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_files_are_what_the_generator_writes() -> None:
    for name, text in _generator().outputs().items():
        assert (ROOT / "dashboards" / name).read_text() == text, f"dashboards/{name}: run python dashboards/generate.py"


def _fields(query: str) -> tuple[str, list[str]]:
    (m,) = re.findall(r'r\._measurement == "([^"]+)"', query)
    return m, re.findall(r'r\._field == "([^"]+)"', query)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_follows_grafanas_model(path: Path) -> None:
    text = path.read_text()
    dash = json.loads(text)
    assert "${DS_" not in text and "__inputs" not in dash  # import-only placeholders break file provisioning
    assert isinstance(dash["schemaVersion"], int) and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "influxdb"
    for name in ("site", "module"):
        assert variables[name]["type"] == "query" and variables[name]["multi"] is True
        assert variables[name]["includeAll"] is True
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        g = panel["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"] == {"type": "influxdb", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        default_unit = panel["fieldConfig"]["defaults"]["unit"]
        assert default_unit in GRAFANA_UNITS
        by_ref = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
                  for o in panel["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byFrameRefID"}
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"]
            assert FLEET_FILTER in t["query"], (panel["title"], t["query"])
            m, fields = _fields(t["query"])
            unit = by_ref.get(t["refId"], {}).get("unit", default_unit)
            for f in fields:
                if panel["type"] in ("table", "state-timeline"):
                    continue  # strings and states: no axis to share
                # the unit this query is drawn with is the schema's unit of its field
                assert GRAFANA_UNITS[unit] == SCHEMA[m][f][0], (panel["title"], t["refId"], f, unit)
        units = {by_ref.get(r, {}).get("unit", default_unit) for r in refs}
        if len(units) > 1:  # a second unit gets its own axis on the right
            assert all(by_ref[r].get("custom.axisPlacement") == "right" for r in refs
                       if by_ref.get(r, {}).get("unit", default_unit) != default_unit), panel["title"]


def _queried(dash: dict) -> set[tuple[str, str, str]]:  # type: ignore[type-arg]
    return {(p["type"], *_fields(t["query"])[:1], f) for p in dash["panels"] for t in p["targets"]
            for f in _fields(t["query"])[1]}


def test_site_dashboard_has_tiles_and_a_mode_timeline() -> None:
    dash = json.loads((ROOT / "dashboards" / "powerctl-site.json").read_text())
    q = _queried(dash)
    assert {("stat", "pv", "p_kw"), ("stat", "battery", "soc_pct"), ("stat", "gpu", "p_kw"),
            ("stat", "site", "available_kw")} <= q
    assert {("state-timeline", "site", "mode"), ("state-timeline", "plan", "rung")} <= q


def test_fleet_dashboard_shows_every_module() -> None:
    dash = json.loads((ROOT / "dashboards" / "powerctl-fleet.json").read_text())
    q = {(m, f) for _t, m, f in _queried(dash)}
    assert {("site", "available_kw"), ("gpu", "p_kw"), ("battery", "soc_pct"), ("genset", "running"),
            ("event", "kind")} <= q
    grouped = [t["query"] for p in dash["panels"] if p["type"] == "bargauge" for t in p["targets"]]
    assert grouped and all('group(columns: ["site", "module"])' in g for g in grouped)


def test_alert_rules_cover_what_an_operator_must_see() -> None:
    rules_doc = json.loads((ROOT / "dashboards" / "provisioning" / "alerting" / "powerctl-alerts.json").read_text())
    ds = (ROOT / "dashboards" / "provisioning" / "datasources" / "powerctl-influxdb.yaml").read_text()
    ds_uid = re.search(r"^\s+uid: (\S+)", ds, re.M).group(1)  # type: ignore[union-attr]
    assert rules_doc["apiVersion"] == 1
    rules = [r for g in rules_doc["groups"] for r in g["rules"]]
    assert len({r["uid"] for r in rules}) == len(rules)
    watched = set()
    for r in rules:
        refs = {d["refId"]: d for d in r["data"]}
        assert r["condition"] in refs and re.fullmatch(r"\d+[smh]", r["for"])
        assert r["noDataState"] in {"OK", "NoData", "Alerting"} and r["execErrState"] in {"Error", "Alerting", "OK"}
        for d in r["data"]:
            if d["datasourceUid"] == "__expr__":
                assert d["model"]["expression"] in refs
                continue
            assert d["datasourceUid"] == ds_uid
            m, fields = _fields(d["model"]["query"])
            assert all(f in SCHEMA[m] for f in fields)
            watched |= {(m, f) for f in fields}
    # stale supply, safe cap, shedding, solver fallback, unserved load
    assert {("site", "stale_signals"), ("site", "mode"), ("event", "kind"), ("plan", "rung"),
            ("plan", "unserved_kw")} <= watched
