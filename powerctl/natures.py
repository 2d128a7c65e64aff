"""Natures: the few typed device kinds control code is written against.

Control code never sees vendor registers. A profile maps registers onto these signal names; the
units and signs here are the contract (README.md, "Natures, signals and signs"):

- battery ``p_kw`` positive = discharge (supply to the site), negative = charge;
- PV and genset ``p_kw`` positive = generation;
- loads (GPU pool, site) positive = consumption; meter ``p_kw`` positive = import into the site.

``worst`` says what a stale or invalid reading is replaced with when a consumer asks for the
worst case ("stale means worst case"): a supply reads as zero, a state of charge as the minimum of
its window, a load as its maximum. ``None`` means there is no safe substitute and consumers must
treat the value as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Nature(StrEnum):
    PV = "pv"
    BATTERY = "battery"
    GENSET = "genset"
    METER = "meter"
    GPU_POOL = "gpu_pool"


class Worst(StrEnum):
    """How a stale signal is substituted."""

    ZERO = "zero"  # supplies: assume nothing comes
    LOW = "low"  # levels (SoC): assume the bottom of the window
    HIGH = "high"  # loads: assume the top
    NONE = "none"  # no safe substitute: unknown


@dataclass(frozen=True, slots=True)
class SignalSpec:
    name: str
    unit: str
    description: str
    worst: Worst = Worst.NONE
    writable: bool = False


def _specs(*specs: SignalSpec) -> dict[str, SignalSpec]:
    return {s.name: s for s in specs}


SIGNALS: dict[Nature, dict[str, SignalSpec]] = {
    Nature.PV: _specs(
        SignalSpec("p_kw", "kW", "AC output, + = generation", Worst.ZERO),
        SignalSpec("e_kwh", "kWh", "lifetime AC energy"),
        SignalSpec("state", "", "operating state code (SunSpec St)"),
        SignalSpec("p_limit_pct", "%", "active power limit setpoint", writable=True),
    ),
    Nature.BATTERY: _specs(
        SignalSpec("p_kw", "kW", "AC/DC power at the inverter, + = discharge", Worst.NONE),
        SignalSpec("soc_pct", "%", "state of charge", Worst.LOW),
        SignalSpec("max_charge_kw", "kW", "charge power the device allows now", Worst.ZERO),
        SignalSpec("max_discharge_kw", "kW", "discharge power the device allows now", Worst.ZERO),
        SignalSpec("state", "", "operating state code"),
        SignalSpec("p_set_kw", "kW", "power setpoint, + = discharge", writable=True),
    ),
    Nature.GENSET: _specs(
        SignalSpec("p_kw", "kW", "electrical output, + = generation", Worst.ZERO),
        SignalSpec("running", "", "1 when the engine runs and can take load", Worst.ZERO),
        SignalSpec("state", "", "engine state code"),
        SignalSpec("fuel_pct", "%", "fuel tank level", Worst.LOW),
        SignalSpec("run_time_s", "s", "engine run time counter"),
        SignalSpec("start_cmd", "", "1 = start, 0 = stop", writable=True),
        # base load: the genset holds this output while another source takes the balance
        # (powerctl/control/genset_output.py)
        SignalSpec("p_set_kw", "kW", "output (base-load) setpoint, + = generation", writable=True),
    ),
    Nature.METER: _specs(
        SignalSpec("p_kw", "kW", "active power, + = import into the site", Worst.HIGH),
        SignalSpec("e_import_kwh", "kWh", "imported energy counter"),
        # where the profile has them, the guard counts grid import only while they show the grid
        SignalSpec("v_v", "V", "grid voltage at the point of connection (L1-N)"),
        SignalSpec("f_hz", "Hz", "grid frequency at the point of connection"),
    ),
    Nature.GPU_POOL: _specs(
        SignalSpec("p_kw", "kW", "GPU power draw, + = consumption", Worst.HIGH),
        SignalSpec("cap_kw", "kW", "sum of enforced caps"),
    ),
}


def signal_spec(nature: Nature, name: str) -> SignalSpec:
    """The spec of ``name`` in ``nature``; KeyError with the allowed names if unknown."""
    try:
        return SIGNALS[nature][name]
    except KeyError:
        allowed = ", ".join(sorted(SIGNALS[nature]))
        raise KeyError(f"nature {nature.value!r} has no signal {name!r} (allowed: {allowed})") from None
