"""The ``none`` backend for dry runs: caps are computed and logged, nothing is set.

There is no hardware to read: power and energy read as NaN, which the process image stores as
INVALID, so consumers fall back to the worst case (never to a made-up number).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from powerctl.gpu.base import CapResult, GpuInfo

if TYPE_CHECKING:
    from powerctl.config import GpuPool

log = logging.getLogger("powerctl.gpu.none")


class NoGpus:
    name = "none"

    def __init__(self, count: int, min_w: float, max_w: float) -> None:
        self._infos = [GpuInfo(i, "dry-run GPU", f"GPU-none-{i:04d}", min_w, max_w, max_w) for i in range(count)]
        self.would_set_w: dict[int, float] = {}

    @classmethod
    def from_pool(cls, gpu_cfg: GpuPool) -> NoGpus:
        return cls(gpu_cfg.count, gpu_cfg.min_w, gpu_cfg.max_w)

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        return float("nan")

    def read_energy_j(self, index: int) -> float:
        return float("nan")

    def read_limits_w(self, index: int) -> tuple[float, float]:
        cap = self.would_set_w.get(index, self._infos[index].default_w)
        return cap, cap

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        if self.would_set_w.get(index) != cap_w:
            log.info("dry run: GPU %d cap would be %.0f W (backend 'none' sets nothing)", index, cap_w)
        self.would_set_w[index] = cap_w
        return CapResult(index, cap_w, None, None, True, "dry run: nothing set")
