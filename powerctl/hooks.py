"""Running shed/restore hooks (I/O): the actions ``powerctl.control.shed.ShedPolicy`` decided.

A hook is an argv list run without a shell (asyncio subprocess, timeout, killed on expiry) or an
HTTP POST (urllib in a thread, timeout). Placeholders ``{class}``, ``{gpus}``, ``{action}`` in argv
items or URLs are replaced. Actions run one after another, in the order submitted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from powerctl.control.shed import ShedAction

if TYPE_CHECKING:
    from powerctl.config import ShedHook

log = logging.getLogger("powerctl.shed")


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

