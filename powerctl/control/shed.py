"""Shedding below the floor: whole workload classes are paused through hooks, and come back with
hysteresis.

``ShedPolicy`` (pure) decides: when even every running GPU at its floor does not fit the GPU power
the supply allows, it sheds classes that have a hook, least important first (highest priority
number), as many as needed at once. A shed class is restored (most important first, one at a time)
only after the supply has carried its floors plus ``restore_margin_w`` for ``hold_s`` without a
break. ``HookRunner`` (I/O) runs the hooks in the order decided: an argv list without a shell
(asyncio subprocess, timeout, killed on expiry) or an HTTP POST (urllib in a thread, timeout).
Placeholders ``{class}``, ``{gpus}``, ``{action}`` in argv items or URLs are replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from powerctl.control.split import GpuSlot

if TYPE_CHECKING:
    from powerctl.config import ShedHook

log = logging.getLogger("powerctl.shed")

Action = Literal["shed", "restore"]


@dataclass(frozen=True)
class ShedAction:
    klass: str
    action: Action
    gpus: int
    priority: int
    at_s: float
    reason: str = ""


@dataclass
class _Class:
    name: str
    priority: int
    gpus: int
    floor_w: float  # all its GPUs at their minimum cap
    idle_w: float  # all its GPUs idle (work shed)
    has_hook: bool


@dataclass
class ShedPolicy:
    """Which classes are shed now, and when to shed or restore (pure; the caller runs the hooks)."""

    gpus: Sequence[GpuSlot]
    hooked_classes: Iterable[str]
    idle_w: float
    restore_margin_w: float
    hold_s: float
    retry_s: float = 10.0
    shed: list[str] = field(default_factory=list)  # in the order they were shed
    _ok_since: float | None = None
    _retry_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hooked = set(self.hooked_classes)
        self._classes: dict[str, _Class] = {}
        for g in self.gpus:
            c = self._classes.setdefault(g.klass, _Class(g.klass, g.priority, 0, 0.0, 0.0, g.klass in hooked))
            c.gpus += 1
            c.floor_w += g.min_w
            c.idle_w += self.idle_w

    def floors_w(self, shed: Iterable[str]) -> float:
        """GPU power with every running GPU at its floor and shed classes idle."""
        s = set(shed)
        return sum(c.idle_w if c.name in s else c.floor_w for c in self._classes.values())

    def update(self, allowed_w: float, now_s: float) -> list[ShedAction]:
        """Actions to take now, given the GPU power the supply allows (W)."""
        actions: list[ShedAction] = []
        candidates = sorted(
            (c for c in self._classes.values() if c.has_hook and c.name not in self.shed),
            key=lambda c: (-c.priority, c.name),
        )
        for c in candidates:
            if self.floors_w(self.shed) <= allowed_w:
                break
            if self._retry_at.get(c.name, -1.0) > now_s:
                continue
            reason = (f"supply allows {allowed_w / 1000:.1f} kW of GPU power, floors need "
                      f"{self.floors_w(self.shed) / 1000:.1f} kW")
            self.shed.append(c.name)
            actions.append(ShedAction(c.name, "shed", c.gpus, c.priority, now_s, reason))
        if actions:
            self._ok_since = None
            return actions
        if not self.shed:
            return actions
        # Restore the most important shed class first; one at a time, each after a full hold.
        nxt = min((self._classes[n] for n in self.shed), key=lambda c: (c.priority, c.name))
        need_w = self.floors_w([n for n in self.shed if n != nxt.name]) + self.restore_margin_w
        if allowed_w < need_w or self._retry_at.get(nxt.name, -1.0) > now_s:
            self._ok_since = None
            return actions
        if self._ok_since is None:
            self._ok_since = now_s
        if now_s - self._ok_since >= self.hold_s:
            self.shed.remove(nxt.name)
            self._ok_since = None
            reason = f"supply carried {need_w / 1000:.1f} kW (floors + margin) for {self.hold_s:g} s"
            actions.append(ShedAction(nxt.name, "restore", nxt.gpus, nxt.priority, now_s, reason))
        return actions

    def hook_failed(self, action: ShedAction, now_s: float) -> None:
        """A hook did not work: undo the state change and retry later."""
        self._retry_at[action.klass] = now_s + self.retry_s
        if action.action == "shed" and action.klass in self.shed:
            self.shed.remove(action.klass)
        elif action.action == "restore" and action.klass not in self.shed:
            self.shed.append(action.klass)


@dataclass(frozen=True)
class HookResult:
    action: ShedAction
    ok: bool
    detail: str


def _fill(text: str, a: ShedAction) -> str:
    return text.replace("{class}", a.klass).replace("{gpus}", str(a.gpus)).replace("{action}", a.action)


async def _run_argv(argv: list[str], timeout_s: float) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"{argv[0]!r} timed out after {timeout_s:g} s (killed)"
    text = (err or out).decode(errors="replace").strip().splitlines()
    tail = text[-1] if text else ""
    if proc.returncode != 0:
        return False, f"{argv[0]!r} exited with {proc.returncode}: {tail}"
    return True, tail


def _post(url: str, body: dict[str, object], timeout_s: float) -> tuple[bool, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # the URL comes from the site config
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except OSError as exc:  # URLError, HTTPError, timeouts are all OSError
        return False, f"POST {url}: {exc}"


class HookRunner:
    """Runs shed/restore hooks one after another, in the order submitted."""

    def __init__(self, hooks: Sequence[ShedHook], site: str = "") -> None:
        self._hooks = {h.workload: h for h in hooks}
        self._site = site
        self._queue: asyncio.Queue[ShedAction] = asyncio.Queue()
        self.results: list[HookResult] = []

    @property
    def classes(self) -> list[str]:
        return list(self._hooks)

    def submit(self, action: ShedAction) -> None:
        self._queue.put_nowait(action)

    async def run(self, a: ShedAction) -> HookResult:
        hook = self._hooks.get(a.klass)
        if hook is None:
            return HookResult(a, False, f"no hook for class {a.klass!r}")
        argv = hook.shed if a.action == "shed" else hook.restore
        url = hook.shed_url if a.action == "shed" else hook.restore_url
        verb = "shedding" if a.action == "shed" else "restoring"
        log.warning("%s class %r (%d GPUs, priority %d): %s", verb, a.klass, a.gpus, a.priority, a.reason)
        ok, detail = True, "no hook for this action"
        if argv:
            ok, detail = await _run_argv([_fill(x, a) for x in argv], hook.timeout_s)
        if ok and url:
            body = {"class": a.klass, "action": a.action, "gpus": a.gpus, "site": self._site}
            async with asyncio.timeout(hook.timeout_s + 1.0):
                ok, detail = await asyncio.to_thread(_post, _fill(url, a), body, hook.timeout_s)
        result = HookResult(a, ok, detail)
        (log.info if ok else log.error)("%s hook for class %r %s: %s", a.action, a.klass,
                                        "done" if ok else "FAILED", detail)
        self.results.append(result)
        return result

    async def serve(self, on_failure: Callable[[HookResult], None] | None = None) -> None:
        """Worker: run submitted actions in order until cancelled."""
        while True:
            a = await self._queue.get()
            result = await self.run(a)
            if not result.ok and on_failure is not None:
                on_failure(result)

    async def drain(self) -> None:
        """Run everything queued now (tests, shutdown)."""
        while not self._queue.empty():
            await self.run(self._queue.get_nowait())

