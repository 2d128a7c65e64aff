"""Request planning: merge adjacent points into as few Modbus reads as the device allows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from powerctl.profiles.model import Point


@dataclass(frozen=True, slots=True)
class Block:
    table: str  # holding | input | coil
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


def plan_blocks(points: Iterable[Point], max_registers: int, max_hole: int) -> list[Block]:
    """Cover every point with read blocks of at most ``max_registers``.

    Two points share a block when the gap between them is at most ``max_hole`` registers (reading
    across a hole is cheaper than a second request, unless the device refuses holes: max_hole 0).
    A point is never split across blocks.
    """
    out: list[Block] = []
    by_table: dict[str, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table in sorted(by_table):
        pts = sorted(by_table[table], key=lambda p: p.address)
        start, end = pts[0].address, pts[0].end
        for p in pts[1:]:
            gap = p.address - end
            new_end = max(end, p.end)
            if gap <= max_hole and new_end - start <= max_registers:
                end = new_end
            else:
                out.append(Block(table, start, end - start))
                start, end = p.address, p.end
        out.append(Block(table, start, end - start))
    return out
