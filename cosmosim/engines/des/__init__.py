"""The discrete-event simulator (SimPy): `simulate(scenario)` replays a scenario's workload step by step
through the flash device, the DRAM expert cache and the compute unit (`simulation`), its commonest
case on an inlined fast path with equal records (`lru_path`)."""

from cosmosim.engines.des.simulation import Simulation, simulate

__all__ = ["Simulation", "simulate"]
