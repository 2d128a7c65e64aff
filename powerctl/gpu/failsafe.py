"""Safe caps: what every fail-safe path applies (SIGTERM, planner crash, stale supply, watchdog,
boot). The safe cap never raises a GPU: each gets min(safe cap, the limit it holds now), held to
its device range. After boot a GPU holds its default (= max) limit, so it gets the safe cap.

The out-of-process paths (watchdog, ``apply-safe-caps``) reach the GPUs through ``failsafe_routes``:
never only through a process that may be down (the cap-setter), and never with a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Route:
    """One way to reach the GPUs for the fail-safe (``open`` builds a backend; it may raise)."""

    name: str
    open: Callable[[], GpuBackend]


@dataclass
class Outcome:
    """What a fail-safe attempt did: per-GPU results from the route that worked (or the last one
    tried), that route's name, and one line per route that failed."""

    results: list[CapResult] = field(default_factory=list)
    route: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def reached(self) -> bool:
        return bool(self.results)

    @property
    def ok(self) -> bool:
        return self.reached and all(r.ok for r in self.results)


def failsafe_routes(cfg: SiteConfig) -> list[Route]:
    """The ways the fail-safe reaches the GPUs, in order.

    With ``gpu.backend = "socket"`` the first route is the cap-setter's own driver
    (``gpu.capsetter_backend``, NVML in production) straight from this process: the watchdog and
    ``apply-safe-caps`` run with CAP_SYS_ADMIN (examples/systemd/) and must work while the cap-setter
    is down, busy, or not started yet (at boot it starts after the safe caps). The socket comes
    second, for a host where this process holds no capability. Other backends are their own route.
    """
    gpu = cfg.gpu
    if gpu.backend == "socket":
        direct = gpu.model_copy(update={"backend": gpu.capsetter_backend})
        return [Route(f"{gpu.capsetter_backend} directly", lambda: make_backend(direct, clock=time.monotonic)),
                Route(f"cap-setter socket {gpu.socket_path or 'default'}", lambda: make_backend(gpu, clock=time.monotonic))]
    return [Route(gpu.backend, lambda: make_backend(gpu, clock=time.monotonic))]


def _close(backend: GpuBackend) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if not isinstance(exc, GpuError) else text[:300]


def apply_via(routes: list[Route], safe_cap_w: float, *, attempts: int = 1, retry_s: float = 1.0,
              sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Safe caps through the first route that sets every GPU; never raises. ``attempts`` rounds over
    all routes, ``retry_s`` apart (a cap-setter restarting, a driver still loading)."""
    last = Outcome()
    for attempt in range(max(1, attempts)):
        if attempt:
            sleep(retry_s)
        for route in routes:
            try:
                backend = route.open()
            except Exception as exc:  # GpuError, a missing pynvml, an NVML init error: try the next route
                last.errors.append(f"{route.name}: {_one_line(exc)}")
                continue
            try:
                results = apply_safe_caps_to(backend, safe_cap_w)
            except Exception as exc:  # list_gpus failed: nothing reached
                last.errors.append(f"{route.name}: {_one_line(exc)}")
                continue
            finally:
                _close(backend)
            bad = [r.message for r in results if not r.ok]
            if results and not bad:
                return Outcome(results, route.name, last.errors)
            if results:
                last = Outcome(results, route.name, [*last.errors, f"{route.name}: {'; '.join(bad)[:300]}"])
    return last


def apply_safe_caps(cfg: SiteConfig, *, echo: bool = True, attempts: int = 3, retry_s: float = 1.0) -> int:
    """``powerctl apply-safe-caps``: boot-time safe caps. Returns the process exit code
    (0 all set, 1 some GPUs failed, 2 no route reached the GPUs); a clear line per problem, never
    a traceback."""
    out = apply_via(failsafe_routes(cfg), cfg.gpu.safe_cap_w, attempts=attempts, retry_s=retry_s)
    for r in out.results:
        line = (f"GPU {r.index}: safe cap {r.requested_w:.0f} W"
                + (f" (enforced {r.enforced_w:.0f} W)" if r.enforced_w is not None else "")
                + ("" if r.ok else f" FAILED: {r.message}"))
        if echo:
            print(line)
        (log.info if r.ok else log.error)("%s", line)
    if out.ok:
        if out.errors:
            log.warning("apply-safe-caps: set through %s after: %s", out.route, " | ".join(out.errors))
        return 0
    for err in dict.fromkeys(out.errors):
        print(f"apply-safe-caps: {err}")
        log.error("apply-safe-caps: %s", err)
    if not out.reached:
        print("apply-safe-caps: no route reached the GPUs: they keep the limits they hold")
        return 2
    return 1
