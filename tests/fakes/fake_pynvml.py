"""A fake ``pynvml`` module: the one stand-in the project allows (no GPU on test machines).

Constants, error classes and the field-value struct come from the REAL nvidia-ml-py ``pynvml``
module, so code under test catches exactly what it would catch on a GPU host. Only the driver
behind the functions is fake: a few ``FakeGpu`` records with limits, power, an energy counter and
switches for the failure modes NVML users report (a set that reports success but does not take;
a limit that only the enforced-limit query reports).

Use: ``monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu()]).module())``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import pynvml as real


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-fake"
    min_mw: int = 200_000
    max_mw: int = 700_000
    default_mw: int = 700_000
    limit_mw: int = 700_000
    outside_mw: int | None = None  # another limiter (BMC/DCGM) holding the GPU lower
    power_mw: int = 350_000
    instant_power_mw: int = 352_000
    energy_mj: int = 1_000_000
    instant_supported: bool = True
    limit_get_supported: bool = True
    can_set: bool = True  # False: NoPermission on set (not root, no CAP_SYS_ADMIN)
    set_swallowed: bool = False  # set returns success but nothing changes (v2 setter bug)
    set_not_supported: bool = False
    lost: bool = False
    set_calls: list[int] = field(default_factory=list)


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.initialised = False

    def _gpu(self, handle: Any) -> FakeGpu:
        if not self.initialised:
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        gpu = self.gpus[handle]
        if gpu.lost:
            raise real.NVMLError(real.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # --- the NVML functions powerctl uses ----------------------------------------------------

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        g = self._gpu(h)
        return [g.min_mw, g.max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self._gpu(h).default_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        g = self._gpu(h)
        if not g.limit_get_supported:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return g.limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        g = self._gpu(h)
        return g.limit_mw if g.outside_mw is None else min(g.limit_mw, g.outside_mw)

    def nvmlDeviceSetPowerManagementLimit(self, h: int, limit_mw: int) -> None:
        g = self._gpu(h)
        g.set_calls.append(limit_mw)
        if g.set_not_supported:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        if not g.can_set:
            raise real.NVMLError(real.NVML_ERROR_NO_PERMISSION)
        if not g.min_mw <= limit_mw <= g.max_mw:
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        if not g.set_swallowed:
            g.limit_mw = int(limit_mw)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._gpu(h).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self._gpu(h).energy_mj

    def nvmlDeviceGetFieldValues(self, h: int, field_ids: list[Any]) -> Any:
        g = self._gpu(h)
        values = (real.c_nvmlFieldValue_t * len(field_ids))()
        for i, fid in enumerate(field_ids):
            fid, scope = fid if isinstance(fid, tuple) else (fid, 0)
            values[i].fieldId, values[i].scopeId = fid, scope
            if fid == real.NVML_FI_DEV_POWER_INSTANT and g.instant_supported:
                values[i].nvmlReturn = real.NVML_SUCCESS
                values[i].value.uiVal = g.instant_power_mw
            else:
                # Per-field failure: the call itself succeeds (NVML API reference, nvmlDeviceGetFieldValues).
                values[i].nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return values

    # --- the module ---------------------------------------------------------------------------

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("pynvml", "fake pynvml for tests (real error classes and constants)")
        for name in dir(real):
            if name.startswith(("NVML_", "NVMLError")) or name in ("c_nvmlFieldValue_t",):
                setattr(mod, name, getattr(real, name))
        mod._nvmlGetFunctionPointer = lambda name: None  # marks it as the official bindings
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(mod, name, getattr(self, name))
        return mod
