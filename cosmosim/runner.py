"""`run`: the one function behind `cosmosim run`, for notebooks and sweeps too.

Two engines answer the same question with the same JSON keys: `des`, the discrete-event simulation
(cosmosim/sim), and `analytic`, the closed-form model (cosmosim/analytic; no prefetch, policies lru,
belady and kactive). For many design points at once, `cosmosim.analytic.evaluate_points` is faster.
"""

from __future__ import annotations

from pathlib import Path

from cosmosim.analytic.engine import analyze
from cosmosim.arch import Architecture, get_arch
from cosmosim.errors import InputError
from cosmosim.metrics import summarize
from cosmosim.profiles import DeviceProfile, load_profile
from cosmosim.scenario import RunConfig, Scenario, build_scenario
from cosmosim.sim.engine import simulate
from cosmosim.trace import Trace, load_trace

ENGINES = {"des": simulate, "analytic": analyze}  # name -> scenario -> Records


def resolve_arch(arch: str | Architecture | None, trace: Trace | None) -> Architecture:
    """The named architecture, or the one the trace was recorded for (its meta.target_arch)."""
    if isinstance(arch, Architecture):
        return arch
    if arch is not None:
        return get_arch(arch)
    target = trace.meta.get("target_arch") if trace is not None else None
    if not target:
        raise InputError("--arch: not given, and the trace's meta.target_arch names none; give --arch NAME (see `cosmosim arch`)")
    return get_arch(target)


def prepare(profile: str | Path | DeviceProfile, trace: str | Path | Trace | None = None,
            arch: str | Architecture | None = None, config: RunConfig | None = None) -> Scenario:
    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    trace = trace if isinstance(trace, Trace) or trace is None else load_trace(trace)
    return build_scenario(profile, resolve_arch(arch, trace), trace, config or RunConfig())


def run(profile: str | Path | DeviceProfile, trace: str | Path | Trace | None = None,
        arch: str | Architecture | None = None, config: RunConfig | None = None, engine: str = "des") -> dict:
    """Run one scenario on `engine` and return its summary (keys in docs/metrics.md)."""
    if engine not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    scenario = prepare(profile, trace, arch, config)
    return summarize(scenario, ENGINES[engine](scenario), engine)
