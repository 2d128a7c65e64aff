"""Prometheus metrics (official ``prometheus_client``), one registry per daemon.

Latencies are histograms the loop feeds as it runs (guard cycle, dispatch cycle, solve); counters
count plans by rung, guard cuts, sheds and write errors; the site's current values are gauges
read from the state snapshot at scrape time (so a scrape never waits on the loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_GUARD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_CYCLE_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_SOLVE_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# state field -> (metric name, help); None values are left out (unknown is not zero)
_SITE_GAUGES = {
    "pv_kw": ("powerctl_pv_kw", "PV power, kW"),
    "battery_kw": ("powerctl_battery_kw", "battery power, kW (+ = discharge), all batteries"),
    "genset_kw": ("powerctl_genset_kw", "genset power, kW, all gensets"),
    "gpu_kw": ("powerctl_gpu_kw", "GPU power, kW"),
    "available_kw": ("powerctl_available_kw", "supply the guard counts as available, kW"),
    "last_solve_ms": ("powerctl_last_solve_ms", "last solve time, ms"),
}


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        st = self.state()
        labels = ["site", "module"]
        ids = [str(st.get("site", "")), str(st.get("module", ""))]
        for key, (name, doc) in _SITE_GAUGES.items():
            g = GaugeMetricFamily(name, doc, labels=labels)
            if isinstance(st.get(key), int | float):
                g.add_metric(ids, float(st[key]))
            yield g
        stale = GaugeMetricFamily("powerctl_stale_signals", "signals that are not good", labels=labels)
        stale.add_metric(ids, float(len(st.get("stale", []))))
        yield stale
        mode = GaugeMetricFamily("powerctl_mode", "1 for the mode the loop is in", labels=[*labels, "mode"])
        mode.add_metric([*ids, str(st.get("mode", ""))], 1.0)
        yield mode
        soc = GaugeMetricFamily("powerctl_battery_soc_pct", "battery SoC, %", labels=[*labels, "device"])
        bat_kw = GaugeMetricFamily("powerctl_battery_device_kw", "battery power, kW", labels=[*labels, "device"])
        for dev, b in (st.get("batteries") or {}).items():
            if b.get("soc_pct") is not None:
                soc.add_metric([*ids, dev], float(b["soc_pct"]))
            if b.get("p_kw") is not None:
                bat_kw.add_metric([*ids, dev], float(b["p_kw"]))
        yield soc
        yield bat_kw
        gen_kw = GaugeMetricFamily("powerctl_genset_device_kw", "genset power, kW", labels=[*labels, "device"])
        gen_on = GaugeMetricFamily("powerctl_genset_running", "1 while the genset runs", labels=[*labels, "device"])
        for dev, g in (st.get("gensets") or {}).items():
            if g.get("p_kw") is not None:
                gen_kw.add_metric([*ids, dev], float(g["p_kw"]))
            if g.get("running") is not None:
                gen_on.add_metric([*ids, dev], 1.0 if g["running"] else 0.0)
        yield gen_kw
        yield gen_on
        for key, name, doc in (("guard_cuts", "powerctl_guard_cuts", "guard cycles that cut caps below the request"),
                               ("write_errors", "powerctl_write_errors", "device writes refused or failed"),
                               ("cycles", "powerctl_dispatch_cycles", "dispatch cycles since start")):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(ids, float(st.get(key) or 0))
            yield c
        budget = GaugeMetricFamily("powerctl_gpu_budget_kw", "GPU budget per workload class, kW",
                                   labels=[*labels, "class"])
        for cls, kw in (st.get("gpu_budget_kw") or {}).items():
            budget.add_metric([*ids, cls], float(kw))
        yield budget


class Metrics:
    """What the loop records (histograms, counters) plus the state gauges; ``render()`` for /metrics."""

    def __init__(self, state: Callable[[], dict[str, Any]] = dict) -> None:
        self.registry = CollectorRegistry()  # the state collector is asked at scrape time only
        r = self.registry
        self.guard_s = Histogram("powerctl_guard_cycle_seconds", "guard cycle latency", buckets=_GUARD_BUCKETS_S, registry=r)
        self.cycle_s = Histogram("powerctl_dispatch_cycle_seconds", "dispatch cycle latency",
                                 buckets=_CYCLE_BUCKETS_S, registry=r)
        self.solve_s = Histogram("powerctl_solve_seconds", "planner solve time", buckets=_SOLVE_BUCKETS_S, registry=r)
        self.plans = Counter("powerctl_plans", "plans made, by ladder rung", ["rung"], registry=r)
        self.sheds = Counter("powerctl_shed_actions", "shed and restore actions", ["action", "class"], registry=r)
        r.register(_StateCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)
