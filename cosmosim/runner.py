"""`run`: the one function behind `cosmosim run`, for notebooks and sweeps too.

    from cosmosim.scenario.settings import RunConfig
    from cosmosim.runner import run
    result = run("wearable", "traces/bles.npz", config=RunConfig(policy="kactive"), engine="analytic")

Two engines answer the same question with the same JSON keys: `des`, the discrete-event simulation
(cosmosim.engines.des), and `analytic`, the closed-form model (cosmosim.engines.analytic; no
prefetch, policies lru, belady and kactive). For many design points at once,
`cosmosim.analytic.evaluate_points` is faster.
"""

from __future__ import annotations

from pathlib import Path

from cosmosim.engines.analytic.engine import analyze
from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profiles import DeviceProfile
from cosmosim.inputs.trace import Trace
from cosmosim.results.summary import summarize
from cosmosim.results.timeline import DEFAULT_MAX_PASSES, Timeline
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

__all__ = ["ENGINES", "RunConfig", "prepare", "run", "run_with_timeline"]

ENGINES = {"des": simulate, "analytic": analyze}  # name -> scenario -> Records


def run(profile: str | Path | DeviceProfile, trace: str | Path | Trace | None = None,
        arch: str | Architecture | None = None, config: RunConfig | None = None, engine: str = "des") -> dict:
    """Run one scenario on `engine` and return its summary (keys in docs/metrics.md)."""
    if engine not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    scenario = prepare(profile, trace, arch, config)
    return summarize(scenario, ENGINES[engine](scenario), engine)


def run_with_timeline(profile: str | Path | DeviceProfile, trace: str | Path | Trace | None = None,
                      arch: str | Architecture | None = None, config: RunConfig | None = None,
                      max_passes: int | None = DEFAULT_MAX_PASSES) -> tuple[dict, Timeline]:
    """`cosmosim.runner.run` with the discrete-event engine, plus the timeline of its first passes."""
    scenario = prepare(profile, trace, arch, config)
    timeline = Timeline(max_passes)
    return summarize(scenario, simulate(scenario, timeline), "des"), timeline
