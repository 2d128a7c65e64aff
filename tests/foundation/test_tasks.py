"""powerctl.tasks: a task that loses a cancel still ends (halt, until_one_ends), and the daemon's
stop does not wait on it for ever."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from powerctl.tasks import halt, until_one_ends
from tests.faults.harness import FaultRig, fault_config


class LosesOneCancel:
    """A task body that swallows the first cancel it gets (as 3.11's ``wait_for`` can) and obeys
    the next; ``cancels`` counts them."""

    def __init__(self) -> None:
        self.cancels = 0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels > 1:
                    raise


class Ended(Exception):
    pass


async def test_a_cancel_that_is_lost_is_sent_again() -> None:
    # aiomqtt can turn the cancel of a link into a connection error (TaskGroup, __aexit__), and
    # 3.11's wait_for can drop one; a reconnect loop that swallowed it went on after the stop
    body = LosesOneCancel()
    task = asyncio.create_task(body.run())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the premise: one cancel is not enough for such a task
    await halt(task, what="test task", wait_s=0.2)
    assert task.cancelled() and body.cancels == 2


async def test_a_task_that_loses_its_cancel_does_not_hold_the_group() -> None:
    # a TaskGroup cancels its children once and then waits, swallowing every further cancel of
    # its parent: one child that lost that cancel held the MQTT link's stop for ever
    body = LosesOneCancel()
    group = asyncio.create_task(until_one_ends({"lossy": body.run(), "quiet": asyncio.sleep(3600)}, Ended))
    await asyncio.sleep(0.05)
    group.cancel()
    async with asyncio.timeout(30):  # a TaskGroup in its place never ends
        with contextlib.suppress(asyncio.CancelledError):
            await group
    assert group.cancelled() and body.cancels == 2


async def test_a_task_that_fails_ends_the_group_with_its_error_and_one_that_returns_too() -> None:
    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise OSError("Disconnected during message iteration")

    others_ended = asyncio.Event()

    async def runs() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            others_ended.set()

    async def returns() -> None:
        await asyncio.sleep(0.01)

    with pytest.raises(OSError, match="Disconnected"):
        async with asyncio.timeout(30):
            await until_one_ends({"fails": fails(), "runs": runs()}, Ended)
    assert others_ended.is_set()
    with pytest.raises(Ended, match="returns"):
        async with asyncio.timeout(30):
            await until_one_ends({"returns": returns(), "runs": runs()}, Ended)


@pytest.mark.faults
@pytest.mark.timeout(90)
async def test_the_daemon_stops_though_one_of_its_tasks_loses_the_cancel(tmp_path: Path) -> None:
    rig = FaultRig(fault_config(tmp_path))
    body = LosesOneCancel()
    rig.daemon.telemetry.run = body.run  # type: ignore[method-assign]
    async with rig:  # its exit fails unless the daemon stops within 10 s
        await rig.settled(timeout_s=30.0)
    assert body.cancels == 2, f"the telemetry task saw {body.cancels} cancels"
    # and the GPUs were left at the safe cap on the way out
    assert all(c <= rig.cfg.gpu.safe_cap_w for c in rig.plant.gpu.caps_w)
