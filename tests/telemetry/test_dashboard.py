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
            assert 'r.site == "${site}"' in q and 'r.module == "${module}"' in q
            for f in re.findall(r'r\._field == "([^"]+)"', q):
                assert f in SCHEMA[ms[0]], (panel["title"], ms[0], f)
                seen.add(ms[0])
    # the panels: power flows, SoC, genset, GPU budget and caps, planned vs actual, solve time, stale
    assert {"pv", "battery", "genset", "gpu", "plan", "site"} <= seen
