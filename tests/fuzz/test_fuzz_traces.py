"""Hostile trace files: random CSVs through the trace loaders (generic series, GPU demand, Azure LLM
arrivals, the irradiance readers): a validated frame (tz-aware, sorted, unique, finite) or a
``TraceError`` naming the file, never another exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from powerctl.sim.traces.gpu_load import load_demand_csv, read_azure_llm
from powerctl.sim.traces.irradiance import read_irradiance
from powerctl.sim.traces.loaders import TraceError, load_series
from tests.fuzz.settings import fuzz

pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore")]  # parsers warn about odd input by design

WORK = Path(tempfile.mkdtemp(prefix="powerctl-fuzz-traces-"))

TIMES = st.one_of(
    st.datetimes(min_value=pd.Timestamp("1990-01-01").to_pydatetime(), max_value=pd.Timestamp("2040-01-01").to_pydatetime())
    .map(lambda t: t.isoformat(sep=" ")),
    st.sampled_from(["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01T00:10:00Z", "2024-01-01 00:15+02:00",
                     "1677-09-21 00:12", "2262-04-12 00:00", "9999-12-31", "0", "-1", "yesterday", "", "NaT",
                     "01/02/2019 00:05", "2024-02-30 00:00"]),
)
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e999", "abc", "1,5", '"', "0", "-0.0", "250", "999999"]),
    st.text(alphabet=st.characters(blacklist_characters=",\n\r"), max_size=6),
)


@st.composite
def csv_text(draw: st.DrawFn, columns: list[str], time_col: str | None) -> str:
    cols = list(columns)
    if time_col is not None:
        cols.insert(0, time_col)
    if draw(st.integers(0, 9)) == 0:
        cols = draw(st.permutations(cols))[: max(1, len(cols) - 1)]  # sometimes a column goes missing
    rows = []
    base = pd.Timestamp("2024-01-01 00:00")
    for i in range(draw(st.integers(0, 12))):
        cells = []
        for c in cols:
            if c == time_col:
                regular = (base + pd.Timedelta(minutes=5 * i)).isoformat(sep=" ")
                cells.append(draw(st.sampled_from([regular, regular, regular]) | TIMES))
            else:
                cells.append(draw(CELLS))
        rows.append(",".join(cells))
    return ",".join(cols) + "\n" + "\n".join(rows) + ("\n" if rows else "")


def write(text: str, name: str = "trace.csv") -> Path:
    path = WORK / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def check_frame(df: pd.DataFrame) -> None:
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.tz is not None
    assert df.index.is_monotonic_increasing and not df.index.has_duplicates
    vals = df.select_dtypes("number").to_numpy(float)
    assert np.isfinite(vals).all(), "non-finite value in a validated trace"


def outcome(fn: Any, path: Path) -> Any:
    try:
        return fn()
    except TraceError as exc:
        assert str(path) in str(exc), f"TraceError without the file name: {exc}"
        return None


@fuzz(200)
@given(text=csv_text(["pv", "load"], "time"), tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
@example(text="time,pv,load\n2024-03-31 02:30,1,1\n2024-03-31 03:30,1,1\n", tz="Europe/Berlin")  # no such local time
@example(text="time,pv,load\n2024-10-27 02:30,1,1\n2024-10-27 02:45,1,1\n", tz="Europe/Berlin")  # twice that day
def test_load_series(text: str, tz: str) -> None:
    path = write(text)
    df = outcome(lambda: load_series(path, {"pv": "kW", "load": "W"}, tz=tz), path)
    if df is not None:
        check_frame(df)
        assert (df["pv"].abs() <= 1e6).all()


@fuzz(150)
@given(text=csv_text(["inference", "training"], "time"), unit=st.sampled_from(["W", "%"]))
def test_load_demand_csv(text: str, unit: str) -> None:
    path = write(text)
    df = outcome(lambda: load_demand_csv(path, ["inference", "training"], unit=unit, max_w=700.0, idle_w=70.0), path)
    if df is not None:
        check_frame(df)
        assert (df[["inference", "training"]].to_numpy() >= 0).all()


@fuzz(150)
@given(text=csv_text(["ContextTokens", "GeneratedTokens"], "TIMESTAMP"))
def test_read_azure_llm(text: str) -> None:
    path = write(text)
    df = outcome(lambda: read_azure_llm(path), path)
    if df is not None:
        assert all(math.isfinite(v) for v in df.to_numpy(float).ravel())


RMIS_COLS = ["irradiance_ghi__1", "irradiance_dni__2", "irradiance_dhi__3", "pvlib_clearsky_ghi",
             "pvlib_clearsky_dni", "pvlib_clearsky_dhi"]


@fuzz(150)
@given(text=csv_text(RMIS_COLS, "measured_on"))
@example(text="measured_on,irradiance_ghi__1\nnot a date,1\n")
@example(text="measured_on,irradiance_ghi__1,irradiance_dni__2,irradiance_dhi__3\n01/02/2019 00:05,1,1,1\n")
@example(text="measured_on,irradiance_ghi__1,irradiance_dni__2,irradiance_dhi__3\n01/02/2019 00:05,x,1,1\n")
def test_read_irradiance_rmis_like(text: str) -> None:
    path = write(text)
    res = outcome(lambda: read_irradiance(path), path)
    if res is not None:
        check_frame(res[0])


@fuzz(100)
@given(head=st.sampled_from(["Source,Location ID,City\n", "723170,\"GREENSBORO\",NC,-5.0,36.1,-79.9,270\n", "junk\n"]),
       body=csv_text(["GHI", "DNI", "DHI", "Temperature", "Wind Speed"], "Year"))
def test_read_irradiance_other_headers(head: str, body: str) -> None:
    path = write(head + body)
    res = outcome(lambda: read_irradiance(path), path)
    if res is not None:
        check_frame(res[0])
