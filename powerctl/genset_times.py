"""When each genset last changed state, kept in the state directory so minimum up/down times
survive a restart (issue 16).

Without it a restarted daemon counts a genset's time in its state from first sight: a running set
cannot stop for `min_up_s` (harmless) and a stopped one cannot start for `min_down_s` (the
controller's safety-over-wear rule lets it start when the load cannot be carried otherwise, see
powerctl.control.core). The file is read bounded and validated (powerctl.statefile); anything wrong
is logged once and the state is unknown (first sight counts, as before). Written atomically when
a state changes.
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


class GensetTimes:
    """{genset: (on, since_s)} in a JSON file; `path` None keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stored: dict[str, tuple[bool, float]] = {}
        self._written: dict[str, tuple[bool, float]] | None = None

    def load(self, now_s: float, names: list[str]) -> dict[str, tuple[bool, float]]:
        """The stored state per known genset whose time is plausible (in the past, not too old)."""
        if self.path is None:
            return {}
        try:
            doc = read_state_json(self.path)
        except StateFileError as exc:
            log.warning("genset up/down times unknown (counted from first sight): %s", exc)
            return {}
        out: dict[str, tuple[bool, float]] = {}
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
            out[name] = (on, since_f)
        self._stored = dict(out)
        return out

    def save(self, state: dict[str, tuple[bool, float]]) -> None:
        """Write the state if it changed (atomically; a failure is logged, the controller goes on)."""
        if self.path is None or state == self._written:
            return
        doc = {n: {"on": on, "since_s": t} for n, (on, t) in state.items()}
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
            self._written = dict(state)
        except OSError as exc:
            log.warning("%s: cannot store genset up/down times: %s", self.path, exc)
