"""Shared pytest fixtures: real servers on loopback (see tests/servers.py).

A missing server binary skips the test with the reason printed, or fails it when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Mosquitto, Pki, VictoriaMetrics, make_test_pki, or_missing


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return or_missing(lambda: make_test_pki(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def mosquitto(tmp_path: Path, test_pki: Pki) -> Iterator[Mosquitto]:
    """A fresh broker: ``.port`` anonymous, ``.auth_port`` password, ``.tls_port`` TLS + password."""
    broker = or_missing(lambda: Mosquitto(tmp_path / "mosquitto", certs=test_pki))
    with broker:
        yield broker


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A fresh VictoriaMetrics (InfluxDB v2 write API at ``.url``/api/v2/write)."""
    vm = or_missing(lambda: VictoriaMetrics(tmp_path / "victoria"))
    with vm:
        yield vm
