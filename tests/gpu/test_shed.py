"""Shedding below the floor: real hook commands (a script appending to a file), real HTTP server,
priority order, hysteresis on restore, timeouts and failures."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from powerctl.config import ShedHook
from powerctl.control.guard import Guard
from powerctl.control.shed import ShedAction, ShedPolicy
from powerctl.control.split import GpuSlot, slots_from_pool
from powerctl.hooks import HookRunner
from tests.gpu.site import image_for, site

HOOK_SCRIPT = """
import sys, time
with open(sys.argv[1], "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
"""


def _hook(tmp_path: Path, klass: str) -> dict[str, object]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    log = str(tmp_path / "hooks.log")
    return {"workload": klass,
            "shed": [sys.executable, str(script), log, "shed", "{class}", "{gpus}"],
            "restore": [sys.executable, str(script), log, "restore", "{class}", "{gpus}"],
            "timeout_s": 10.0}


async def test_hooks_fire_in_priority_order_and_undo_with_hysteresis(tmp_path: Path) -> None:
    classes = [{"name": "prod", "gpus": 16, "priority": 0}, {"name": "batch", "gpus": 8, "priority": 1},
               {"name": "scavenger", "gpus": 8, "priority": 2}]
    cfg = site(classes=classes, gpu={
        "shed_hooks": [_hook(tmp_path, c["name"]) for c in classes],  # type: ignore[index]
        "shed_restore_margin_kw": 0.5, "shed_restore_hold_s": 2.0})
    guard = Guard(cfg, slots_from_pool(cfg.gpu), hooked_classes=[h.workload for h in cfg.gpu.shed_hooks])
    runner = HookRunner(cfg.gpu.shed_hooks, "test")
    img = image_for(cfg)
    # SoC at the floor: the battery adds nothing; the supply is PV alone.
    # allowed GPU kW = (pv - 1 - 0.05 pv) / 1.08. Floors: all 3.2; scavenger shed 2.88;
    # scavenger + batch shed 2.56. Restore batch needs 2.88 + 0.46 -> pv >= 4.85;
    # restore scavenger needs 3.2 + 0.46 -> pv >= 5.22.
    pv = [(0.0, 10.0), (1.0, 4.2), (3.0, 5.0), (4.0, 4.6), (4.5, 5.0), (7.5, 10.0), (11.0, 10.0)]
    events: list[tuple[float, str, str]] = []
    for step in range(int(11.0 / 0.2) + 1):
        t = round(step * 0.2, 6)
        p = next(v for (t0, v), (t1, _v) in itertools.pairwise(pv) if t0 <= t < t1) if t < 11 else 10.0
        img.update("pv1", "p_kw", p, t)
        img.update("bat1", "soc_pct", 10.0, t)
        d = guard.evaluate(img, t, requested_caps_w={i: 400.0 for i in range(32)}, gpu_power_w=None)
        for a in (*d.shed, *d.restore):
            runner.submit(a)
            events.append((t, a.action, a.klass))
        await runner.drain()
        if "scavenger" in guard.shedder.shed and "batch" in guard.shedder.shed:
            assert all(d.caps_w[i] == 100.0 for i in range(16, 32))  # shed classes parked at min
    lines = (tmp_path / "hooks.log").read_text().splitlines()
    assert lines == ["shed scavenger 8", "shed batch 8", "restore batch 8", "restore scavenger 8"]
    assert all(r.ok for r in runner.results)
    times = {(a, k): t for t, a, k in events}
    assert times[("shed", "scavenger")] == times[("shed", "batch")] == 1.0
    # supply above the batch threshold during 3.0-4.0 (1 s < hold) did not restore: hysteresis
    assert times[("restore", "batch")] >= 4.5 + 2.0
    assert times[("restore", "scavenger")] >= 7.5 + 2.0
    assert "prod" not in [k for _t, _a, k in events]  # never shed more than needed


def _policy(hold_s: float = 5.0, hooked: tuple[str, ...] = ("a", "b")) -> ShedPolicy:
    gpus = [GpuSlot(0, "a", 0, 100, 400), GpuSlot(1, "b", 1, 100, 400)]
    return ShedPolicy(gpus, hooked, idle_w=50.0, restore_margin_w=100.0, hold_s=hold_s, retry_s=10.0)


def test_failed_shed_hook_is_retried_later() -> None:
    p = _policy(hooked=("b",))
    [a] = p.update(allowed_w=160.0, now_s=0.0)
    assert (a.klass, a.action) == ("b", "shed") and p.shed == ["b"]
    p.hook_failed(a, now_s=0.5)
    assert p.shed == []  # not counted as shed: its load is still there
    assert p.update(allowed_w=160.0, now_s=5.0) == []  # waits for the retry time
    [again] = p.update(allowed_w=160.0, now_s=11.0)
    assert (again.klass, again.action) == ("b", "shed") and p.shed == ["b"]


def test_when_a_hook_fails_the_next_class_is_shed_instead() -> None:
    p = _policy()
    [a] = p.update(allowed_w=160.0, now_s=0.0)
    p.hook_failed(a, now_s=0.5)
    [b] = p.update(allowed_w=160.0, now_s=1.0)  # safety first: floors must fit
    assert (b.klass, b.action) == ("a", "shed")


def test_restore_resets_when_supply_dips() -> None:
    p = _policy(hold_s=5.0)
    p.update(allowed_w=160.0, now_s=0.0)
    assert p.update(allowed_w=400.0, now_s=1.0) == []
    assert p.update(allowed_w=400.0, now_s=5.9) == []
    assert p.update(allowed_w=200.0, now_s=6.0) == []  # dip below floors + margin: timer restarts
    assert p.update(allowed_w=400.0, now_s=7.0) == []
    assert p.update(allowed_w=400.0, now_s=11.9) == []
    [r] = p.update(allowed_w=400.0, now_s=12.0)
    assert (r.klass, r.action) == ("b", "restore")


async def test_hook_timeout_kills_the_command() -> None:
    hook = ShedHook(workload="a", shed=[sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    r = await HookRunner([hook]).run(ShedAction("a", "shed", 2, 0, 0.0))
    assert not r.ok and "timed out after 0.3 s (killed)" in r.detail


async def test_missing_hook_command_is_a_clear_failure() -> None:
    hook = ShedHook(workload="a", shed=["/nonexistent/scontrol", "suspend", "1"])
    r = await HookRunner([hook]).run(ShedAction("a", "shed", 2, 0, 0.0))
    assert not r.ok and r.detail.startswith("cannot run '/nonexistent/scontrol'")


async def test_nonzero_exit_reported_with_stderr() -> None:
    hook = ShedHook(workload="a", shed=[sys.executable, "-c", "import sys; sys.exit('no such job 42')"])
    r = await HookRunner([hook]).run(ShedAction("a", "shed", 2, 0, 0.0))
    assert not r.ok and "exited with 1: no such job 42" in r.detail


@pytest.fixture
def http_sink():
    received: list[tuple[str, dict[str, object]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            self.send_response(500 if self.path.startswith("/fail") else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv.server_address[1], received
    srv.shutdown()
    srv.server_close()


async def test_http_hook_posts_json(http_sink) -> None:
    port, received = http_sink
    hook = ShedHook(workload="batch", shed_url=f"http://127.0.0.1:{port}/shed/{{class}}",
                    restore_url=f"http://127.0.0.1:{port}/restore/{{class}}", timeout_s=2.0)
    runner = HookRunner([hook], site="s1")
    r1 = await runner.run(ShedAction("batch", "shed", 8, 1, 0.0))
    r2 = await runner.run(ShedAction("batch", "restore", 8, 1, 1.0))
    assert r1.ok and r2.ok
    assert received == [("/shed/batch", {"class": "batch", "action": "shed", "gpus": 8, "site": "s1"}),
                        ("/restore/batch", {"class": "batch", "action": "restore", "gpus": 8, "site": "s1"})]


async def test_http_hook_error_status_is_a_failure(http_sink) -> None:
    port, _received = http_sink
    hook = ShedHook(workload="batch", shed_url=f"http://127.0.0.1:{port}/fail", timeout_s=2.0)
    r = await HookRunner([hook]).run(ShedAction("batch", "shed", 8, 1, 0.0))
    assert not r.ok and "500" in r.detail
