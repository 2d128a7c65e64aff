"""Grid billing state for the planner: prices over the horizon and the period's running peak.

`GridBilling` is what the controller core holds: the tariff's prices for each plan and the
billing period's peak import as measured at the meters.

The billing period's running peak import is carried across plans and restarts.
The demand charge is priced on the period's peak import, so a restart must not forget the peak
(it would plan as if the peak so far were 0 and pay for it later). The peak is kept in a small
JSON file in the state directory, written atomically when it rises or a period begins; the read is
bounded and validated, and a file that does not parse or belongs to another period is ignored
with a reason (starting from 0 over-prices a new peak, it never under-prices one already paid).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.optimizer import Plan
from powerctl.process_image import ProcessImage, Quality
from powerctl.tariff_config import BillingPeriod, Tariff
from powerctl.tariffs import HorizonPrices, TariffPrices, billing_key

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 4096
MAX_PEAK_KW = 1e6


class PeakTracker:
    """Peak import (kW) of the current billing period; `path` None keeps it in memory only."""

    def __init__(self, period: BillingPeriod, utc_offset_h: float, path: Path | None = None) -> None:
        self.period = period
        self.utc_offset_h = utc_offset_h
        self.path = path
        self.key: int | None = None
        self.peak = 0.0
        self.note = ""  # why a stored peak was not used (empty when it was, or there was none)

    def _key(self, t_s: float) -> int:
        return int(billing_key(np.array([t_s]), self.period, self.utc_offset_h)[0])

    def load(self, now_s: float) -> None:
        """Take the stored peak if it is valid and of the current period."""
        self.key, self.peak, self.note = self._key(now_s), 0.0, ""
        if self.path is None or not self.path.exists():
            return
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
            if len(raw) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            period, key, peak = data.get("period"), data.get("key"), data.get("peak_kw")
            if period != self.period.value or not isinstance(key, int) or isinstance(peak, bool) \
                    or not isinstance(peak, int | float) or not math.isfinite(peak) or not 0 <= peak <= MAX_PEAK_KW:
                raise ValueError("fields period/key/peak_kw missing or out of range")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self.note = f"{self.path}: stored peak ignored: {exc}"
            return
        if key == self.key:
            self.peak = float(peak)
        else:
            self.note = f"{self.path}: stored peak is of an earlier billing period; starting from 0"

    def peak_kw(self, now_s: float) -> float:
        """The peak so far in now_s's billing period."""
        if self.key is None or self._key(now_s) != self.key:
            return 0.0
        return self.peak

    def update(self, now_s: float, import_kw: float) -> None:
        """Account a measured import (kW, + = import); stores the peak when it changes."""
        key = self._key(now_s)
        changed = False
        if key != self.key:
            self.key, self.peak, changed = key, 0.0, True
        if math.isfinite(import_kw) and import_kw > self.peak:
            self.peak, changed = min(float(import_kw), MAX_PEAK_KW), True
        if changed:
            self._store()

    def _store(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"period": self.period.value, "key": self.key, "peak_kw": self.peak}))
            os.replace(tmp, self.path)
        except OSError as exc:  # planning goes on; the peak is kept in memory
            if not self.note.startswith("cannot store"):
                log.warning("%s: cannot store the demand peak: %s", self.path, exc)
            self.note = f"cannot store {self.path}: {exc}"


class GridBilling:
    """Prices and the running peak for a grid-tied site (None-safe: no tariff = no prices)."""

    def __init__(self, cfg: SiteConfig, state_path: Path | None = None) -> None:
        tariff = cfg.tariff if cfg.tariff is not None else Tariff()
        self.prices = TariffPrices.from_config(tariff) if cfg.tariff is not None else None
        self.meters = [m.name for m in cfg.by_nature(Nature.METER)]
        self.tracker = PeakTracker(tariff.billing_period, tariff.utc_offset_h, state_path)
        self._loaded = False
        # Added to the loop's clock to get Unix time: 0 for the daemon (its clock is Unix time); a
        # replay, whose clock starts at 0, sets the trace's start so that tariffs see its calendar.
        self.time_offset_s = 0.0

    def horizon(self, now_s: float, steps_s: np.ndarray) -> HorizonPrices | None:
        return None if self.prices is None else self.prices.horizon(now_s + self.time_offset_s, steps_s)

    def observe(self, now_s: float, image: ProcessImage) -> float:
        """Account the meters' import now (GOOD readings only); returns the period's peak so far."""
        if not self._loaded:
            self.tracker.load(now_s + self.time_offset_s)
            self._loaded = True
        total, good = 0.0, bool(self.meters)
        for name in self.meters:
            sig = image.get(name, "p_kw", now_s)
            if sig.quality is not Quality.GOOD or sig.value is None:
                good = False
                break
            total += sig.value
        t_s = now_s + self.time_offset_s
        if good:
            self.tracker.update(t_s, total)
        return self.tracker.peak_kw(t_s)


def plan_grid_fields(plan: Plan) -> dict[str, Any]:
    """First-step grid figures of a plan for the `plan` telemetry measurement (empty without a grid)."""
    if plan.grid_import_kw.size == 0:
        return {}
    out: dict[str, Any] = {"grid_kw": float(plan.grid_import_kw[0] - plan.grid_export_kw[0])}
    if plan.import_price_per_kwh.size:
        out["import_price_per_kwh"] = float(plan.import_price_per_kwh[0])
        out["export_price_per_kwh"] = float(plan.export_price_per_kwh[0])
    if plan.price_source:
        out["price_source"] = plan.price_source
    for term in ("grid_import_cost", "export_revenue", "demand_charge", "peak_import_kw"):
        if term in plan.objective_terms:
            out[term] = float(plan.objective_terms[term])
    return out


def plan_grid_payload(plan: Plan) -> dict[str, Any]:
    """The grid's per-step series for the MQTT plan payload (empty without a grid)."""
    if plan.grid_import_kw.size == 0:
        return {}
    return {"grid_kw": (plan.grid_import_kw - plan.grid_export_kw).tolist(),
            "import_price_per_kwh": plan.import_price_per_kwh.tolist(),
            "export_price_per_kwh": plan.export_price_per_kwh.tolist(),
            "price_source": plan.price_source}
