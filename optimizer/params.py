"""Site parameters, per-solve inputs and the plan: the optimizer's whole public data model.

Units are in the names (kW, kWh, s, pct). Signs: battery + = discharge, PV and genset + = generation,
loads + = consumption. Arrays over the horizon are step-major: shape (n_device, T).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class InputError(ValueError):
    """A site parameter or solve input that cannot be trusted; the message names it."""


@dataclass(frozen=True)
class PvParams:
    """One PV inverter (or an aggregate of several): only its size matters to the dispatch."""

    name: str
    kwp: float


@dataclass(frozen=True)
class BatteryParams:
    """One battery/PCS. Efficiencies are one-way (charge and discharge separately).

    `terminal_value_per_kwh` prices the energy left at the horizon's end so the plan does not empty
    the battery just because the horizon stops. `wear_cost_per_kwh` is charged on throughput
    (charge + discharge, AC side).
    """

    name: str
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    wear_cost_per_kwh: float = 0.02
    terminal_value_per_kwh: float = 0.08
    # How fast the battery's power may change between steps (either way); inf = no limit.
    ramp_kw_per_s: float = float("inf")


@dataclass(frozen=True)
class GensetParams:
    """One genset. Fuel is affine in output while running: f0 [l/h] + f1 [l/kWh] * p_kw.

    After a start the set runs `warmup_s` burning idle fuel before it may take load.
    """

    name: str
    rating_kw: float
    min_load_kw: float
    f0_l_per_h: float
    f1_l_per_kwh: float
    fuel_price_per_l: float = 1.2
    start_cost: float = 5.0
    min_up_s: float = 900.0
    min_down_s: float = 600.0
    warmup_s: float = 60.0
    # How fast its output may change between steps while it runs (a start or stop is free); inf = none.
    ramp_kw_per_s: float = float("inf")


@dataclass(frozen=True)
class GpuClassParams:
    """One GPU workload class (e.g. inference, training, batch) as an aggregate IT power budget.

    Value of compute is a concave piecewise-linear function given by breakpoints:
    `value_breakpoints_kw` (increasing, first = p_min_kw, last = p_max_kw) and `value_per_h` (value
    rate in currency per hour at each breakpoint; slopes must be non-increasing). `curves.fit_concave_pwl`
    builds these from measured cap-vs-throughput curves. If both are empty the class has zero value.

    `ramp_penalty_per_kw` is the cost of moving the budget by 1 kW between steps (L1, so small
    changes are not smeared out). `ramp_up_kw_per_s` is a hard limit on budget increases (load steps
    are what trip a genset); decreases are never limited, so lowering compute is always feasible.
    """

    name: str
    p_min_kw: float
    p_max_kw: float
    value_breakpoints_kw: FloatArray = field(default_factory=lambda: np.zeros(0))
    value_per_h: FloatArray = field(default_factory=lambda: np.zeros(0))
    ramp_penalty_per_kw: float = 0.001
    ramp_up_kw_per_s: float = float("inf")


@dataclass(frozen=True)
class GridParams:
    """The utility connection at the site's meter. Power + = import, - = export.

    `import_max_kw` / `export_max_kw` are the connection's nameplate limits (export 0 = zero
    export); a solve may lower them per step (`DispatchInputs.grid_import_max_kw`, ...: a lost grid,
    a stale meter, an outage), islanded operation being both at zero. `demand_charge_per_kw` is the
    price of the billing period's peak import (currency per kW of peak per period, 0 = none).
    """

    name: str
    import_max_kw: float
    export_max_kw: float = 0.0
    demand_charge_per_kw: float = 0.0


@dataclass(frozen=True)
class SiteParams:
    """Everything about the site that is fixed for the life of a compiled DispatchProblem."""

    steps_s: FloatArray
    pv: list[PvParams] = field(default_factory=list)
    batteries: list[BatteryParams] = field(default_factory=list)
    gensets: list[GensetParams] = field(default_factory=list)
    gpu_classes: list[GpuClassParams] = field(default_factory=list)
    grid: GridParams | None = None
    facility_overhead: float = 0.08
    reserve_load_pct: float = 10.0
    reserve_pv_pct: float = 25.0
    # How long a battery must be able to sustain the reserve it is counted for.
    reserve_duration_s: float = 900.0
    unserved_penalty_per_kwh: float = 50.0
    spill_penalty_per_kwh: float = 0.0
    reserve_penalty_per_kwh: float = 5.0
    # Small quadratic smoothing on GPU budget changes; 0 makes the problem a pure LP.
    ramp_quad_per_kw2: float = 0.0
    # CLARABEL, OSQP, HIGHS (linear model only) or AUTO: HiGHS for the linear model, Clarabel when
    # ramp_quad_per_kw2 > 0 (see optimizer.validate.primary_solver).
    solver: str = "AUTO"
    # Candidate start/stop steps tried per genset by the commitment enumeration (besides "stay").
    commitment_candidates: int = 6
    # Genset commitment: "milp" (exact, optimizer.milp; HiGHS and a linear model only) with the
    # enumeration as the next rung when it fails or misses its time limit, or "enumeration" alone.
    commitment: str = "enumeration"
    milp_gap: float = 1e-4  # relative MIP gap HiGHS may stop at
    milp_time_limit_s: float = 0.25  # at most this, and never more than 60 % of the time left
    # The MILP decides per block of at least this many seconds after the first hour (5 min blocks
    # there), priced on the plan's own steps (optimizer.milp.CoarseMilp); 0 = per step (exact).
    milp_block_s: float = 3600.0
    # Safe plan: GPU budget per class when every solver and the rules failed (fraction of p_max).
    safe_gpu_fraction: float = 0.0

    @property
    def horizon_steps(self) -> int:
        return int(np.asarray(self.steps_s).shape[0])


@dataclass
class DispatchInputs:
    """Per-solve inputs: forecasts over the horizon plus the current state."""

    pv_forecast_kw: FloatArray  # (n_pv, T) >= 0
    gpu_demand_kw: FloatArray  # (n_class, T) the most each class would draw
    other_load_kw: FloatArray  # (T,) non-GPU site load
    soc_pct: FloatArray  # (n_bat,)
    genset_on: BoolArray  # (n_gen,)
    genset_state_s: FloatArray  # (n_gen,) seconds in the current on/off state
    prev_gpu_kw: FloatArray  # (n_class,) last applied budget
    # Extra operating reserve per step (kW), e.g. because a forecast is stale. None = zeros.
    reserve_extra_kw: FloatArray | None = None
    # Grid (only with SiteParams.grid). Prices per kWh per step (None = 0); export may be <= 0.
    import_price_per_kwh: FloatArray | None = None
    export_price_per_kwh: FloatArray | None = None
    # Per-step limits (None = the nameplate); 0 = grid gone / islanded for that step.
    grid_import_max_kw: FloatArray | None = None
    grid_export_max_kw: FloatArray | None = None
    # Demand charge: the billing period's peak import so far (the floor of this plan's peak), and
    # which steps lie in the current billing period (None = all; the rest begin the next period).
    peak_import_kw: float = 0.0
    in_billing_period: BoolArray | None = None
    # Demand charge per kW for the current / the next billing period's peak as this plan prices it
    # (None = GridParams.demand_charge_per_kw). A peak once set is free for the rest of its period,
    # so a horizon shorter than the period prices it pro rata (powerctl.tariffs.demand_weights).
    demand_charge_per_kw: float | None = None
    demand_charge_next_per_kw: float | None = None
    # Grid CO2 intensity per step (kg/kWh), reported in the plan, not priced. None = not given.
    co2_kg_per_kwh: FloatArray | None = None
    # Where the first step's import price came from (e.g. "tou:winter/peak", "csv:<path>"), for the plan.
    price_source: str = ""


@dataclass
class SlackUse:
    """One named soft constraint that the plan had to violate."""

    constraint: str
    steps: list[int]
    max_kw: float
    energy_kwh: float

    def __str__(self) -> str:
        span = f"steps {self.steps[0]}-{self.steps[-1]}" if len(self.steps) > 1 else f"step {self.steps[0]}"
        return f"{self.constraint}: {span} ({len(self.steps)} steps), max {self.max_kw:.2f} kW, {self.energy_kwh:.3f} kWh"


@dataclass
class Plan:
    """The dispatch over the horizon. `rung` says which part of the ladder produced it."""

    pv_kw: FloatArray
    battery_kw: FloatArray
    soc_pct: FloatArray
    genset_kw: FloatArray
    genset_on: BoolArray
    gpu_kw: FloatArray
    unserved_kw: FloatArray
    spill_kw: FloatArray
    reserve_short_kw: FloatArray
    objective_terms: dict[str, float]
    slack: list[SlackUse]
    status: str
    solver: str
    rung: str
    solve_time_s: float
    steps_s: FloatArray
    objective: float = float("nan")
    # Why lower rungs were used (one line per failed rung), empty for a primary plan.
    notes: list[str] = field(default_factory=list)
    # Grid import and export per step (kW, both >= 0, never both > 0); zeros without a grid.
    grid_import_kw: FloatArray = field(default_factory=lambda: np.zeros(0))
    grid_export_kw: FloatArray = field(default_factory=lambda: np.zeros(0))
    # The prices the plan was made with (as given, per step; empty without a grid) and their source.
    import_price_per_kwh: FloatArray = field(default_factory=lambda: np.zeros(0))
    export_price_per_kwh: FloatArray = field(default_factory=lambda: np.zeros(0))
    price_source: str = ""
    # How the genset commitment was decided: "milp", "enumeration", "rule", "none" (no gensets or
    # the safe plan), and the MILP's relative gap (nan unless "milp").
    commitment: str = ""
    mip_gap: float = float("nan")

    def explain(self) -> str:
        """Human-readable one-paragraph summary of the plan's status and slack use."""
        head = f"{self.rung} plan by {self.solver} ({self.status}) in {self.solve_time_s * 1e3:.1f} ms"
        if self.commitment:
            head += f", commitment by {self.commitment}"
            if self.commitment == "milp":
                head += f" (gap {self.mip_gap:.3%})"
        lines = [head, *self.notes, *(str(s) for s in self.slack)]
        return "\n".join(lines)
