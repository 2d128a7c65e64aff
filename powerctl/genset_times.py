"""When each genset last changed state, kept in the state directory so minimum up/down times
survive a restart (issue 16).

Without it a restarted daemon counts a genset's time in its state from first sight: a running set
cannot stop for `min_up_s` (harmless) and a stopped one cannot start for `min_down_s` (the
controller's safety-over-wear rule lets it start when the load cannot be carried otherwise, see
powerctl.control.core). The file is read bounded and validated (powerctl.statefile); anything wrong
is logged once and the state is unknown (first sight counts, as before). Written atomically when
a state changes.

Where the profile has the genset's run-time counter (`run_time_s`), its reading at the change is
stored too, and a restarted daemon reads what happened while none watched from the counter's
growth since (`since_from_counter`): a set that stopped, started or ran between is no longer
"first sight" but timed from the counter.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from powerctl.statefile import StateFileError, read_state_json

log = logging.getLogger(__name__)

# A stored change older than this is not believed (a clock far off, or a file from another life).
MAX_AGE_S = 30 * 86400.0


def since_from_counter(on: bool, now_s: float, stored: tuple[bool, float, float | None] | None,
                       run_s: float | None) -> float | None:
    """When the genset's present state began, from the stored state and the run-time counter's growth
    since it was stored; None where nothing is known (first sight).

    The growth dc (the engine's run time since `since_s`, clipped to the time passed) assumes at most
    one run or rest began while no controller watched, the usual case:
      stored on,  now on:  the present run is at most dc long (less than the time passed: it stopped
                           and ran again)
      stored on,  now off: it stopped at since_s + dc
      stored off, now on:  it started dc ago
      stored off, now off: it rested since since_s, or, where the counter grew, since since_s + dc
    Without a counter reading then and now (or one that went back: a reset), only a state that did
    not change is known. A coarse counter (0.1 h steps) errs by up to one step.
    """
    if stored is None:
        return None
    was_on, since_s, run0_s = stored
    if run0_s is None or run_s is None or run_s < run0_s:
        return since_s if was_on == on else None
    dc_s = min(run_s - run0_s, max(0.0, now_s - since_s))
    if on:
        return max(since_s, now_s - dc_s)
    return since_s + dc_s


class GensetTimes:
    """{genset: (on, since_s)} in a JSON file; `path` None keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._written: dict[str, tuple[bool, float, float | None]] | None = None

    def load(self, now_s: float, names: list[str]) -> dict[str, tuple[bool, float, float | None]]:
        """The stored state per known genset whose time is plausible (in the past, not too old), with
        the run-time counter's reading at that time where it was known."""
        if self.path is None:
            return {}
        try:
            doc = read_state_json(self.path)
        except StateFileError as exc:
            log.warning("genset up/down times unknown (counted from first sight): %s", exc)
            return {}
        out: dict[str, tuple[bool, float, float | None]] = {}
        if doc is None:
            return out
        if not isinstance(doc, dict):
            log.warning("%s: not a JSON object; genset up/down times counted from first sight", self.path)
            return out
        for name in names:
            item = doc.get(name)
            if not isinstance(item, dict):
                continue
            on, since = item.get("on"), item.get("since_s")
            if not isinstance(on, bool) or not isinstance(since, int | float) or isinstance(since, bool):
                log.warning("%s: %s: bad entry %r ignored", self.path, name, item)
                continue
            since_f = float(since)
            if not math.isfinite(since_f) or since_f > now_s + 1.0 or now_s - since_f > MAX_AGE_S:
                log.warning("%s: %s: since_s %r is not plausible now; ignored", self.path, name, since)
                continue
            run = item.get("run_s")
            run_f: float | None = None
            if isinstance(run, int | float) and not isinstance(run, bool) and math.isfinite(run) and run >= 0:
                run_f = float(run)
            elif run is not None:
                log.warning("%s: %s: run_s %r ignored", self.path, name, run)
            out[name] = (on, since_f, run_f)
        return out

    def save(self, state: dict[str, tuple[bool, float]], run_s: dict[str, float | None] | None = None) -> None:
        """Write the state (and the run-time counter at each change, where known) if it changed
        (atomically; a failure is logged, the controller goes on)."""
        runs = run_s or {}
        full = {n: (on, t, runs.get(n)) for n, (on, t) in state.items()}
        if self.path is None or full == self._written:
            return
        doc = {n: {"on": on, "since_s": t} | ({} if r is None else {"run_s": r}) for n, (on, t, r) in full.items()}
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
            self._written = full
        except OSError as exc:
            log.warning("%s: cannot store genset up/down times: %s", self.path, exc)
