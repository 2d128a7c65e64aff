"""The plant as the control loop sees it: the one mapping from plant to signals and back.

- ``measurements(plant, nature, name)``: every measured signal of the device's nature
  (``powerctl.natures.SIGNALS``) that the plant models, in the nature's unit and sign;
- ``apply_write(plant, nature, name, signal, value)``: a writable signal (``p_set_kw``,
  ``start_cmd``, ``p_limit_pct``) into the plant;
- ``PlantPort``: the ``ControlLoop``'s two ports over the in-process plant (the fast replay);
- ``PlantGpus``: a GPU backend over the plant's GPU cluster, for a daemon in the same process as
  the plant (``powerctl demo``, the fault rigs).

``SimSite`` (``powerctl.sim.serve``) puts the same measurements into Modbus registers and hands
register writes back through ``apply_write``: the replay and the hardware-in-the-loop site cannot
map the plant differently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from powerctl.config import SiteConfig
from powerctl.control.core import Commands
from powerctl.control.shed import ShedAction
from powerctl.gpu.base import CapResult, GpuInfo
from powerctl.natures import SIGNALS, Nature
from powerctl.process_image import ProcessImage
from powerctl.sim.plant.site import Plant

log = logging.getLogger(__name__)

_Reader = Callable[[Plant, str], float]

# what the plant models, per nature; only signals the nature defines are read (checked below)
_READERS: dict[Nature, dict[str, _Reader]] = {
    Nature.PV: {
        "p_kw": lambda p, n: p.pv_kw(n),
        "e_kwh": lambda p, n: p.pv_e_kwh(n),
        "state": lambda p, n: float(p.pv_state(n)),
    },
    Nature.BATTERY: {
        "p_kw": lambda p, n: p.battery_kw(n),
        "soc_pct": lambda p, n: p.battery_soc_pct(n),
        "max_charge_kw": lambda p, n: p.battery_max_charge_kw(n),
        "max_discharge_kw": lambda p, n: p.battery_max_discharge_kw(n),
    },
    Nature.GENSET: {
        "p_kw": lambda p, n: p.genset_kw(n),
        "running": lambda p, n: 1.0 if p.genset_running(n) else 0.0,
        "state": lambda p, n: float(p.genset_status(n)),
        "fuel_pct": lambda p, n: p.genset_fuel_pct(n),
        "run_time_s": lambda p, n: float(int(p.genset_run_time_s(n))),  # a whole-second counter
    },
    Nature.METER: {
        "p_kw": lambda p, n: p.meter_kw(n),
        "v_v": lambda p, n: p.meter_v(n),
    },
}


def measured_signals(nature: Nature) -> list[str]:
    """The measured (not writable) signals of a nature that the plant models."""
    specs = SIGNALS.get(nature, {})
    return [s for s in _READERS.get(nature, {}) if s in specs and not specs[s].writable]


def measurements(plant: Plant, nature: Nature, name: str) -> dict[str, float]:
    readers = _READERS.get(nature, {})
    return {s: float(readers[s](plant, name)) for s in measured_signals(nature)}


def apply_write(plant: Plant, nature: Nature, name: str, signal: str, value: float) -> bool:
    """A setpoint into the plant; False for a signal the plant does not act on."""
    if nature is Nature.BATTERY and signal == "p_set_kw":
        plant.set_battery_kw(name, value)
    elif nature is Nature.GENSET and signal == "start_cmd":
        plant.set_genset_run(name, value >= 0.5)
    elif nature is Nature.GENSET and signal == "p_set_kw":
        plant.set_genset_kw(name, value)
    elif nature is Nature.PV and signal == "p_limit_pct":
        plant.set_pv_limit_pct(name, value)
    else:
        return False
    log.debug("%s <- %s = %g", name, signal, value)
    return True


class PlantPort:
    """Readings in and commands out for the ``ControlLoop``, straight from and to the plant.

    ``refresh(now_s)`` samples every measured signal into the image, stamped ``now_s`` (GOOD);
    a device listed in ``missing`` is not sampled (its signals age to stale, as a dead device's do).
    """

    def __init__(self, cfg: SiteConfig, plant: Plant, max_age_s: float) -> None:
        self.cfg = cfg
        self.plant = plant
        self._image = ProcessImage()
        for d in cfg.devices:
            for sig in measured_signals(d.nature):
                self._image.declare(d.name, d.nature, sig, max_age_s)
        self.missing: set[str] = set()
        self.caps_clamped = 0  # caps outside the GPUs' range that reached the plant (must stay 0)

    @property
    def image(self) -> ProcessImage:
        return self._image

    def refresh(self, now_s: float) -> None:
        for d in self.cfg.devices:
            if d.name in self.missing:
                continue
            for sig, v in measurements(self.plant, d.nature, d.name).items():
                self._image.update(d.name, sig, v, now_s)

    def gpu_power_w(self) -> dict[int, float]:
        return dict(enumerate(self.plant.gpu.power_w.tolist()))  # tolist: Python floats, in one C call

    def setpoints(self, cmd: Commands) -> None:
        for name, p_kw in cmd.battery_kw.items():
            apply_write(self.plant, Nature.BATTERY, name, "p_set_kw", p_kw)
        for name, run in cmd.genset_run.items():
            apply_write(self.plant, Nature.GENSET, name, "start_cmd", 1.0 if run else 0.0)
        for name, p_kw in cmd.genset_kw.items():
            apply_write(self.plant, Nature.GENSET, name, "p_set_kw", p_kw)
        for name, pct in cmd.pv_limit_pct.items():
            apply_write(self.plant, Nature.PV, name, "p_limit_pct", pct)

    def gpu_caps(self, caps_w: Mapping[int, float]) -> None:
        g = self.plant.gpu
        caps = np.array([caps_w.get(i, c) for i, c in enumerate(g.caps_w.tolist())], dtype=float)
        self.caps_clamped += int(np.sum((caps < g.min_w - 1e-6) | (caps > g.max_w + 1e-6)))
        self.plant.set_gpu_caps_w(caps)

    def release(self, released: tuple[int, ...], actions: Sequence[ShedAction]) -> None:
        self.plant.gpu.set_released(list(released))


class PlantGpus:
    """GPU backend over the plant's GPU cluster: a daemon in the plant's process caps the very
    GPUs the plant loads the site with (one source of truth for GPU power in one process)."""

    name = "simulated-plant"

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        pool = plant.cfg.gpu
        self._infos = [
            GpuInfo(i, f"sim-gpu-{i}", f"SIM-{i:04d}", pool.min_w, pool.max_w, pool.max_w)
            for i in range(plant.gpu.n)
        ]

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        return float(self.plant.gpu.power_w[index])

    def read_energy_j(self, index: int) -> float:
        return float(self.plant.gpu.e_kwh * 3.6e6 / max(self.plant.gpu.n, 1))

    def read_limits_w(self, index: int) -> tuple[float, float]:
        cap = float(self.plant.gpu.caps_w[index])
        return cap, cap

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        caps = np.array(self.plant.gpu.caps_w, dtype=float)
        caps[index] = cap_w
        enforced = self.plant.set_gpu_caps_w(caps)[index]
        return CapResult(index, cap_w, float(enforced), float(enforced), abs(enforced - cap_w) < 1.0)
