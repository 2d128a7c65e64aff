"""``agent.toml``: one GPU server's agent. Its limits are its own, whatever a controller asks.

    [agent]
    name = "agent-000"                   # the node name in its certificate (CN/SAN)
    listen = "0.0.0.0:7443"
    allowed_controllers = ["controller"] # controller identities (certificate CN/SAN) it obeys
    min_w = 200.0                        # every cap held to [min_w, max_w] and the GPU's own range
    max_w = 700.0
    safe_cap_w = 300.0                   # at start and when a lease runs out (never raises a cap)
    max_lease_s = 10.0                   # a longer lease asked for is shortened to this
    backend = "nvml"                     # or "simulated" (tests, the simulator)

    [agent.tls]                          # relative paths are relative to this file
    ca = "ca.pem"
    cert = "agent-000.pem"
    key = "agent-000.key"

    [agent.simulated]                    # backend = "simulated" only
    gpus = 8
    min_w = 200.0
    max_w = 700.0
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from powerctl.config import ConfigError, format_validation_error

PositiveFloat = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AgentBackend(StrEnum):
    NVML = "nvml"
    SIMULATED = "simulated"


class AgentTls(_Model):
    ca: Path
    cert: Path
    key: Path


class SimulatedNode(_Model):
    gpus: Annotated[int, Field(ge=1, le=64)] = 8
    min_w: PositiveFloat = 200.0
    max_w: PositiveFloat = 700.0
    idle_w: Annotated[float, Field(ge=0)] = 60.0
    demand_w: Annotated[float, Field(ge=0)] | None = None  # None: each GPU wants its maximum
    tau_s: PositiveFloat = 0.5


class Agent(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    listen: Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")] = "0.0.0.0:7443"
    allowed_controllers: Annotated[list[str], Field(min_length=1)]
    min_w: PositiveFloat
    max_w: PositiveFloat
    safe_cap_w: PositiveFloat
    max_lease_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_skew_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    backend: AgentBackend = AgentBackend.NVML
    tls: AgentTls
    simulated: SimulatedNode | None = None

    @model_validator(mode="after")
    def _ranges(self) -> Agent:
        if self.min_w >= self.max_w:
            raise ValueError(f"min_w ({self.min_w:g}) must be below max_w ({self.max_w:g})")
        if not self.min_w <= self.safe_cap_w <= self.max_w:
            raise ValueError(f"safe_cap_w ({self.safe_cap_w:g}) must lie within [min_w, max_w] = "
                             f"[{self.min_w:g}, {self.max_w:g}]")
        if self.backend is AgentBackend.SIMULATED and self.simulated is None:
            raise ValueError("backend = 'simulated' needs an [agent.simulated] table")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.listen.rsplit(":", 1)
        return host, int(port)


class AgentFile(_Model):
    agent: Agent


def parse_agent_config(data: dict[str, Any], path: str | Path = "<agent config>") -> Agent:
    try:
        agent = AgentFile.model_validate(data).agent
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    port = agent.host_port[1]
    if not 0 < port < 65536:
        raise ConfigError(f"{path}: agent.listen: port {port} is not in 1..65535")
    base = Path(path).parent
    tls = AgentTls(**{k: (v if v.is_absolute() else base / v) for k, v in agent.tls.model_dump().items()})
    return agent.model_copy(update={"tls": tls})


def load_agent_config(path: str | Path) -> Agent:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_agent_config(data, p)
