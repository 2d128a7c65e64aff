"""Kill -9 with the genset stopped and the battery near its floor (issue 16): the restarted daemon
has seen the stopped genset for no time at all, so counting its minimum down time from first sight
would keep it off for `min_down_s` (600 s here) with the load unserved. Safety over wear: it starts
the genset now.

Real processes on loopback (as tests/restart/test_kill9.py): the simulator serves the plant with no
PV and the battery 1 point above its floor; the first daemon runs observe-only (it reads and plans but
writes nothing, so the genset stays stopped), is killed with SIGKILL, and a normal daemon starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.restart.test_kill9 import Site, site_toml
from tests.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(600)]


class FloorSite(Site):
    sim_args = ("--pv-kw", "0", "--soc", "11")  # no PV, the battery 1 point above its floor

    def start_daemon_observe(self) -> None:
        import subprocess
        import sys

        with open(self.tmp / "observe.log", "ab") as log:
            self.daemon = subprocess.Popen([sys.executable, "-m", "powerctl.cli", "run", "--observe", str(self.cfg_path)],
                                           cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)


def test_restarted_daemon_starts_the_genset_without_waiting_min_down(tmp_path: Path) -> None:
    # Telemetry goes to a port nobody listens on: the daemon spools (not under test here).
    cfg_path = site_toml(tmp_path, f"http://127.0.0.1:{free_port()}")
    site = FloorSite(tmp_path, cfg_path)
    min_down_s = float(next(d for d in site.cfg["devices"] if d["name"] == "gen1")["limits"]["min_down_s"])
    assert min_down_s >= 600
    sim = site.start_sim()
    try:
        site.start_daemon_observe()
        assert site.daemon is not None
        deadline = time.monotonic() + 60
        # until the observing daemon has planned (it logs what it would write)
        while "would" not in (tmp_path / "observe.log").read_text(errors="replace"):
            assert site.daemon.poll() is None, (tmp_path / "observe.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "observe.log").read_text()[-3000:]
            time.sleep(0.1)
        assert not [w for w in site.writes() if w["device"] == "gen1"], "observe-only wrote to the genset"
        site.daemon.kill()
        site.daemon.wait(10)
        assert site.plant()["genset_status"]["gen1"] != 3  # still stopped
        run = site.start_daemon()
        site.wait_up(run)
        t_up = time.time()
        start = None
        while start is None:
            starts = [w for w in site.writes() if w["device"] == "gen1" and w["signal"] == "start_cmd"
                      and w["value"] >= 0.5]
            start = starts[0] if starts else None
            assert site.daemon.poll() is None, site.log_tail(run)
            assert time.time() - t_up < min_down_s / 2, f"no genset start within {min_down_s / 2:.0f} s\n{site.log_tail(run)}"
            time.sleep(0.2)
        print(f"genset start command {start['t'] - run['started']:.1f} s after the restart (min_down_s {min_down_s:.0f})")
        log = (tmp_path / "daemon-00.log").read_text(errors="replace")
        assert "minimum down time yields for gen1" in log, log[-3000:]
    finally:
        if site.daemon is not None and site.daemon.poll() is None:
            site.daemon.kill()
            site.daemon.wait(10)
        sim.terminate()
        sim.wait(10)
