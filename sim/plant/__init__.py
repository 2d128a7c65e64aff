"""Physical plant models for simulation: PV, battery, genset, GPU cluster and the whole site.

Pure Python + numpy, no I/O, no pymodbus: time is always an argument. ``sim.plant.site.Plant`` is
the entry point; the device servers (``sim.devices``) and the replay (``sim.replay``) drive it.
"""

from powerctl.sim.plant.battery import Battery
from powerctl.sim.plant.genset import Genset, GensetStatus
from powerctl.sim.plant.gpu_cluster import GpuCluster
from powerctl.sim.plant.pv import PvArray, demo_pv_kw_fn
from powerctl.sim.plant.site import Plant

__all__ = ["Battery", "Genset", "GensetStatus", "GpuCluster", "Plant", "PvArray", "demo_pv_kw_fn"]
