"""Site configuration: one TOML file per site, validated by pydantic.

``load_config(path)`` returns a ``SiteConfig`` or raises ``ConfigError`` whose message names the
file, the field path and what is wrong, e.g.::

    site.toml: devices[2].limits.max_discharge_kw: must be > 0 (got -5)
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from powerctl.natures import Nature
from powerctl.tariff_config import Tariff


class ConfigError(Exception):
    """A config problem, already phrased for the operator (no traceback needed)."""


class _Model(BaseModel):
    # Unknown keys are errors: a typo must not silently drop a setting (EMHASS #943).
    # NaN/inf are refused everywhere: `max_discharge_kw = inf` is TOML, but not a number to trust.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Every number has a physical upper bound (issue 12: `max_discharge_kw = 1e308`, `gpus = 1e8` and
# `max_age_s = 1e308` were accepted). The bounds are generous, but finite and physical; the generic
# aliases cap what is left (prices, penalties) at a billion.
MAX_KW = 100_000.0  # 100 MW: above any one site this controller runs (a module is ~2 MW)
MAX_KWH = 1_000_000.0  # 1 GWh of storage
MAX_GPU_W = 5_000.0  # one GPU's power limit (B200: 1.2 kW)
MAX_GPUS = 100_000  # GPUs in one pool (a 2 MW module has ~2,400)
MAX_S = 7 * 86_400.0  # a week: no timer, period or minimum time in a config is longer
PositiveFloat = Annotated[float, Field(gt=0, le=1e9)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e9)]
Kw = Annotated[float, Field(gt=0, le=MAX_KW)]
NonNegKw = Annotated[float, Field(ge=0, le=MAX_KW)]
KwPerS = Annotated[float, Field(gt=0, le=MAX_KW)]
Watts = Annotated[float, Field(gt=0, le=MAX_GPU_W)]
NonNegWatts = Annotated[float, Field(ge=0, le=MAX_GPU_W)]
Seconds = Annotated[float, Field(gt=0, le=MAX_S)]
NonNegSeconds = Annotated[float, Field(ge=0, le=MAX_S)]
Pct = Annotated[float, Field(ge=0, le=100)]
Port = Annotated[int, Field(ge=1, le=65535)]


# --- transports -------------------------------------------------------------------------------


class ModbusTcp(_Model):
    kind: Literal["modbus_tcp"]
    host: str
    port: Port = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    framer: Literal["socket", "rtu"] = "socket"  # "rtu" = RTU-over-TCP gateways
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class ModbusRtu(_Model):
    kind: Literal["modbus_rtu"]
    port: str  # serial device, e.g. /dev/ttyUSB0
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class MqttTopics(_Model):
    kind: Literal["mqtt"]
    # signal name -> topic; the profile says how to parse payloads.
    topics: dict[str, str] = Field(default_factory=dict)
    portal_id: str | None = None  # Victron Venus: the portal id used in N/ and R/ topics


Transport = Annotated[ModbusTcp | ModbusRtu | MqttTopics, Field(discriminator="kind")]


# --- per-nature limits ------------------------------------------------------------------------


class PvLimits(_Model):
    kwp: Kw
    max_ac_kw: Kw | None = None
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 20.0
    azimuth_deg: Annotated[float, Field(ge=0, lt=360)] = 180.0


class BatteryLimits(_Model):
    capacity_kwh: Annotated[float, Field(gt=0, le=MAX_KWH)]
    max_charge_kw: Kw
    max_discharge_kw: Kw
    soc_min_pct: Pct = 10.0
    soc_max_pct: Pct = 95.0
    eta_charge: Annotated[float, Field(gt=0, le=1)] = 0.95
    eta_discharge: Annotated[float, Field(gt=0, le=1)] = 0.95
    wear_cost_per_kwh: NonNegFloat = 0.02
    terminal_value_per_kwh: NonNegFloat = 0.08
    ramp_kw_per_s: KwPerS | None = None  # how fast it can pick up load

    @model_validator(mode="after")
    def _window(self) -> BatteryLimits:
        if self.soc_min_pct >= self.soc_max_pct:
            raise ValueError(
                f"soc_min_pct ({self.soc_min_pct:g}) must be below soc_max_pct ({self.soc_max_pct:g})"
            )
        return self


class FuelPoint(_Model):
    load_pct: Pct
    l_per_h: Annotated[float, Field(ge=0, le=100_000)]


class GensetLimits(_Model):
    rating_kw: Kw
    min_load_pct: Pct = 30.0
    # Affine fuel model F [L/h] = f0_l_per_h_per_kw_rated * rating + f1_l_per_kwh * P (HOMER form),
    # either given directly or fitted from ``fuel_curve`` points.
    f0_l_per_h_per_kw: NonNegFloat | None = None
    f1_l_per_kwh: NonNegFloat | None = None
    fuel_curve: list[FuelPoint] = Field(default_factory=list)
    fuel_price_per_l: NonNegFloat = 1.2
    co2_kg_per_l: NonNegFloat = 2.68
    start_cost: NonNegFloat = 5.0
    min_up_s: NonNegSeconds = 900.0
    min_down_s: NonNegSeconds = 600.0
    warmup_s: NonNegSeconds = 60.0
    ramp_kw_per_s: KwPerS | None = None

    @model_validator(mode="after")
    def _fuel(self) -> GensetLimits:
        have_coeffs = self.f0_l_per_h_per_kw is not None and self.f1_l_per_kwh is not None
        if not have_coeffs and len(self.fuel_curve) < 2:
            raise ValueError("give f0_l_per_h_per_kw and f1_l_per_kwh, or a fuel_curve of at least 2 points")
        if self.fuel_curve:
            loads = [p.load_pct for p in self.fuel_curve]
            if len(set(loads)) != len(loads):
                raise ValueError("fuel_curve has duplicate load_pct values")
        return self

    def fuel_coeffs(self) -> tuple[float, float]:
        """(f0 L/h per kW rated, f1 L/kWh): given, or least-squares fit on the curve points."""
        if self.f0_l_per_h_per_kw is not None and self.f1_l_per_kwh is not None:
            return self.f0_l_per_h_per_kw, self.f1_l_per_kwh
        import numpy as np

        p_kw = np.array([pt.load_pct / 100 * self.rating_kw for pt in self.fuel_curve])
        f = np.array([pt.l_per_h for pt in self.fuel_curve])
        slope, intercept = np.polyfit(p_kw, f, 1)
        return max(float(intercept), 0.0) / self.rating_kw, max(float(slope), 0.0)


class MeterLimits(_Model):
    max_import_kw: NonNegKw = 0.0  # 0 = island: no grid import allowed
    max_export_kw: NonNegKw = 0.0


# --- devices ----------------------------------------------------------------------------------


class _DeviceBase(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    profile: str
    transport: Transport
    poll_period_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    stale_after_failures: Annotated[int, Field(ge=1, le=100)] = 3
    max_age_s: Annotated[float, Field(gt=0, le=86_400)] | None = None  # default: 3 poll periods
    # point or setpoint name -> PDU address, for registers whose number depends on the device's own
    # configuration (a ComAp Cfg Image): a profile's site_address setpoint is written only once named here
    registers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")], Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=dict)

    @property
    def signal_max_age_s(self) -> float:
        return self.max_age_s if self.max_age_s is not None else 3 * self.poll_period_s


class PvDevice(_DeviceBase):
    nature: Literal[Nature.PV]
    limits: PvLimits


class BatteryDevice(_DeviceBase):
    nature: Literal[Nature.BATTERY]
    limits: BatteryLimits


class GensetDevice(_DeviceBase):
    nature: Literal[Nature.GENSET]
    limits: GensetLimits


class MeterDevice(_DeviceBase):
    nature: Literal[Nature.METER]
    limits: MeterLimits = MeterLimits()


Device = Annotated[PvDevice | BatteryDevice | GensetDevice | MeterDevice, Field(discriminator="nature")]


# --- GPU pool ---------------------------------------------------------------------------------


class WorkloadClass(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    gpus: Annotated[int, Field(ge=0, le=MAX_GPUS)]
    priority: Annotated[int, Field(ge=0, le=1000)] = 0  # 0 = most important; shed last
    value_per_kwh: NonNegFloat = 0.5  # value of compute at full throughput, per kWh of IT energy
    # a workload id in powerctl/data/gpu-cap-curves.csv for the pool's GPU model (`gpu.model`), or "linear"
    curve: str = "infer_llama_8b"
    floor_pct: Pct = 0.0  # share of the class that must keep running (kW floor = this x max)


class ShedHook(_Model):
    """A command (argv list, run without a shell) or an HTTP call that sheds/restores a class."""

    workload: str
    shed: list[str] | None = None
    restore: list[str] | None = None
    shed_url: str | None = None
    restore_url: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0


class AgentNode(_Model):
    """One GPU server reached through its ``powerctl agent`` (``gpu.backend = "agents"``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]  # = the agent certificate's name
    address: Annotated[str, Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}$")]  # host:port
    gpus: Annotated[int, Field(ge=1, le=64)]
    workload: str | None = None  # the class of every GPU of this node, or
    workloads: list[str] | None = None  # one class per GPU
    min_w: Watts | None = None  # this node's GPU model range (None: gpu.min_w / gpu.max_w);
    max_w: Watts | None = None  # the agent's own reported range narrows it once it answers

    @model_validator(mode="after")
    def _classes(self) -> AgentNode:
        if (self.workload is None) == (self.workloads is None):
            raise ValueError("give exactly one of workload (per node) or workloads (per GPU)")
        if self.workloads is not None and len(self.workloads) != self.gpus:
            raise ValueError(f"workloads lists {len(self.workloads)} classes for {self.gpus} GPUs")
        if not 0 < int(self.address.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"address {self.address!r}: port must be in 1..65535")
        if self.min_w is not None and self.max_w is not None and self.min_w >= self.max_w:
            raise ValueError(f"min_w ({self.min_w:g}) must be below max_w ({self.max_w:g})")
        return self

    def classes_per_gpu(self) -> list[str]:
        return list(self.workloads) if self.workloads is not None else [str(self.workload)] * self.gpus


class AgentsTls(_Model):
    """The controller's side of the agents' mutual TLS (files from ``powerctl certs init``)."""

    ca: str
    cert: str
    key: str


class GpuPool(_Model):
    backend: Literal["simulated", "nvml", "none", "socket", "agents"] = "simulated"
    # backend = "agents": the GPU servers' agents (powerctl.gpu.agents), leases and timeouts
    nodes: list[AgentNode] = Field(default_factory=list)
    agent_tls: AgentsTls | None = None
    lease_s: Annotated[float, Field(ge=0.2, le=600)] = 2.0  # caps fall back to the safe cap after this
    node_timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.1  # per node and request
    socket_path: str | None = None  # for backend = "socket" (privileged cap-setter)
    # The cap-setter (`powerctl capsetter site.toml`, the only privileged process) reads these from
    # ITS copy of the config: the socket's group and mode (never world-accessible), and the backend it
    # drives. `socket_path` None = powerctl.gpu.socket.DEFAULT_SOCKET_PATH.
    socket_group: str | None = None  # None: the cap-setter's own group (systemd Group=)
    socket_mode: Annotated[int, Field(ge=0, le=0o777)] = 0o660
    socket_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # client side: per request to the cap-setter
    capsetter_backend: Literal["nvml", "simulated"] = "nvml"
    # backend = "simulated": a JSON file holding the simulated caps, so separate processes (daemon,
    # watchdog, apply-safe-caps) act on the same simulated GPUs. None = in-memory only.
    sim_state_file: str | None = None
    # The GPU model whose measured cap-vs-throughput curves apply: the `gpu` column of
    # powerctl/data/gpu-cap-curves.csv (A100, A40, V100, ...). Only its rows are used.
    model: str = "A100"
    min_w: Watts = 100.0
    max_w: Watts = 400.0
    safe_cap_w: Watts = 150.0
    idle_w: NonNegWatts = 60.0
    facility_overhead: Annotated[float, Field(ge=0, le=1)] = 0.08  # cooling etc., share of IT power
    ramp_up_kw_per_s: KwPerS = 20.0
    ramp_penalty_per_kw: NonNegFloat = 0.001
    classes: list[WorkloadClass] = Field(min_length=1)
    shed_hooks: list[ShedHook] = Field(default_factory=list)
    shed_restore_margin_kw: NonNegKw = 5.0
    shed_restore_hold_s: NonNegSeconds = 60.0

    @property
    def count(self) -> int:
        return sum(c.gpus for c in self.classes)

    @field_validator("socket_mode")
    @classmethod
    def _socket_not_world(cls, mode: int) -> int:
        if mode & 0o007:
            # anyone on the host could then set GPU caps (within limits, but still)
            raise ValueError(f"must not give 'other' any access (got {mode:#o}; e.g. 0o660)")
        return mode

    @model_validator(mode="after")
    def _caps(self) -> GpuPool:
        if self.min_w >= self.max_w:
            raise ValueError(f"min_w ({self.min_w:g}) must be below max_w ({self.max_w:g})")
        if not self.min_w <= self.safe_cap_w <= self.max_w:
            raise ValueError(
                f"safe_cap_w ({self.safe_cap_w:g}) must lie within [min_w, max_w] = "
                f"[{self.min_w:g}, {self.max_w:g}]"
            )
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("classes: duplicate class names")
        if self.count == 0:
            raise ValueError("classes: at least one GPU is needed")
        if self.count > MAX_GPUS:
            raise ValueError(f"classes: {self.count} GPUs in all, over the {MAX_GPUS} one pool can hold")
        for hook in self.shed_hooks:
            if hook.workload not in names:
                raise ValueError(f"shed_hooks: workload {hook.workload!r} is not a class ({', '.join(names)})")
        from powerctl.throughput import CurveError, throughput_curve

        for i, c in enumerate(self.classes):
            try:
                throughput_curve(self.model, c.curve)
            except CurveError as exc:
                raise ValueError(f"classes[{i}].curve: {exc}") from None
        if self.backend == "agents":
            self._check_nodes(names)
        return self

    def _check_nodes(self, names: list[str]) -> None:
        if not self.nodes:
            raise ValueError("backend = 'agents' needs gpu.nodes (one per GPU server)")
        if self.agent_tls is None:
            raise ValueError("backend = 'agents' needs gpu.agent_tls (ca, cert, key)")
        if self.node_timeout_s * 3 > self.lease_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must be at least 3 x node_timeout_s ({self.node_timeout_s:g})")
        for field_name, values in (("name", [n.name for n in self.nodes]), ("address", [n.address for n in self.nodes])):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"nodes: duplicate {field_name} {', '.join(dup)}")
        counts = {c.name: 0 for c in self.classes}
        for n in self.nodes:
            for cls in n.classes_per_gpu():
                if cls not in counts:
                    raise ValueError(f"nodes: {n.name}: workload {cls!r} is not a class ({', '.join(names)})")
                counts[cls] += 1
        wrong = [f"{c.name}: classes say {c.gpus}, nodes have {counts[c.name]}" for c in self.classes
                 if counts[c.name] != c.gpus]
        if wrong:
            raise ValueError("nodes: GPUs per class do not match gpu.classes (" + "; ".join(wrong) + ")")


# --- control, telemetry, mqtt -----------------------------------------------------------------


class HorizonSegment(_Model):
    step_s: Annotated[float, Field(ge=10, le=86_400)]
    count: Annotated[int, Field(ge=1, le=2000)]


class Control(_Model):
    guard_period_s: Annotated[float, Field(gt=0, le=10)] = 0.2
    dispatch_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    mpc_period_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Horizon: segments of equal steps, near term first (e.g. 60 x 60 s then 92 x 900 s).
    horizon: list[HorizonSegment] = Field(
        default_factory=lambda: [HorizonSegment(step_s=300, count=288)], min_length=1
    )
    # HIGHS / AUTO (HiGHS for this linear model): several times faster re-solves, see bench/optimizer.py.
    solver: Literal["CLARABEL", "OSQP", "HIGHS", "AUTO"] = "AUTO"
    solve_deadline_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Genset commitment: "milp" (exact, HiGHS; the enumeration is the next rung when it misses its
    # time limit) or "enumeration" (candidate schedules only). See README "Optimizer".
    commitment: Literal["milp", "enumeration"] = "enumeration"
    milp_gap: Annotated[float, Field(ge=0, le=0.5)] = 1e-3  # relative MIP gap HiGHS may stop at
    milp_time_limit_s: Annotated[float, Field(gt=0, le=60)] = 0.5  # and at most 60 % of the deadline left
    # The MILP decides the commitment per block: 5 min in the first hour, then this long (s); the
    # schedule is priced on the plan's own steps (optimizer.milp.CoarseMilp). 0: per step (exact).
    milp_block_s: Annotated[float, Field(ge=0, le=86400)] = 3600.0
    supply_margin_kw: NonNegKw = 2.0
    supply_margin_pct: Pct = 5.0
    reserve_load_pct: Pct = 10.0
    reserve_pv_pct: Pct = 25.0
    unserved_penalty_per_kwh: PositiveFloat = 50.0
    spill_penalty_per_kwh: NonNegFloat = 0.0
    heartbeat_path: str = "run/heartbeat"
    state_dir: str = "run"
    # commissioning (powerctl/observe.py): read, plan and log what would be written; write nothing
    observe_only: bool = False
    # a folder of site-specific profiles (<vendor>/<model>.yaml), searched before the shipped library
    profiles_dir: str | None = None

    @model_validator(mode="after")
    def _periods(self) -> Control:
        if self.guard_period_s > self.dispatch_period_s:
            raise ValueError("guard_period_s must not exceed dispatch_period_s")
        if self.dispatch_period_s > self.mpc_period_s:
            raise ValueError("dispatch_period_s must not exceed mpc_period_s")
        return self

    @property
    def horizon_steps_s(self) -> list[float]:
        return [seg.step_s for seg in self.horizon for _ in range(seg.count)]


class Influx(_Model):
    url: str
    org: str
    bucket: str
    token: str | None = None
    token_file: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    flush_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    spool_dir: str = "run/spool"
    spool_max_mb: Annotated[float, Field(gt=0, le=1_000_000)] = 256.0


class Telemetry(_Model):
    period_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    file: str | None = "run/telemetry.lp"  # line protocol, used when no influx is set
    influx: Influx | None = None


class Operator(_Model):
    """One person (or tool) allowed to command the site: an Ed25519 public key, never a secret
    (``powerctl command keygen`` makes the pair; the private key stays with the operator)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    public_key: str  # base64 of the 32 raw bytes

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, v: str) -> str:
        from powerctl.mqtt.auth import public_key_from_b64

        public_key_from_b64(v)  # ValueError says what is wrong
        return v.strip()


class Mqtt(_Model):
    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_id: str | None = None
    topic_prefix: str = "powerctl"
    homeassistant_discovery: bool = False
    command_lease_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    publish_period_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_payload_bytes: Annotated[int, Field(ge=64, le=1_048_576)] = 65536
    # Operator commands (README "Operator commands: who may command the site"): signed by one of
    # these operators, or refused. Unsigned commands only on a broker the README calls trusted.
    operators: list[Operator] = Field(default_factory=list)
    allow_unsigned_commands: bool = False
    command_window_s: Annotated[float, Field(ge=1, le=300)] = 30.0  # replay window, either side of now
    command_min_interval_s: Annotated[float, Field(ge=0, le=3600)] = 10.0  # between changes of one command
    command_rate_per_s: Annotated[float, Field(gt=0, le=1000)] = 20.0  # command messages looked at, per s

    @field_validator("operators")
    @classmethod
    def _unique_operators(cls, ops: list[Operator]) -> list[Operator]:
        names = [o.name for o in ops]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"operator name(s) used twice: {', '.join(dup)}")
        return ops


class Http(_Model):
    """The local status page, JSON API and Prometheus metrics (powerctl/web). Read-only."""

    listen: str = "127.0.0.1"  # another address only on a trusted network: the API has no login
    port: Port = 8780
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 32
    request_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0


class Scada(_Model):
    """Read-only Modbus TCP server for SCADA/BMS (powerctl/scada.py; register map in the README)."""

    listen: str = "127.0.0.1"
    port: Port = 1502
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1


class SiteInfo(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    module: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    latitude: Annotated[float, Field(ge=-90, le=90)] = 36.1
    longitude: Annotated[float, Field(ge=-180, le=180)] = -79.95
    altitude_m: Annotated[float, Field(ge=-500, le=9000)] = 0.0
    timezone: str = "UTC"


class SiteConfig(_Model):
    site: SiteInfo
    control: Control = Control()
    devices: list[Device] = Field(min_length=1)
    gpu: GpuPool
    telemetry: Telemetry = Telemetry()
    mqtt: Mqtt | None = None
    http: Http | None = None
    scada: Scada | None = None
    tariff: Tariff | None = None  # grid prices (powerctl.tariff_config)

    @field_validator("devices")
    @classmethod
    def _unique_names(cls, devices: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for i, d in enumerate(devices):
            if d.name in seen:
                raise ValueError(f"devices[{i}].name: {d.name!r} is used twice")
            seen.add(d.name)
        return devices

    @model_validator(mode="after")
    def _price_topic_needs_mqtt(self) -> SiteConfig:
        if self.tariff is not None and self.tariff.price_topic is not None and self.mqtt is None:
            raise ValueError("tariff.price_topic: needs an [mqtt] section (the broker the prices come from)")
        return self

    @model_validator(mode="after")
    def _one_battery(self) -> SiteConfig:
        if not any(d.nature is Nature.BATTERY for d in self.devices) and not any(
            d.nature is Nature.GENSET for d in self.devices
        ):
            # PV alone cannot carry a GPU load through a cloud: refuse rather than trip.
            raise ValueError("devices: a site needs at least one battery or genset")
        return self

    def by_nature(self, nature: Nature) -> list[Any]:
        return [d for d in self.devices if d.nature is nature]

    def device(self, name: str) -> Any:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


# --- loading and error messages ---------------------------------------------------------------

_TAGS = {n.value for n in Nature} | {"modbus_tcp", "modbus_rtu", "mqtt"}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        prev = loc[i - 1] if i else None
        if isinstance(part, str) and part in _TAGS and (isinstance(prev, int) or prev == "transport"):
            continue  # the discriminator value pydantic inserts for tagged unions: not a real field
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            # a key is user input: quote one with control characters, so it cannot break the message
            out += ("." if out else "") + (name if name.isprintable() else repr(name))
    return out or "(top level)"


def _msg(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = err.get("input")
    got_s = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
    def num(v: Any) -> str:
        return f"{v:g}" if isinstance(v, int | float) else str(v)

    if kind == "greater_than":
        return f"must be > {num(ctx.get('gt'))}{got_s}"
    if kind == "greater_than_equal":
        return f"must be >= {num(ctx.get('ge'))}{got_s}"
    if kind == "less_than_equal":
        return f"must be <= {num(ctx.get('le'))}{got_s}"
    if kind == "less_than":
        return f"must be < {num(ctx.get('lt'))}{got_s}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key (typo?)"
    if kind == "union_tag_invalid":
        disc = str(ctx.get("discriminator", "kind")).strip("'")
        tags = re.findall(r"'([^']+)'", str(ctx.get("expected_tags", "")))
        return f"unknown {disc} {ctx.get('tag')!r}; expected one of {', '.join(tags)}"
    if kind == "union_tag_not_found":
        return f"needs {ctx.get('discriminator')}"
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[0].lower() + msg[1:] + (got_s if kind.endswith(("_type", "_parsing", "literal_error", "pattern_mismatch", "finite_number")) else "")


def format_validation_error(path: str | Path, exc: ValidationError) -> str:
    lines = [f"{path}: {_loc(tuple(e['loc']))}: {_msg(dict(e))}" for e in exc.errors()]
    return "\n".join(lines)


def parse_config(data: dict[str, Any], path: str | Path = "<config>") -> SiteConfig:
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def load_config(path: str | Path, *, check_secrets: bool = True) -> SiteConfig:
    """Read and validate a site TOML file. Raises ConfigError with file, field path and problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: `x = [[[[...` past ~1000
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deeply") from None
    cfg = parse_config(data, p)
    if check_secrets:
        _refuse_world_readable_secrets(p, cfg)
    return cfg


def _refuse_world_readable_secrets(path: Path, cfg: SiteConfig) -> None:
    """A config that holds a secret inline must not be readable by everyone."""
    inline = []
    if cfg.mqtt and cfg.mqtt.password:
        inline.append("mqtt.password")
    if cfg.telemetry.influx and cfg.telemetry.influx.token:
        inline.append("telemetry.influx.token")
    if inline:
        mode = os.stat(path).st_mode
        if mode & stat.S_IROTH:
            raise ConfigError(
                f"{path}: holds secrets ({', '.join(inline)}) but is world-readable "
                f"(mode {stat.filemode(mode)}); chmod o-r it or move the secret to a *_file"
            )
    _refuse_world_readable_secret_files(path, cfg)


def _refuse_world_readable_secret_files(path: Path, cfg: SiteConfig) -> None:
    """A secret moved to a *_file must not sit in a world-readable file either (a file that does not
    exist yet is reported by its reader when it is needed)."""
    files = []
    if cfg.mqtt and cfg.mqtt.password_file:
        files.append(("mqtt.password_file", cfg.mqtt.password_file))
    if cfg.telemetry.influx and cfg.telemetry.influx.token_file:
        files.append(("telemetry.influx.token_file", cfg.telemetry.influx.token_file))
    for field_name, name in files:
        try:
            mode = os.stat(Path(name).expanduser()).st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            raise ConfigError(
                f"{path}: {field_name}: {name} is world-readable (mode {stat.filemode(mode)}); chmod o-r it"
            )
