"""The GPU backend protocol: list GPUs, read power/energy/limits, set a cap and read it back.

Units at this interface are W and J (backends convert from mW/mJ). Every setter reads the limit
back, because some NVML versions report success whatever the driver said (gpu-power.md §3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from powerctl.config import GpuPool

Clock = Callable[[], float]
DemandFn = Callable[[int, float], float]  # (gpu index, t_s) -> demanded power W


class GpuError(Exception):
    """A GPU problem already phrased for the operator (one line, no traceback needed)."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    min_w: float
    max_w: float
    default_w: float


@dataclass(frozen=True)
class CapResult:
    """Outcome of one set: what was asked, what the driver reports back, and whether it took.

    ``ok`` is False when the set failed or the read-back limit differs from the request.
    ``outside_limit`` is True when the enforced limit is below the requested one: another limiter
    (BMC, DCGM, firmware) is active and ``enforced_w`` is the real upper bound.
    """

    index: int
    requested_w: float
    readback_w: float | None
    enforced_w: float | None
    ok: bool
    message: str = ""
    outside_limit: bool = False


@runtime_checkable
class GpuBackend(Protocol):
    name: str

    def list_gpus(self) -> list[GpuInfo]: ...

    def read_power_w(self, index: int) -> float: ...

    def read_energy_j(self, index: int) -> float: ...

    def read_limits_w(self, index: int) -> tuple[float, float]:
        """(requested, enforced) power limit in W."""
        ...

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        """Set the power limit, then read it back."""
        ...


# Read-back tolerance: NVML works in mW and some drivers round to whole W.
READBACK_TOL_W = 1.0


def make_backend(
    gpu_cfg: GpuPool,
    clock: Clock = time.monotonic,
    demand_w: DemandFn | None = None,
) -> GpuBackend:
    """The backend named in ``gpu_cfg.backend``; imports NVML lazily (no GPU, no import)."""
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
        from powerctl.capsetter import DEFAULT_SOCKET_PATH
        from powerctl.gpu.socket import SocketGpus

        return SocketGpus(gpu_cfg.socket_path or DEFAULT_SOCKET_PATH, timeout_s=gpu_cfg.socket_timeout_s)
    raise GpuError(f"gpu.backend: unknown backend {kind!r}")


def clamp_w(cap_w: float, lo_w: float, hi_w: float) -> float:
    """``cap_w`` held to [lo_w, hi_w]; a NaN becomes lo_w (never pass on a number we do not trust)."""
    if cap_w != cap_w:
        return lo_w
    return max(lo_w, min(hi_w, cap_w))
