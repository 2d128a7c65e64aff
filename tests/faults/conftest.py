"""The fault suite logs what the daemon says, but not pymodbus' per-frame traces."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
