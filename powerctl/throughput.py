"""The measured GPU cap-vs-throughput table, and the one lookup of a curve by (GPU model, workload).

The table is ``powerctl/data/gpu-cap-curves.csv`` (columns gpu, workload, cap_w,
relative_throughput, source; sources in ``powerctl/data/README.md``). A curve is keyed by the
``gpu`` column (``[gpu] model`` in the site config, e.g. "A40") and the workload's id, the first word
of the ``workload`` column (a class's ``curve``, e.g. "resnet50"); "linear" (throughput proportional
to power) needs no row. Every user of a curve goes through ``throughput_curve``: config validation,
the planner's value curves (``powerctl/control/value_curves.py``) and the simulated plant.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

CURVES_CSV = Path(__file__).resolve().parent / "data" / "gpu-cap-curves.csv"
LINEAR = "linear"
COLUMNS = ("gpu", "workload", "cap_w", "relative_throughput")

Points = tuple[tuple[float, float], ...]  # (cap W, relative throughput), caps ascending


class CurveError(ValueError):
    """A curve that is not in the table, or a table row that cannot be read (says which)."""


@dataclass(frozen=True)
class CurveTable:
    points: Mapping[tuple[str, str], Points]  # (gpu model, workload id) -> points
    source: str

    def models(self) -> list[str]:
        return sorted({g for g, _ in self.points})

    def workloads(self, gpu_model: str) -> list[str]:
        return sorted(w for g, w in self.points if g == gpu_model)


def workload_id(workload: str) -> str:
    """The workload's id: the first word of the table's ``workload`` column."""
    return workload.split(maxsplit=1)[0] if workload.strip() else ""


def parse_table(rows: Iterable[Mapping[str, str]], source: str) -> CurveTable:
    """The table from CSV rows (pure). Repeated caps of one curve are averaged."""
    acc: dict[tuple[str, str], dict[float, list[float]]] = {}
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise CurveError(f"{source}: missing columns {', '.join(missing)}")
        try:
            cap_w, rel = float(r["cap_w"]), float(r["relative_throughput"])
        except (TypeError, ValueError):
            raise CurveError(f"{source} row {i}: cap_w/relative_throughput must be numbers "
                             f"(got {r['cap_w']!r}, {r['relative_throughput']!r})") from None
        if not (np.isfinite(cap_w) and np.isfinite(rel)) or cap_w <= 0 or rel < 0:
            raise CurveError(f"{source} row {i}: need cap_w > 0 and relative_throughput >= 0")
        key = (r["gpu"].strip(), workload_id(r["workload"]))
        acc.setdefault(key, {}).setdefault(cap_w, []).append(rel)
    points = {k: tuple((c, float(np.mean(v[c]))) for c in sorted(v)) for k, v in acc.items()}
    return CurveTable(points, source)


def load_table(path: str | Path = CURVES_CSV) -> CurveTable:
    """Read the table from a CSV file (the I/O; everything else here is pure)."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            return parse_table(csv.DictReader(f), p.name)
    except OSError as exc:
        raise CurveError(f"{p}: cannot read the GPU curve table ({exc.strerror or exc})") from None


@cache
def default_table() -> CurveTable:
    """The table that ships with the package, read once."""
    return load_table(CURVES_CSV)


def throughput_curve(
    gpu_model: str, workload: str, table: CurveTable | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cap fraction = cap / the highest measured cap, relative throughput), caps ascending.

    Only the rows of ``gpu_model`` count. Raises CurveError naming what the table does hold.
    """
    if workload == LINEAR:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    t = table if table is not None else default_table()
    pts = t.points.get((gpu_model, workload))
    if pts is None:
        if gpu_model not in t.models():
            raise CurveError(
                f"no measured curves for GPU model {gpu_model!r} in {t.source} (models: "
                f"{', '.join(t.models())}); set gpu.model to one of them or use curve = {LINEAR!r}"
            )
        raise CurveError(
            f"no curve {workload!r} for GPU model {gpu_model!r} in {t.source}; known for {gpu_model}: "
            f"{', '.join(t.workloads(gpu_model))} or {LINEAR!r}"
        )
    if len(pts) < 2:
        raise CurveError(f"curve {workload!r} for {gpu_model!r} in {t.source}: needs two or more caps")
    cap_w = np.array([c for c, _ in pts])
    return cap_w / cap_w.max(), np.array([r for _, r in pts])
