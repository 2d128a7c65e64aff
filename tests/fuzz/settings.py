"""Shared hypothesis settings for the fuzz targets (``pytest -m fuzz``).

Bounded: ``max_examples`` per target keeps the whole set well under a minute on 2 cores.
Failing examples are kept in ``tests/fuzz/.hypothesis-db`` (committed, so a failure found once is
replayed first on every machine until it is fixed) and printed as a reproduction blob
(``@reproduce_failure``) with the failure.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

DB_DIR = Path(__file__).resolve().parent / ".hypothesis-db"
DB = DirectoryBasedExampleDatabase(str(DB_DIR))


def fuzz(max_examples: int = 200) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=DB,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
