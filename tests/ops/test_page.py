"""The status page in a real headless browser (Debian's Chromium) against a running daemon: the
values it shows after its JavaScript ran are the daemon's, and a screenshot is taken."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.ops.test_http import aget, running_site, site_with_surfaces, until
from tests.servers import find_binary, or_missing

pytestmark = pytest.mark.servers


def chromium() -> str:
    return or_missing(lambda: find_binary(("/usr/bin/chromium", "chromium", "chromium-browser"), "chromium"))


async def browse(url: str, *args: str, timeout_s: float = 90.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--hide-scrollbars", "--virtual-time-budget=8000", "--window-size=1280,1500", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


class Cells(HTMLParser):
    """Text by element id, and the rows of the per-device tables (data-name -> cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self.polylines = 0
        self._stack: list[tuple[str, str | None, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "polyline":
            self.polylines += 1
        self._stack.append((tag, a.get("id"), a.get("data-name")))
        if a.get("data-name"):
            self.rows[str(a["data-name"])] = []

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _tag, ident, _name in self._stack:
            if ident:
                self.by_id[ident] = self.by_id.get(ident, "") + data
        rows = [n for _t, _i, n in self._stack if n]
        if rows and data.strip():
            self.rows[rows[-1]].append(data.strip())


def kw(text: str) -> float:
    m = re.fullmatch(r"(-?\d+\.\d) kW", text.strip())
    assert m, text
    return float(m.group(1))


@pytest.mark.timeout(240)
async def test_the_page_shows_the_daemons_values(tmp_path: Path) -> None:
    cfg = site_with_surfaces(tmp_path)
    async with running_site(cfg) as (_daemon, _site, base):
        async def planned() -> bool:
            code, body, _ = await aget(base + "/api/state")
            return code == 200 and json.loads(body)["health"]["ok"] and (await aget(base + "/api/plan"))[0] == 200

        await until(planned, "no healthy state with a plan")
        before = json.loads((await aget(base + "/api/state"))[1])
        dom = await browse(base + "/", "--dump-dom")
        state = json.loads((await aget(base + "/api/state"))[1])
        shot = tmp_path / "status-page.png"
        await browse(base + "/", f"--screenshot={shot}")
    page = Cells()
    page.feed(dom)
    assert page.by_id["mode"] == "plan" and page.by_id["health"] == "ok"
    assert page.by_id["site"] == "demo/m1"
    # what the page showed lies between what the API said just before and just after
    # (PV moves with the curtailment the plan asks for)
    lo, hi = sorted((before["pv_kw"], state["pv_kw"]))
    assert lo - 20.0 <= kw(page.by_id["pv_kw"]) <= hi + 20.0, (page.by_id["pv_kw"], lo, hi)
    assert set(page.rows) >= {"bess", "gen1", *(c.name for c in cfg.gpu.classes)}
    soc_text = page.rows["bess"][1]
    assert soc_text.endswith(" %") and float(soc_text[:-2]) == pytest.approx(state["batteries"]["bess"]["soc_pct"], abs=1.0)
    assert page.rows["gen1"][1] in ("running", "stopped")
    assert page.polylines >= 2  # the plan chart drew its series
    assert re.search(r"\d+ steps", page.by_id["plan_info"]), page.by_id["plan_info"]
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("POWERCTL_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
