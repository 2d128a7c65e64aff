"""The daemon's GPU I/O around the control loop: power readings in, caps out.

- ``GpuReadings``: the loop's ``Readings`` port over the process image and a GPU backend (each
  read also lands in the image as the ``gpu`` pool's ``p_kw`` and ``cap_kw``);
- ``CapWriter``: sends the guard's caps, only those that changed, and all of them every
  ``reassert_s`` (other software may overwrite a limit); a failed set is retried next time;
- ``read_gpu_power_w``, ``read_caps_w``, ``read_enforced_w``, ``apply_caps``: one backend call per
  GPU, errors logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

from powerctl.control.split import GpuSlot
from powerctl.gpu.base import CapResult, GpuBackend
from powerctl.natures import SIGNALS, Nature
from powerctl.process_image import ProcessImage

log = logging.getLogger(__name__)

GPU_DEVICE = "gpu"  # the GPU pool's device name in the process image


def read_gpu_power_w(backend: GpuBackend, indices: Sequence[int]) -> float | None:
    """Total measured GPU power, or None when any GPU cannot be read (worst case applies)."""
    per = read_power_per_gpu_w(backend, indices)
    return None if per is None else float(sum(per.values()))


def read_power_per_gpu_w(backend: GpuBackend, indices: Sequence[int]) -> dict[int, float] | None:
    """Measured power per GPU, or None when any GPU cannot be read."""
    out: dict[int, float] = {}
    for i in indices:
        try:
            p = backend.read_power_w(i)
        except Exception as exc:  # a backend read failing must not stop the guard
            log.warning("GPU %d power unreadable: %s", i, exc)
            return None
        if p != p:
            return None
        out[i] = float(p)
    return out


def read_caps_w(backend: GpuBackend, indices: Sequence[int]) -> dict[int, float] | None:
    """The requested limits the GPUs hold now, or None when any cannot be read."""
    try:
        return {i: backend.read_limits_w(i)[0] for i in indices}
    except Exception as exc:
        log.warning("GPU limits unreadable: %s", exc)
        return None


def read_enforced_w(backend: GpuBackend, indices: Sequence[int]) -> dict[int, float]:
    """The limit each GPU obeys now: the lower of its requested and enforced limit (something
    outside powerctl may have lowered either). A GPU that cannot be read is left out: the guard
    keeps its own cap for it (its power read says what is wrong, once per pass is too often here)."""
    out: dict[int, float] = {}
    for i in indices:
        try:
            req, enf = backend.read_limits_w(i)
        except Exception as exc:
            log.debug("GPU %d limits unreadable: %s", i, exc)
            continue
        known = [float(w) for w in (req, enf) if w == w]
        if known:
            out[i] = min(known)
    return out


def apply_caps(backend: GpuBackend, caps_w: Mapping[int, float], only_changed_from: Mapping[int, float] | None = None
               ) -> list[CapResult]:
    """Send caps (all, or those differing from ``only_changed_from``); failures are logged, not raised.
    A backend with ``set_caps_w`` (the node agents) gets them all in one call, sent concurrently."""
    todo = {i: cap for i, cap in caps_w.items()
            if only_changed_from is None or abs(only_changed_from.get(i, math.nan) - cap) >= 1e-6}
    batch = getattr(backend, "set_caps_w", None)
    if callable(batch):
        try:
            results: list[CapResult] = batch(todo) if todo else []
        except Exception as exc:
            log.error("setting %d caps failed: %s", len(todo), exc)
            return []
        for r in results:
            if not r.ok:
                log.error("%s", r.message)
        return results
    results = []
    for i, cap in todo.items():
        try:
            r = backend.set_cap_w(i, cap)
        except Exception as exc:
            log.error("GPU %d: setting %.0f W failed: %s", i, cap, exc)
            continue
        if not r.ok:
            log.error("%s", r.message)
        results.append(r)
    return results


class GpuReadings:
    """Readings port: the process image and the backend's per-GPU power."""

    def __init__(self, image: ProcessImage, backend: GpuBackend, slots: Sequence[GpuSlot],
                 clock: Callable[[], float], caps_in_force: Callable[[], Mapping[int, float]],
                 max_age_s: float = 1.0) -> None:
        for sig in SIGNALS[Nature.GPU_POOL]:
            image.declare(GPU_DEVICE, Nature.GPU_POOL, sig, max_age_s)
        self._image = image
        self.backend = backend
        self.indices = [s.index for s in slots]
        self.clock = clock
        self.caps_in_force = caps_in_force

    @property
    def image(self) -> ProcessImage:
        return self._image

    def held_caps_w(self) -> dict[int, float] | None:
        """GPUs no cap reaches now, at the highest cap they may hold (``powerctl.gpu.agents``)."""
        held = getattr(self.backend, "held_caps_w", None)
        return held() if callable(held) else None

    def enforced_caps_w(self) -> dict[int, float]:
        """The limits the GPUs obey now (``read_enforced_w``): the base of the guard's next rise."""
        return read_enforced_w(self.backend, self.indices)

    def gpu_power_w(self) -> dict[int, float] | None:
        per = read_power_per_gpu_w(self.backend, self.indices)
        now = self.clock()
        if per is not None:  # unreadable: the signal ages (worst case), no made-up value
            self._image.update(GPU_DEVICE, "p_kw", sum(per.values()) / 1000.0, now)
        self._image.update(GPU_DEVICE, "cap_kw", sum(self.caps_in_force().values()) / 1000.0, now)
        return per


class CapWriter:
    """Caps to the backend: changes at once, everything every ``reassert_s``."""

    def __init__(self, backend: GpuBackend, reassert_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.reassert_s = reassert_s
        self.clock = clock
        self.sent: dict[int, float] = {}
        self._last_full = -math.inf

    def apply(self, caps_w: Mapping[int, float]) -> list[CapResult]:
        now = self.clock()
        full = now - self._last_full >= self.reassert_s
        results = apply_caps(self.backend, caps_w, None if full else self.sent)
        if full:
            self._last_full = now
        self.sent.update({r.index: r.requested_w for r in results if r.ok})
        self.sent.update({r.index: math.nan for r in results if not r.ok})  # retry next time
        return results
