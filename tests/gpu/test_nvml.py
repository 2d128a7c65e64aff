"""NVML backend against the fake pynvml (real NVML error classes, fake driver)."""

from __future__ import annotations

import logging
import sys

import pytest

from powerctl.gpu.base import GpuError
from powerctl.gpu.nvml import NvmlGpus
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    f = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")])
    monkeypatch.setitem(sys.modules, "pynvml", f.module())
    return f


def test_lists_gpus_with_constraints_in_watts(fake: FakeNvml) -> None:
    gpus = NvmlGpus().list_gpus()
    assert [(g.index, g.uuid, g.min_w, g.max_w, g.default_w) for g in gpus] == [
        (0, "GPU-a", 200.0, 700.0, 700.0),
        (1, "GPU-b", 200.0, 700.0, 700.0),
    ]


def test_reads_instant_power_field_when_available(fake: FakeNvml) -> None:
    assert NvmlGpus().read_power_w(0) == 352.0


def test_falls_back_to_power_usage_when_field_fails(fake: FakeNvml) -> None:
    fake.gpus[0].instant_supported = False
    b = NvmlGpus()
    assert b.read_power_w(0) == 350.0
    fake.gpus[0].power_mw = 300_000
    assert b.read_power_w(0) == 300.0


def test_set_then_read_back(fake: FakeNvml) -> None:
    r = NvmlGpus().set_cap_w(1, 450.0)
    assert r.ok and not r.outside_limit
    assert (r.readback_w, r.enforced_w) == (450.0, 450.0)
    assert fake.gpus[1].set_calls == [450_000]


def test_set_is_skipped_when_already_in_force(fake: FakeNvml) -> None:
    b = NvmlGpus()
    b.set_cap_w(0, 450.0)
    b.set_cap_w(0, 450.0)
    assert fake.gpus[0].set_calls == [450_000]


def test_readback_mismatch_detected(fake: FakeNvml) -> None:
    fake.gpus[0].set_swallowed = True  # "success" that changed nothing
    r = NvmlGpus().set_cap_w(0, 300.0)
    assert not r.ok
    assert r.readback_w == 700.0
    assert "read-back mismatch" in r.message and "300 W" in r.message


def test_enforced_below_requested_reports_outside_limiter(fake: FakeNvml) -> None:
    fake.gpus[0].outside_mw = 500_000  # BMC holds 500 W
    r = NvmlGpus().set_cap_w(0, 650.0)
    assert r.ok and r.outside_limit
    assert (r.readback_w, r.enforced_w) == (650.0, 500.0)
    assert "another limiter" in r.message


def test_permission_error_is_one_clear_message(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    fake.gpus[0].can_set = False
    b = NvmlGpus()
    with caplog.at_level(logging.DEBUG, logger="powerctl.gpu.nvml"):
        results = [b.set_cap_w(0, 300.0) for _ in range(5)]
    assert all(not r.ok for r in results)
    msg = results[0].message
    assert msg.startswith("GPU 0: setting the power limit to 300 W: permission denied")
    assert "CAP_SYS_ADMIN" in msg and "\n" not in msg and "Traceback" not in msg
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w.getMessage() for w in warnings] == [msg]  # once, not every guard period
    assert all(w.exc_info is None for w in caplog.records)


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        ("set_not_supported", "not supported by this GPU or driver"),
        ("lost", "the GPU is lost"),
    ],
)
def test_other_errors_map_to_messages(fake: FakeNvml, switch: str, expected: str) -> None:
    b = NvmlGpus()
    setattr(fake.gpus[1], switch, True)
    r = b.set_cap_w(1, 300.0)
    assert not r.ok and expected in r.message and r.message.startswith("GPU 1:")


def test_out_of_range_request_held_to_limits(fake: FakeNvml) -> None:
    b = NvmlGpus(site_min_w=250.0, site_max_w=600.0)
    assert b.set_cap_w(0, 900.0).readback_w == 600.0
    assert b.set_cap_w(0, 100.0).readback_w == 250.0
    assert all(250_000 <= mw <= 600_000 for mw in fake.gpus[0].set_calls)


def test_invalid_argument_from_driver_is_explained(fake: FakeNvml) -> None:
    b = NvmlGpus()
    fake.gpus[0].max_mw = 400_000  # constraints changed under us (e.g. firmware)
    r = b.set_cap_w(0, 650.0)
    assert not r.ok and "out of range" in r.message


def test_read_errors_raise_gpu_error_not_nvml_error(fake: FakeNvml) -> None:
    b = NvmlGpus()
    fake.gpus[0].lost = True
    fake.gpus[0].instant_supported = False
    with pytest.raises(GpuError, match=r"^GPU 0: reading power: the GPU is lost"):
        b.read_power_w(0)


def test_energy_counter_reset_handled(fake: FakeNvml) -> None:
    b = NvmlGpus()
    assert b.read_energy_j(0) == 1000.0
    fake.gpus[0].energy_mj = 1_500_000
    assert b.read_energy_j(0) == 1500.0
    fake.gpus[0].energy_mj = 200_000  # driver reloaded: counter restarted from zero
    assert b.read_energy_j(0) == 1700.0
    fake.gpus[0].energy_mj = 300_000
    assert b.read_energy_j(0) == 1800.0


def test_limit_query_not_supported_uses_enforced(fake: FakeNvml) -> None:
    fake.gpus[0].limit_get_supported = False
    b = NvmlGpus()
    assert b.read_limits_w(0) == (700.0, 700.0)
    r = b.set_cap_w(0, 400.0)
    assert r.ok and r.readback_w is None and r.enforced_w == 400.0


def test_uses_real_nvml_error_classes(fake: FakeNvml) -> None:
    import pynvml as fake_mod

    real = sys.modules["pynvml"]
    assert fake_mod is real
    fake.gpus[0].can_set = False
    b = NvmlGpus()
    with pytest.raises(real.NVMLError_NoPermission):
        fake.nvmlDeviceSetPowerManagementLimit(0, 300_000)
    assert not b.set_cap_w(0, 300.0).ok


def test_init_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml as real

    f = FakeNvml([FakeGpu()])

    def no_driver() -> None:
        raise real.NVMLError(real.NVML_ERROR_DRIVER_NOT_LOADED)

    mod = f.module()
    mod.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with pytest.raises(GpuError, match=r"^NVML: initialising NVML: the NVIDIA driver is not loaded$"):
        NvmlGpus()


def test_unofficial_pynvml_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = FakeNvml([FakeGpu()]).module()
    del mod._nvmlGetFunctionPointer
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with pytest.raises(GpuError, match="not NVIDIA's nvidia-ml-py"):
        NvmlGpus()
