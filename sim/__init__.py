"""Simulation: plant models, device simulators, traces, replay, KPIs, plots and sweeps."""
