"""The on-disk spool: atomic segments, FIFO order, size bound, survival across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from powerctl.telemetry.spool import Spool


def lines(tag: str, n: int) -> list[str]:
    return [f"m,k={tag} v={i}i {i}" for i in range(n)]


def test_segments_are_fifo_and_survive_a_new_instance(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", max_bytes=1 << 20)
    s.append(lines("a", 3))
    s.append(lines("b", 2))
    assert (len(s), s.points) == (2, 5)
    again = Spool(tmp_path / "spool", max_bytes=1 << 20)  # a daemon restart
    assert (len(again), again.points, again.size_bytes) == (2, 5, s.size_bytes)
    first = again.oldest()
    assert first is not None and again.read(first).decode().splitlines() == lines("a", 3)
    again.remove(first)
    nxt = again.oldest()
    assert nxt is not None and again.read(nxt).decode().splitlines() == lines("b", 2)
    again.append(lines("c", 1))  # numbering continues after the surviving segments
    assert [seg.path.name.split("-")[0] for seg in again._segments] == ["000000000002", "000000000003"]


def test_no_temp_files_left_and_half_written_ones_are_discarded(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    s = Spool(d, max_bytes=1 << 20)
    s.append(lines("a", 2))
    assert [p.name for p in d.iterdir()] == ["000000000001-2.lp"]
    (d / ".tmp-000000000002").write_text("m v=1i 1\nm v=2")  # crash in the middle of a write
    again = Spool(d, max_bytes=1 << 20)
    assert again.points == 2
    assert not list(d.glob(".tmp-*"))


def test_size_bound_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    one = len(("\n".join(lines("a", 10)) + "\n").encode())
    s = Spool(tmp_path / "spool", max_bytes=3 * one)
    for tag in "abcd":
        s.append(lines(tag, 10))
    assert s.points == 30
    assert s.dropped_points == 10
    assert s.size_bytes <= 3 * one
    oldest = s.oldest()
    assert oldest is not None and b"k=b" in s.read(oldest)


def test_a_batch_bigger_than_the_bound_is_dropped_not_the_whole_spool(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", max_bytes=200)
    s.append(lines("a", 2))
    assert s.append(lines("huge", 100)) == 100
    assert s.points == 2 and s.dropped_points == 100


def test_rejected_batches_are_kept_aside_with_a_reason(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", max_bytes=1 << 20)
    s.append(lines("a", 2))
    seg = s.oldest()
    assert seg is not None
    target = s.set_aside(seg, "bad line")
    assert len(s) == 0 and s.points == 0 and target.exists()
    assert target.with_suffix(".reason").read_text().strip() == "bad line"


def test_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=0)
