"""GPU backends: NVML (nvidia-ml-py), simulated, none. See ``base.py`` for the protocol."""

from powerctl.gpu.base import CapResult, GpuBackend, GpuError, GpuInfo
from powerctl.gpu.factory import make_backend

__all__ = ["CapResult", "GpuBackend", "GpuError", "GpuInfo", "make_backend"]
