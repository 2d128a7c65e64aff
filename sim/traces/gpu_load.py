"""GPU workload traces -> per-GPU power demand (W) over time.

Azure LLM inference trace (request arrivals with prompt and output token counts)
--------------------------------------------------------------------------------
Each request is GPU work: ``a x ContextTokens + b x GeneratedTokens`` GPU-seconds at full power,
with ``a`` (prefill, s/token) and ``b`` (decode, s/token) from the Splitwise profile of llama2-70b
on DGX-A100, tensor parallel 8, batch 1 (``splitwise_sim_perf_model.csv``): prompt time is fitted
linear in prompt size; decode time per token is divided by ``decode_batch`` (continuous batching
serves several sequences per decode step; 8 is an assumption). Work per time bin / capacity =
utilisation; the capacity is set so that the *mean* utilisation of the inference GPUs equals
``mean_util`` (a sizing assumption: the operator sized the class for its traffic). Demand per GPU
= ``idle_w + (max_w - idle_w) x min(utilisation, 1)``. The 57-minute trace is looped to cover a
longer run (its short-term variability repeats; there is no diurnal envelope in the data).

Generic CSV traces
------------------
``time`` + one column per class, in W per GPU or in % utilisation (``load_demand_csv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from powerctl.sim.traces.loaders import TraceError, load_series

# Fitted once from splitwise_sim_perf_model.csv (llama2-70b, a100-80gb, TP 8, batch 1):
# prompt_time slope ≈ 0.188 ms per prompt token (least squares over 128-8,192 tokens);
# token_time ≈ 45 ms per generated token.
PREFILL_S_PER_TOKEN = 0.188e-3
DECODE_S_PER_TOKEN = 45e-3


def read_azure_llm(path: str | Path) -> pd.DataFrame:
    """Arrivals: columns t_s (seconds from the first request), context_tokens, generated_tokens."""
    p = Path(path)
    try:
        raw = pd.read_csv(p)
    except Exception as exc:
        raise TraceError(f"{p}: cannot read: {exc}") from None
    for col in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"):
        if col not in raw.columns:
            raise TraceError(f"{p}: column {col!r}: missing")
    try:
        ts = pd.to_datetime(raw["TIMESTAMP"])
    except (ValueError, TypeError) as exc:
        raise TraceError(f"{p}: column 'TIMESTAMP': cannot parse: {exc}") from None
    if ts.isna().any():
        raise TraceError(f"{p}: column 'TIMESTAMP': row {int(ts.isna().to_numpy().argmax())}: empty")
    ctx = pd.to_numeric(raw["ContextTokens"], errors="coerce")
    gen = pd.to_numeric(raw["GeneratedTokens"], errors="coerce")
    for name, s in (("ContextTokens", ctx), ("GeneratedTokens", gen)):
        bad = s.isna() | (s < 0)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise TraceError(f"{p}: column {name!r}: row {i}: not a token count: {raw[name].iloc[i]!r}")
    t = (ts - ts.min()).dt.total_seconds().to_numpy(float)
    out = pd.DataFrame(
        {"t_s": t, "context_tokens": ctx.to_numpy(float), "generated_tokens": gen.to_numpy(float)}
    )
    # arrivals may share a time stamp (two requests in the same 0.1 ms): that is data, not an error
    return out.sort_values("t_s", kind="stable").reset_index(drop=True)


def work_rate(
    arrivals: pd.DataFrame,
    step_s: float,
    *,
    decode_batch: float = 8.0,
    prefill_s_per_token: float = PREFILL_S_PER_TOKEN,
    decode_s_per_token: float = DECODE_S_PER_TOKEN,
) -> np.ndarray:
    """GPU-seconds of full-power work arriving per second, per bin of ``step_s`` (one period)."""
    if decode_batch <= 0:
        raise ValueError("decode_batch must be > 0")
    work_s = (
        prefill_s_per_token * arrivals["context_tokens"].to_numpy()
        + decode_s_per_token / decode_batch * arrivals["generated_tokens"].to_numpy()
    )
    period_s = float(arrivals["t_s"].max()) + 1e-9
    n = max(int(np.ceil(period_s / step_s)), 1)
    bins = np.minimum((arrivals["t_s"].to_numpy() // step_s).astype(int), n - 1)
    per_bin = np.bincount(bins, weights=work_s, minlength=n)
    return per_bin / step_s


def inference_demand_w(
    rate: np.ndarray, *, idle_w: float, max_w: float, mean_util: float = 0.6
) -> np.ndarray:
    """Per-GPU demand (W) per bin from the work rate, capacity sized for ``mean_util``."""
    if not 0 < mean_util <= 1:
        raise ValueError(f"mean_util must be in (0, 1] (got {mean_util})")
    mean = float(np.mean(rate))
    if mean <= 0:
        raise TraceError("GPU trace: no work in the trace")
    # capacity such that the mean of the *clipped* utilisation is mean_util (bursts above 100 %
    # are lost work, so the scale is found by bisection, not by dividing by the mean)
    lo, hi = mean_util / mean, mean_util / mean * 1e3
    if np.mean(np.minimum(rate * hi, 1.0)) < mean_util:
        raise TraceError(f"GPU trace: too bursty for a mean utilisation of {mean_util:g}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(np.minimum(rate * mid, 1.0)) < mean_util else (lo, mid)
    util = np.minimum(rate * hi, 1.0)
    return idle_w + (max_w - idle_w) * util


def azure_demand_series(
    path: str | Path,
    index: pd.DatetimeIndex,
    *,
    idle_w: float,
    max_w: float,
    mean_util: float = 0.6,
    decode_batch: float = 8.0,
) -> pd.Series:
    """Per-GPU inference demand (W) on ``index`` (regular), the Azure trace looped from its start."""
    step_s = (index[1] - index[0]).total_seconds() if len(index) > 1 else 60.0
    arrivals = read_azure_llm(path)
    per_bin = inference_demand_w(
        work_rate(arrivals, step_s, decode_batch=decode_batch),
        idle_w=idle_w,
        max_w=max_w,
        mean_util=mean_util,
    )
    k = np.arange(len(index)) % len(per_bin)
    return pd.Series(per_bin[k], index=index, name="gpu_demand_w")


def load_demand_csv(
    path: str | Path, classes: list[str], *, unit: str = "W", max_w: float, idle_w: float, tz: str = "UTC"
) -> pd.DataFrame:
    """Generic per-class trace: ``time`` + one column per class; ``unit`` "W" (per GPU) or "%" (utilisation)."""
    if unit not in ("W", "%"):
        raise ValueError("unit must be 'W' or '%'")
    df = load_series(path, dict.fromkeys(classes, "1"), tz=tz)
    for c in classes:
        v = df[c].to_numpy()
        if unit == "%":
            if v.min() < 0 or v.max() > 100:
                raise TraceError(f"{path}: column {c!r}: utilisation outside 0-100 % (wrong units?)")
            df[c] = idle_w + (max_w - idle_w) * v / 100.0
        elif v.min() < 0 or v.max() > 2 * max_w:
            raise TraceError(
                f"{path}: column {c!r}: {v.max():g} W per GPU is not plausible for max_w={max_w:g} (wrong units?)"
            )
    return df
