"""Pure numerical dispatch core: numpy arrays and the current state in, a Plan out (no I/O).

Public API::

    problem = DispatchProblem(SiteParams(...))   # validates and compiles once (DPP)
    plan = problem.solve(DispatchInputs(...), deadline_s=0.5)

See optimizer.model for the formulation, optimizer.problem for the deadline and the fallback ladder,
optimizer.commitment for genset commitment, optimizer.curves for GPU value curves.
"""

from powerctl.optimizer.params import (
    BatteryParams,
    DispatchInputs,
    GensetParams,
    GpuClassParams,
    GridParams,
    InputError,
    Plan,
    PvParams,
    SiteParams,
    SlackUse,
)
from powerctl.optimizer.problem import DispatchProblem

__all__ = [
    "BatteryParams",
    "DispatchInputs",
    "DispatchProblem",
    "GensetParams",
    "GpuClassParams",
    "GridParams",
    "InputError",
    "Plan",
    "PvParams",
    "SiteParams",
    "SlackUse",
]
