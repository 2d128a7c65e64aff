"""Hostile site configs: random mutations of examples/demo-site.toml (text level and value level)
through ``load_config``: a valid config (every number finite) or a ``ConfigError`` whose every line
names the file and a field, never another exception."""

from __future__ import annotations

import math
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from powerctl.config import ConfigError, SiteConfig, load_config, parse_config
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.fuzz

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml"
DEMO_TEXT = DEMO.read_text()
DEMO_LINES = DEMO_TEXT.splitlines(keepends=True)
DEMO_DATA = tomllib.loads(DEMO_TEXT)
assert "max_discharge_kw = " in DEMO_TEXT and "altitude_m = " in DEMO_TEXT  # the explicit examples below need them
WORK = Path(tempfile.mkdtemp(prefix="powerctl-fuzz-config-"))

TOKENS = st.sampled_from([
    "=", "[", "]", "[[", "]]", "{", "}", ",", '"', "'", "\n", " ", ".", "#",
    "nan", "inf", "-inf", "+nan", "1e999", "-0", "0x7fffffff", "0o777", "1_000", "99999999999999999999999",
    "true", "false", '"x"', '""""', "1979-05-27T07:32:00Z", "[devices.limits]", "[[devices]]", "[gpu]",
    "min_w", "max_w = -1", "kind = \"modbus_tcp\"", "nature = \"battery\"", "\u0000", "\ud7ff", "é",
])
INSERT = st.lists(TOKENS | st.text(max_size=6), min_size=1, max_size=6).map("".join)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    lines = list(DEMO_LINES)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "swap", "truncate"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "insert":
            lines.insert(i, draw(INSERT) + "\n")
        elif op == "replace":
            line = lines[i]
            a = draw(st.integers(0, len(line)))
            b = draw(st.integers(a, len(line)))
            lines[i] = line[:a] + draw(INSERT) + line[b:]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines = lines[:i]
        if not lines:
            lines = ["\n"]
    return "".join(lines)


def check_outcome(path: Path, load: Any) -> None:
    try:
        cfg = load()
    except ConfigError as exc:
        msg = str(exc)
        assert msg, "empty ConfigError"
        for line in msg.splitlines():
            assert line.startswith(f"{path}: "), line
        return
    assert isinstance(cfg, SiteConfig)
    assert_finite(cfg.model_dump(), "")


def assert_finite(obj: Any, where: str) -> None:
    if isinstance(obj, float):
        assert math.isfinite(obj), f"{where}: {obj} accepted"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            assert_finite(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            assert_finite(v, f"{where}[{i}]")


def write(text: str | bytes) -> Path:
    path = WORK / "site.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    path.chmod(0o600)
    return path


@fuzz(250)
@given(text=mutated_text())
@example(text=re.sub(r"max_discharge_kw = [0-9.]+", "max_discharge_kw = inf", DEMO_TEXT))
@example(text=re.sub(r"altitude_m = [0-9.]+", "altitude_m = nan", DEMO_TEXT))
@example(text=DEMO_TEXT + "\nx = " + "[" * 3000 + "]" * 3000 + "\n")
def test_mutated_toml_text(text: str) -> None:
    path = write(text)
    check_outcome(path, lambda: load_config(path))


@fuzz(100)
@given(raw=st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    path = write(raw)
    check_outcome(path, lambda: load_config(path))


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.lists(st.integers() | st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def leaves(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in the parsed demo config (containers included)."""
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += leaves(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += leaves(v, (*prefix, i))
    return out


PATHS = leaves(DEMO_DATA)


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        out = dict(data)
        if value is None and not rest:
            out.pop(head, None)  # None = remove the key (TOML has no null)
        else:
            out[head] = replaced(data[head], rest, value)
        return out
    out_l = list(data)
    out_l[head] = replaced(data[head], rest, value)
    return out_l


@fuzz(300)
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_mutated_values(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = DEMO_DATA
    for path, value in edits:
        try:
            data = replaced(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent: skip this one
    check_outcome(Path("fuzz.toml"), lambda: parse_config(data, "fuzz.toml"))
