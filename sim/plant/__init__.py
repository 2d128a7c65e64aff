"""Physical plant models for simulation: PV, battery, genset, GPU cluster and the whole site.

Pure Python + numpy, no I/O, no pymodbus: time is always an argument. ``sim.plant.site.Plant`` is
the entry point; the device servers (``sim.devices``) and the replay (``sim.replay``) drive it.
"""

from sim.plant.battery import Battery
from sim.plant.genset import Genset, GensetStatus
from sim.plant.gpu_cluster import GpuCluster
from sim.plant.pv import PvArray, demo_pv_kw_fn
from sim.plant.site import Plant

__all__ = ["Battery", "Genset", "GensetStatus", "GpuCluster", "Plant", "PvArray", "demo_pv_kw_fn"]
