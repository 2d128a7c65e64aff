"""Simulated GPUs: lag towards min(cap, demand), floor overshoot, energy, range checks, shared state."""

from __future__ import annotations

import math
from pathlib import Path

from powerctl.gpu.simulated import SimulatedGpus


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_power_follows_cap_with_first_order_lag() -> None:
    clk = Clock()
    sim = SimulatedGpus(1, 100, 400, clock=clk, demand_w=lambda _i, _t: 380.0, tau_s=0.5)
    assert sim.read_power_w(0) == 380.0
    sim.set_cap_w(0, 200.0)
    clk.t = 0.5  # one time constant: 63 % of the way
    assert math.isclose(sim.read_power_w(0), 200 + 180 * math.exp(-1), rel_tol=1e-9)
    clk.t = 5.0
    assert abs(sim.read_power_w(0) - 200.0) < 0.1


def test_cap_above_demand_does_not_bite() -> None:
    clk = Clock()
    sim = SimulatedGpus(1, 100, 400, clock=clk, demand_w=lambda _i, _t: 150.0)
    sim.set_cap_w(0, 300.0)
    clk.t = 3.0
    assert math.isclose(sim.read_power_w(0), 150.0, rel_tol=1e-9)


def test_floor_overshoot() -> None:
    clk = Clock()
    sim = SimulatedGpus(1, 100, 400, clock=clk, floor_overshoot=0.05)
    sim.set_cap_w(0, 100.0)
    clk.t = 10.0
    assert math.isclose(sim.read_power_w(0), 105.0, rel_tol=1e-3)


def test_energy_integrates_power() -> None:
    clk = Clock()
    sim = SimulatedGpus(1, 100, 400, clock=clk, demand_w=lambda _i, _t: 250.0)
    clk.t = 4.0
    assert math.isclose(sim.read_energy_j(0), 1000.0, rel_tol=1e-9)


def test_out_of_range_refused_not_clamped() -> None:
    sim = SimulatedGpus(1, 100, 400, clock=Clock())
    for bad in (50.0, 500.0, float("nan")):
        r = sim.set_cap_w(0, bad)
        assert not r.ok and "outside its range" in r.message
    assert sim.read_limits_w(0) == (400.0, 400.0)


def test_outside_limiter_reported() -> None:
    sim = SimulatedGpus(1, 100, 400, clock=Clock())
    sim.set_outside_limit(0, 250.0)
    r = sim.set_cap_w(0, 300.0)
    assert r.ok and r.outside_limit and r.enforced_w == 250.0


def test_state_file_shared_between_instances(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    a = SimulatedGpus(2, 100, 400, clock=Clock(), state_path=path)
    a.set_cap_w(1, 180.0)
    b = SimulatedGpus(2, 100, 400, clock=Clock(), state_path=path)
    assert b.read_limits_w(1) == (180.0, 180.0)
    assert b.read_limits_w(0) == (400.0, 400.0)
