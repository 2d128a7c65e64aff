"""Safe caps: what every fail-safe path applies (SIGTERM, planner crash, stale supply, watchdog,
boot). The safe cap never raises a GPU: each gets min(safe cap, the limit it holds now), held to
its device range. After boot a GPU holds its default (= max) limit, so it gets the safe cap.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from powerctl.gpu.base import CapResult, GpuBackend, GpuError, clamp_w
from powerctl.gpu.factory import make_backend

if TYPE_CHECKING:
    from powerctl.config import SiteConfig

log = logging.getLogger("powerctl.gpu.failsafe")


def safe_caps_for(backend: GpuBackend, safe_cap_w: float) -> dict[int, float]:
    """Per GPU: min(safe cap, current requested limit), within the GPU's [min, max]."""
    out: dict[int, float] = {}
    for info in backend.list_gpus():
        try:
            held_w = backend.read_limits_w(info.index)[0]
        except Exception as exc:  # cannot read: the safe cap itself is the answer
            log.warning("GPU %d: limit unreadable (%s): applying the safe cap", info.index, exc)
            held_w = safe_cap_w
        want = safe_cap_w if held_w != held_w else min(safe_cap_w, held_w)
        out[info.index] = clamp_w(want, info.min_w, info.max_w)
    return out


def apply_safe_caps_to(backend: GpuBackend, safe_cap_w: float) -> list[CapResult]:
    """Apply safe caps on every GPU; returns one result per GPU (failures included, not raised)."""
    results = []
    for index, cap in safe_caps_for(backend, safe_cap_w).items():
        try:
            results.append(backend.set_cap_w(index, cap))
        except Exception as exc:
            results.append(CapResult(index, cap, None, None, False, f"GPU {index}: {exc}"))
    return results


def apply_safe_caps(cfg: SiteConfig, *, echo: bool = True) -> int:
    """``powerctl apply-safe-caps``: boot-time safe caps. Returns the process exit code
    (0 all set, 1 some failed, 2 no backend)."""
    gpu_cfg = cfg.gpu
    try:
        backend = make_backend(gpu_cfg, clock=time.monotonic)
    except GpuError as exc:
        print(f"apply-safe-caps: {exc}")
        return 2
    results = apply_safe_caps_to(backend, gpu_cfg.safe_cap_w)
    for r in results:
        line = (f"GPU {r.index}: safe cap {r.requested_w:.0f} W"
                + (f" (enforced {r.enforced_w:.0f} W)" if r.enforced_w is not None else "")
                + ("" if r.ok else f" FAILED: {r.message}"))
        if echo:
            print(line)
        (log.info if r.ok else log.error)("%s", line)
    return 0 if all(r.ok for r in results) else 1
