"""Budget split and guard cut: water-filling inside [min, max], release below floors, priorities."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from powerctl.control.split import GpuSlot, cut_to_total, split_budget, water_fill


def _pool(n_a: int = 4, n_b: int = 4, lo: float = 100.0, hi: float = 400.0) -> list[GpuSlot]:
    return [GpuSlot(i, "a", 0, lo, hi) for i in range(n_a)] + [
        GpuSlot(n_a + i, "b", 1, lo, hi) for i in range(n_b)
    ]


def test_water_fill_equal_bounds_splits_evenly() -> None:
    assert water_fill(1000.0, [(100, 400)] * 4) == [250.0] * 4


def test_water_fill_uneven_bounds_levels_the_top() -> None:
    # Levels: the 150 W-max GPU saturates, the rest share what is left equally.
    caps = water_fill(750.0, [(100, 150), (100, 400), (100, 400)])
    assert caps == [150.0, 300.0, 300.0]


def test_split_within_range_uses_whole_budget() -> None:
    r = split_budget({"a": 1.2, "b": 0.8}, _pool())
    assert [r.caps_w[i] for i in range(4)] == [300.0] * 4
    assert [r.caps_w[i] for i in range(4, 8)] == [200.0] * 4
    assert r.released == ()


def test_split_above_max_saturates() -> None:
    r = split_budget({"a": 99.0, "b": 99.0}, _pool())
    assert set(r.caps_w.values()) == {400.0}


def test_split_below_floors_releases_whole_gpus_counting_idle() -> None:
    # 0.32 kW for 4 GPUs of floor 100 W: keep 2 (200 W) + 2 released at idle 60 W = 320 W.
    r = split_budget({"a": 99.0, "b": 0.32}, _pool(), idle_w=60.0)
    assert r.released == (6, 7)
    assert r.caps_w[4] == r.caps_w[5] == 100.0
    assert r.caps_w[6] == r.caps_w[7] == 100.0  # parked at min: no cap goes lower


def test_split_missing_class_releases_it() -> None:
    r = split_budget({"a": 1.0}, _pool())
    assert r.released == (4, 5, 6, 7)


def test_cut_takes_from_least_important_class_first() -> None:
    caps = {i: 400.0 for i in range(8)}
    r = cut_to_total(caps, 2400.0, _pool())  # excess 800 W; class b can give 4 x 300 W
    assert [r.caps_w[i] for i in range(4)] == [400.0] * 4
    assert sum(r.caps_w[i] for i in range(4, 8)) == 800.0
    assert r.deficit_w == 0.0


def test_cut_below_all_floors_reports_deficit() -> None:
    r = cut_to_total({i: 400.0 for i in range(8)}, 500.0, _pool())
    assert set(r.caps_w.values()) == {100.0}
    assert r.deficit_w == 300.0


def test_cut_counts_shed_classes_at_idle() -> None:
    r = cut_to_total({i: 400.0 for i in range(8)}, 1840.0, _pool(), shed_classes={"b"}, idle_w=60.0)
    # b is shed: 4 x 60 W; a keeps 1600 W: fits exactly, nothing cut from a.
    assert [r.caps_w[i] for i in range(4)] == [400.0] * 4
    assert r.deficit_w == 0.0


def test_cut_never_raises_caps() -> None:
    caps = {0: 150.0, 1: 400.0, 2: 120.0, 3: 400.0, 4: 100.0, 5: 100.0, 6: 100.0, 7: 100.0}
    r = cut_to_total(caps, 5000.0, _pool())
    assert r.caps_w == caps


@given(
    budget_a=st.floats(0, 3, allow_nan=False),
    budget_b=st.floats(0, 3, allow_nan=False),
    idle=st.floats(0, 99),
)
def test_split_properties(budget_a: float, budget_b: float, idle: float) -> None:
    gpus = _pool()
    r = split_budget({"a": budget_a, "b": budget_b}, gpus, idle_w=idle)
    for g in gpus:
        assert g.min_w <= r.caps_w[g.index] <= g.max_w  # never a command outside device limits
    for name, budget in (("a", budget_a), ("b", budget_b)):
        members = [g for g in gpus if g.klass == name]
        kept = [g for g in members if g.index not in r.released]
        used = sum(r.caps_w[g.index] for g in kept) + idle * (len(members) - len(kept))
        if kept:
            assert used <= budget * 1000 + 1e-6  # the budget is honoured by the running GPUs


@given(allowed=st.floats(0, 4000, allow_nan=False), start=st.lists(st.floats(100, 400), min_size=8, max_size=8))
def test_cut_properties(allowed: float, start: list[float]) -> None:
    gpus = _pool()
    caps = dict(enumerate(start))
    r = cut_to_total(caps, allowed, gpus)
    total = sum(r.caps_w.values())
    for i, c in r.caps_w.items():
        assert 100.0 <= c <= caps[i] + 1e-9
    assert math.isclose(total, max(allowed, 800.0), abs_tol=1e-6) or total <= allowed + 1e-6
    assert math.isclose(r.deficit_w, max(0.0, 800.0 - allowed) if sum(start) > allowed else 0.0, abs_tol=1e-6)
