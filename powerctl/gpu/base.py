"""The GPU backend protocol: list GPUs, read power/energy/limits, set a cap and read it back.

Units at this interface are W and J (backends convert from mW/mJ). Every setter reads the limit
back, because nvidia-ml-py's nvmlDeviceSetPowerManagementLimit_v2 ignores the driver's return code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


def clamp_w(cap_w: float, lo_w: float, hi_w: float) -> float:
    """``cap_w`` held to [lo_w, hi_w]; a NaN becomes lo_w (never pass on a number we do not trust)."""
    if cap_w != cap_w:
        return lo_w
    return max(lo_w, min(hi_w, cap_w))
