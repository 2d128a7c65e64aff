"""Observe-only mode for commissioning: read, plan and log what would be written; write nothing.

``control.observe_only = true`` (or ``powerctl run --observe``) runs the whole daemon (polling,
planning, dispatch, the guard) with every output cut at the last step:

- device setpoints: the write queue logs "would write" and never calls the driver
  (``WriteQueue(observe_only=True)``, powerctl/writes.py), so no keep-alive starts either;
- GPU caps: ``ObservingGpus`` wraps the backend; reads pass through, a set is logged and
  answered with the limit the GPU already has (nothing reaches NVML or an agent);
- shed hooks: not run (the daemon builds no hook runner); the guard still logs its decisions.

Switching to control is a restart without the flag: nothing is half-switched at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from powerctl.gpu.base import CapResult, GpuBackend, GpuInfo

log = logging.getLogger(__name__)


class ObservingGpus:
    """A GPU backend that reads the real GPUs and never sets a cap (logs what it would set)."""

    def __init__(self, inner: GpuBackend) -> None:
        self.inner = inner
        self.name = f"observe-only({inner.name})"
        self.would_set_w: dict[int, float] = {}  # last cap each GPU would have been given
        self.sets = 0  # set requests answered without writing (a test counts them)

    def list_gpus(self) -> list[GpuInfo]:
        return self.inner.list_gpus()

    def read_power_w(self, index: int) -> float:
        return self.inner.read_power_w(index)

    def read_energy_j(self, index: int) -> float:
        return self.inner.read_energy_j(index)

    def read_limits_w(self, index: int) -> tuple[float, float]:
        return self.inner.read_limits_w(index)

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        self.sets += 1
        if abs(self.would_set_w.get(index, float("nan")) - cap_w) >= 1.0 or index not in self.would_set_w:
            log.info("observe-only: would set GPU %d cap to %.0f W", index, cap_w)
        self.would_set_w[index] = cap_w
        requested_w, enforced_w = self.inner.read_limits_w(index)
        return CapResult(index, cap_w, requested_w, enforced_w, True, "observe-only: not written")

    def set_caps_w(self, caps_w: Mapping[int, float]) -> list[CapResult]:
        """The batch set (``powerctl.gpu_io.apply_caps`` prefers it): answered like ``set_cap_w``.
        Defined here so that ``__getattr__`` never hands out the node agents' real one."""
        return [self.set_cap_w(i, cap) for i, cap in caps_w.items()]

    def __getattr__(self, name: str) -> Any:
        # extras of the wrapped backend (e.g. node_rows of the node agents) stay visible; a setter
        # must never be one of them (every write is defined above and answered without writing)
        if name.startswith("set_"):
            raise AttributeError(f"observe-only: {self.inner.name}.{name} is not passed through")
        return getattr(self.inner, name)
