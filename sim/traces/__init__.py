"""Traces for replay: loaders with units and validation, irradiance readers, GPU workload readers,
and ``SiteTrace`` (everything a replay needs on one time grid)."""

from powerctl.sim.traces.gpu_load import azure_demand_series, read_azure_llm
from powerctl.sim.traces.irradiance import read_irradiance, read_psm3, read_rmis, read_tmy3
from powerctl.sim.traces.loaders import TraceError, load_series, validate
from powerctl.sim.traces.site_trace import SiteTrace, build_site_trace

__all__ = [
    "SiteTrace",
    "TraceError",
    "azure_demand_series",
    "build_site_trace",
    "load_series",
    "read_azure_llm",
    "read_irradiance",
    "read_psm3",
    "read_rmis",
    "read_tmy3",
    "validate",
]
