"""The GPU backend a config names (``gpu.backend``), built lazily: no GPU, no NVML import."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from powerctl.gpu.base import Clock, DemandFn, GpuBackend, GpuError

if TYPE_CHECKING:
    from powerctl.config import GpuPool


def make_backend(
    gpu_cfg: GpuPool,
    clock: Clock = time.monotonic,
    demand_w: DemandFn | None = None,
) -> GpuBackend:
    """The backend named in ``gpu_cfg.backend``."""
    kind = gpu_cfg.backend
    if kind == "simulated":
        from powerctl.gpu.simulated import SimulatedGpus

        return SimulatedGpus.from_pool(gpu_cfg, clock=clock, demand_w=demand_w)
    if kind == "nvml":
        from powerctl.gpu.nvml import NvmlGpus

        return NvmlGpus(site_min_w=gpu_cfg.min_w, site_max_w=gpu_cfg.max_w)
    if kind == "none":
        from powerctl.gpu.none import NoGpus

        return NoGpus.from_pool(gpu_cfg)
    if kind == "socket":
        from powerctl.gpu.socket import DEFAULT_SOCKET_PATH, SocketGpus

        return SocketGpus(gpu_cfg.socket_path or DEFAULT_SOCKET_PATH, timeout_s=gpu_cfg.socket_timeout_s)
    if kind == "agents":
        from powerctl.gpu.agents import AgentGpus

        return AgentGpus(gpu_cfg, clock=clock)
    raise GpuError(f"gpu.backend: unknown backend {kind!r}")
