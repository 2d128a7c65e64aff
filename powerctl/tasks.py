"""Ending tasks for sure: cancel until a task has ended, and run a set of tasks until one ends.

A task can lose a cancel: Python 3.11's ``asyncio.wait_for`` returns normally when its inner wait
completes in the same loop pass as the cancel (aiomqtt's publish and others use it), and a library
may turn a cancel into an error of its own. ``asyncio.TaskGroup`` cancels its children once and then
waits for them, catching every further cancel of its own task, so one child that lost the cancel
holds the group, and every stop above it, for ever. ``halt`` sends the cancel again until the task
has ended; ``until_one_ends`` is the group that does so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("powerctl.tasks")


async def halt(task: asyncio.Task[Any], what: str, attempts: int = 30, wait_s: float = 1.0,
               *, log_error: bool = True) -> None:
    """Cancel ``task`` until it has ended (a cancel it lost is sent again), at most ``attempts``
    times, ``wait_s`` apart; a task that outlasts them is logged with where it sits."""
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # a second cancel of ours: we raise anyway
            await asyncio.wait({task}, timeout=wait_s)
    if not task.done():
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(task.get_stack(limit=8)))
        log.error("%s: still running after %d cancels (in %s); left to end at its next step", what, attempts, where)
        return
    exc = None if task.cancelled() else task.exception()
    if exc is not None and log_error:
        log.warning("%s stopped with %s: %s", what, type(exc).__name__, exc)


async def halt_all(tasks: list[asyncio.Task[Any]], *, log_error: bool = False) -> None:
    """``halt`` every task of ``tasks`` that has not ended, all at once."""
    await asyncio.gather(*(halt(t, t.get_name(), log_error=log_error) for t in tasks if not t.done()))


async def until_one_ends(coros: dict[str, Coroutine[Any, Any, None]],
                         ended: Callable[[str], BaseException]) -> None:
    """Run ``coros`` (name: coroutine), each meant to run as long as the others, until one of them
    ends; then end the others, cancelling each until it has ended. Re-raise the first one's error;
    one that ended without an error raises ``ended(its name)``."""
    tasks = [asyncio.create_task(c, name=n) for n, c in coros.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await halt_all(tasks)
    for t in tasks:
        exc = t.exception() if t in done and not t.cancelled() else None
        if exc is not None:
            raise exc
    raise ended(next(iter(done)).get_name())
