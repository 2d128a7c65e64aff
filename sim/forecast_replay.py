"""Forecasts the controller sees during a replay: made only from what was known at ``now``.

Methods for PV (``pv_method``):

- ``clearsky`` (default): clear-sky AC power of the arrays (pvlib, known in advance: it is
  astronomy) x a clear-sky index. The index at lead 0 is the ratio of available to clear-sky energy
  over the last ``window_s`` of daylight; it relaxes with time constant ``tau_s`` toward the ratio
  over the last 24 h (a "today looks like yesterday" prior).
- ``persistence``: the PV of the same interval 24 h earlier.
- ``provided``: a ``pv_forecast_kw`` column of the trace, taken as issued before the run (we cannot
  check that; the column is the user's claim).
- ``perfect``: the future trace itself. Only with ``--perfect-foresight``, as the upper bound.

GPU demand: ``recent`` (mean over the last hour, held flat) or ``perfect``. Other load: recent mean.

History uses the trace's *available* PV (what an inverter's MPPT could make), not the plant's
delivered PV, which is lower while curtailed: a real site estimates available power from its
inverters or a reference cell. This is the one assumption the forecasts make about the past.

Every forecast is an interval mean over each horizon step ``[now + s_k, now + s_{k+1})``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from powerctl.sim.traces.site_trace import SiteTrace

DAY_S = 86400.0


@dataclass
class ReplayForecaster:
    trace: SiteTrace
    n_pv: int
    pv_share: np.ndarray  # (n_pv,) kWp shares
    gpus_per_class: np.ndarray  # (n_class,)
    pv_method: str = "clearsky"
    gpu_method: str = "recent"
    window_s: float = 3600.0
    tau_s: float = 3 * 3600.0
    # set when a forecast would have looked past ``now`` (perfect foresight excepted); tests read it
    peeked: bool = False

    def __post_init__(self) -> None:
        if self.pv_method not in ("clearsky", "persistence", "provided", "perfect"):
            raise ValueError(f"unknown PV forecast method {self.pv_method!r}")
        if self.gpu_method not in ("recent", "perfect"):
            raise ValueError(f"unknown GPU forecast method {self.gpu_method!r}")
        if self.pv_method == "provided" and "pv_forecast_kw" not in self.trace.df.columns:
            raise ValueError("pv forecast 'provided' needs a pv_forecast_kw column in the trace")

    def edges(self, now_s: float, steps_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = now_s + np.concatenate([[0.0], np.cumsum(steps_s)])
        return e[:-1], e[1:]

    def _past(self, what: str, a_s: float, b_s: float, now_s: float) -> float:
        if b_s > now_s + 1e-6:
            self.peeked = True
        return float(self.trace.mean_between(what, np.array([a_s]), np.array([b_s]))[0])

    def clear_sky_index(self, now_s: float) -> tuple[float, float]:
        """(index over the last window, index over the last 24 h); 1.0 when there was no sun."""
        k_now = self._ratio(now_s - self.window_s, now_s, now_s)
        k_day = self._ratio(now_s - DAY_S, now_s, now_s)
        if k_now is None:
            k_now = k_day if k_day is not None else 1.0
        return k_now, k_day if k_day is not None else k_now

    def _ratio(self, a_s: float, b_s: float, now_s: float) -> float | None:
        a_s = max(a_s, float(self.trace.t_s[0]))
        if b_s - a_s < 60.0:
            return None
        clear = self._past("clear", a_s, b_s, now_s)
        if clear <= 0.02 * max(float(self.trace.df["pv_clear_kw"].max()), 1e-9):
            return None  # night or dawn: no information
        return min(max(self._past("pv", a_s, b_s, now_s) / clear, 0.0), 1.3)

    def pv_total_kw(self, now_s: float, steps_s: np.ndarray) -> np.ndarray:
        a, b = self.edges(now_s, steps_s)
        tr = self.trace
        if self.pv_method == "perfect":
            return tr.mean_between("pv", a, b)
        if self.pv_method == "persistence":
            return tr.mean_between(
                "pv", np.maximum(a - DAY_S, tr.t_s[0]), np.maximum(b - DAY_S, tr.t_s[0] + 1)
            )
        if self.pv_method == "provided":
            col = tr.df["pv_forecast_kw"].to_numpy(float)
            i = np.clip(((a - tr.t_s[0]) // tr.step_s).astype(int), 0, len(col) - 1)
            return col[i]
        k_now, k_day = self.clear_sky_index(now_s)
        lead = (a + b) / 2 - now_s
        k = k_day + (k_now - k_day) * np.exp(-lead / self.tau_s)
        return tr.mean_between("clear", a, b) * k

    def gpu_kw(self, now_s: float, steps_s: np.ndarray) -> np.ndarray:
        a, b = self.edges(now_s, steps_s)
        if self.gpu_method == "perfect":
            per_gpu_w = self.trace.mean_between("gpu", a, b)
        else:
            lo = max(now_s - 3600.0, float(self.trace.t_s[0]))
            recent = self.trace.mean_between("gpu", np.array([lo]), np.array([max(now_s, lo + 1.0)]))
            per_gpu_w = np.repeat(recent, len(a), axis=1)
        return per_gpu_w * self.gpus_per_class[:, None] / 1000.0

    def other_kw(self, now_s: float, steps_s: np.ndarray) -> np.ndarray:
        a, _b = self.edges(now_s, steps_s)
        if self.gpu_method == "perfect":
            return self.trace.mean_between("other", a, _b)
        lo = max(now_s - 3600.0, float(self.trace.t_s[0]))
        v = float(self.trace.mean_between("other", np.array([lo]), np.array([max(now_s, lo + 1.0)]))[0])
        return np.full(len(a), v)

    def __call__(
        self, now_s: float, image: Any, steps_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The controller core's forecaster signature: (pv (n_pv, T), gpu (n_class, T), other (T,))."""
        steps = np.asarray(steps_s, dtype=float)
        pv = self.pv_total_kw(now_s, steps)
        return self.pv_share[:, None] * pv[None, :], self.gpu_kw(now_s, steps), self.other_kw(now_s, steps)


def make_forecaster(
    cfg: Any, trace: SiteTrace, *, perfect_foresight: bool = False, pv_method: str = "clearsky"
) -> ReplayForecaster:
    from powerctl.natures import Nature

    kwp = np.array([d.limits.kwp for d in cfg.by_nature(Nature.PV)], dtype=float)
    share = kwp / kwp.sum() if kwp.sum() > 0 else kwp
    gpus = np.array([c.gpus for c in cfg.gpu.classes], dtype=float)
    return ReplayForecaster(
        trace,
        len(kwp),
        share,
        gpus,
        pv_method="perfect" if perfect_foresight else pv_method,
        gpu_method="perfect" if perfect_foresight else "recent",
    )
