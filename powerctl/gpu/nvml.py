"""NVML backend through nvidia-ml-py (``import pynvml``, imported lazily: no GPU, no import).

- Power: the instant field (``NVML_FI_DEV_POWER_INSTANT``) where the GPU has it; otherwise
  ``nvmlDeviceGetPowerUsage`` (a 1 s average on Ampere and newer). Field reads carry their own
  return code per element, so it is checked rather than trusted (NVML API reference, nvmlDeviceGetFieldValues).
- Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded). The counter resets
  on driver reload; we accumulate the increments so the energy we report never goes backwards.
- Caps: held to the device constraints and the site range, set with
  ``nvmlDeviceSetPowerManagementLimit`` (skipped when already in force: the call takes the driver's
  global lock), then read back (limit and *enforced* limit), because a set can report success
  without taking effect. Enforced < requested means another limiter (BMC, DCGM) is active.
- Errors become one operator-readable line (``GpuError`` or ``CapResult.message``), no traceback.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any

from powerctl.gpu.base import READBACK_TOL_W, CapResult, GpuError, GpuInfo, clamp_w

log = logging.getLogger("powerctl.gpu.nvml")

_PERMISSION_HINT = (
    "run powerctl as root or grant it CAP_SYS_ADMIN (systemd: AmbientCapabilities=CAP_SYS_ADMIN; "
    "containers: --cap-add=SYS_ADMIN)"
)


def import_pynvml() -> types.ModuleType:
    """The official bindings, or a GpuError saying what to install."""
    try:
        import pynvml
    except ImportError:
        raise GpuError("gpu.backend = 'nvml' needs nvidia-ml-py: pip install nvidia-ml-py") from None
    if not hasattr(pynvml, "_nvmlGetFunctionPointer"):
        # The PyPI package named "pynvml" (>= 12) is not the official bindings (NVIDIA ships nvidia-ml-py).
        raise GpuError("the installed 'pynvml' module is not NVIDIA's nvidia-ml-py: pip install nvidia-ml-py")
    return pynvml


def describe_nvml_error(nv: Any, exc: BaseException, what: str, *, index: int | None = None) -> str:
    """One line for an NVML error: which GPU, what we tried, what it means, what to do."""
    where = f"GPU {index}: " if index is not None else "NVML: "
    checks: list[tuple[str, str]] = [
        ("NVMLError_NoPermission", f"{what}: permission denied; {_PERMISSION_HINT}"),
        ("NVMLError_NotSupported", f"{what}: not supported by this GPU or driver"),
        ("NVMLError_GpuIsLost", f"{what}: the GPU is lost (fell off the bus); it needs a reset or reboot"),
        ("NVMLError_InvalidArgument", f"{what}: value rejected by the driver as out of range"),
        ("NVMLError_Uninitialized", f"{what}: NVML is not initialised"),
        ("NVMLError_DriverNotLoaded", f"{what}: the NVIDIA driver is not loaded"),
        ("NVMLError_LibraryNotFound", f"{what}: libnvidia-ml.so not found (is the driver installed?)"),
        ("NVMLError_NoData", f"{what}: no data yet"),
    ]
    for cls_name, text in checks:
        cls = getattr(nv, cls_name, None)
        if cls is not None and isinstance(exc, cls):
            return where + text
    return f"{where}{what}: NVML error {getattr(exc, 'value', '?')} ({exc})"


@dataclass
class _Energy:
    """Monotonic energy from a counter that restarts at zero on driver reload."""

    last_raw_mj: int | None = None
    total_mj: float = 0.0

    def update(self, raw_mj: int) -> float:
        if self.last_raw_mj is None:
            self.total_mj = float(raw_mj)
        elif raw_mj >= self.last_raw_mj:
            self.total_mj += raw_mj - self.last_raw_mj
        else:
            # Counter went backwards: the driver reloaded and counts again from zero.
            log.warning("energy counter reset detected (%d -> %d mJ): driver reload?", self.last_raw_mj, raw_mj)
            self.total_mj += raw_mj
        self.last_raw_mj = raw_mj
        return self.total_mj / 1000.0


class NvmlGpus:
    """All GPUs NVML sees on this host."""

    name = "nvml"

    def __init__(
        self,
        site_min_w: float | None = None,
        site_max_w: float | None = None,
        *,
        pynvml_module: types.ModuleType | None = None,
    ) -> None:
        nv = pynvml_module or import_pynvml()
        self._nv = nv
        self._site_min_w = site_min_w
        self._site_max_w = site_max_w
        try:
            nv.nvmlInit()
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as exc:
            raise GpuError(describe_nvml_error(nv, exc, "initialising NVML")) from None
        self._handles: list[Any] = []
        self._infos: list[GpuInfo] = []
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                lo_mw, hi_mw = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
                default_mw = nv.nvmlDeviceGetPowerManagementDefaultLimit(h)
                name, uuid = nv.nvmlDeviceGetName(h), nv.nvmlDeviceGetUUID(h)
            except nv.NVMLError as exc:
                raise GpuError(describe_nvml_error(nv, exc, "reading power-limit constraints", index=i)) from None
            self._handles.append(h)
            self._infos.append(GpuInfo(i, _text(name), _text(uuid), lo_mw / 1000, hi_mw / 1000, default_mw / 1000))
        self._instant_ok = [True] * count
        self._energy = [_Energy() for _ in range(count)]
        self._reported: set[str] = set()

    # --- helpers -----------------------------------------------------------------------------

    def _h(self, index: int) -> Any:
        if not 0 <= index < len(self._handles):
            raise GpuError(f"GPU {index} does not exist (NVML sees {len(self._handles)})")
        return self._handles[index]

    def _report_once(self, message: str) -> None:
        """Log a failure once, not every guard period; later repeats go to debug."""
        if message in self._reported:
            log.debug("%s", message)
        else:
            self._reported.add(message)
            log.warning("%s", message)

    def cap_range_w(self, index: int) -> tuple[float, float]:
        """The device constraints narrowed by the site range."""
        info = self._infos[index]
        lo = max(info.min_w, self._site_min_w) if self._site_min_w is not None else info.min_w
        hi = min(info.max_w, self._site_max_w) if self._site_max_w is not None else info.max_w
        return (lo, hi) if lo <= hi else (info.min_w, info.min_w)

    # --- protocol ----------------------------------------------------------------------------

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        nv, h = self._nv, self._h(index)
        if self._instant_ok[index]:
            try:
                fv = nv.nvmlDeviceGetFieldValues(h, [(nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_POWER_SCOPE_GPU)])[0]
                if fv.nvmlReturn == nv.NVML_SUCCESS:
                    return fv.value.uiVal / 1000.0
                log.info("GPU %d: instant power field unavailable (NVML return %d); using GetPowerUsage",
                         index, fv.nvmlReturn)
            except nv.NVMLError as exc:
                log.info("GPU %d: instant power field unavailable (%s); using GetPowerUsage", index, exc)
            self._instant_ok[index] = False
        try:
            return nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        except nv.NVMLError as exc:
            raise GpuError(describe_nvml_error(nv, exc, "reading power", index=index)) from None

    def read_energy_j(self, index: int) -> float:
        nv, h = self._nv, self._h(index)
        try:
            raw_mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
        except nv.NVMLError as exc:
            raise GpuError(describe_nvml_error(nv, exc, "reading the energy counter", index=index)) from None
        return self._energy[index].update(raw_mj)

    def _read_back_w(self, index: int) -> tuple[float | None, float]:
        """(requested limit or None where the driver does not report it, enforced limit)."""
        nv, h = self._nv, self._h(index)
        try:
            requested: float | None = nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0
        except nv.NVMLError_NotSupported:
            requested = None  # some drivers only report the enforced limit
        enforced = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
        return requested, enforced

    def read_limits_w(self, index: int) -> tuple[float, float]:
        try:
            requested, enforced = self._read_back_w(index)
        except self._nv.NVMLError as exc:
            raise GpuError(describe_nvml_error(self._nv, exc, "reading power limits", index=index)) from None
        return (requested if requested is not None else enforced), enforced

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        nv, h = self._nv, self._h(index)
        if cap_w != cap_w:
            return CapResult(index, cap_w, None, None, False, f"GPU {index}: refusing to set a NaN cap")
        lo, hi = self.cap_range_w(index)
        target_w = clamp_w(cap_w, lo, hi)
        target_mw = round(target_w * 1000)
        note = f"GPU {index}: {cap_w:g} W held to [{lo:g}, {hi:g}] W. " if target_w != cap_w else ""
        try:
            try:
                current_mw: int | None = nv.nvmlDeviceGetPowerManagementLimit(h)
            except nv.NVMLError_NotSupported:
                current_mw = None
            if current_mw != target_mw:
                nv.nvmlDeviceSetPowerManagementLimit(h, target_mw)
            readback, enforced = self._read_back_w(index)
        except nv.NVMLError as exc:
            msg = describe_nvml_error(nv, exc, f"setting the power limit to {target_w:g} W", index=index)
            self._report_once(msg)
            return CapResult(index, target_w, None, None, False, msg)
        held = readback if readback is not None else enforced
        if abs(held - target_w) > READBACK_TOL_W and not (readback is None and enforced < target_w):
            msg = (f"{note}GPU {index}: read-back mismatch: set {target_w:g} W but the driver holds "
                   f"{held:g} W (the set did not take)")
            self._report_once(msg)
            return CapResult(index, target_w, readback, enforced, False, msg)
        outside = enforced < target_w - READBACK_TOL_W
        if outside:
            msg = (f"{note}GPU {index}: enforced limit {enforced:g} W is below the requested {target_w:g} W: "
                   "another limiter (BMC, DCGM or firmware) is active")
            self._report_once(msg)
            return CapResult(index, target_w, readback, enforced, True, msg, True)
        return CapResult(index, target_w, readback, enforced, True, note.strip())

    def close(self) -> None:
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError:
            pass


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
