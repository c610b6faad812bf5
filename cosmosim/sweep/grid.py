"""From a spec to its points: the product of the axes, minus combinations that mean the same run.

Some settings do not apply to some points, and the product would otherwise repeat a run under
different labels. They are dropped before points are compared:

- a dense architecture routes nothing: trace, WD rank, policy, prefetch and cache size do not apply;
- a policy that sizes the cache itself (`kactive`) ignores the cache-size axis and per-layer flag;
- a trace replayed as recorded (no `exrep`, or `exrep = "recorded"`) has no synthesis seed.

Override axes (`n_experts`, `top_k`, ...) make variants of each point's architecture; whether a
variant is dense (n_experts 1) decides the first rule, and the overrides are kept either way.

Points keep the order of the product (axes in the order written, the last one fastest) and are
numbered from 0, so the same spec always gives the same `point_id` for the same run: that is what
lets an interrupted sweep resume.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

from cosmosim.device.policies import POLICIES
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.arch_variants import OVERRIDES
from cosmosim.scenario.settings import CACHE_SIZE_SETTINGS, ROUTING_SETTINGS, RunConfig
from cosmosim.sweep.spec import RECORDED, SweepSpec, TraceFacts

# A sweep's cache_fraction sizes the cache too; exrep and synth_seed make the trace.
ROUTING_ONLY = ("trace", "wd_rank", *ROUTING_SETTINGS, "cache_fraction", "exrep", "synth_seed")
CACHE_SIZING = (*CACHE_SIZE_SETTINGS, "cache_fraction")
CONFIG_AXES = tuple(field.name for field in fields(RunConfig))


@dataclass(frozen=True)
class Point:
    """One run of the sweep, everything a worker process needs to compute it."""

    point_id: int
    profile: str  # the profile's name
    profile_path: str
    arch: str | None  # None: the trace's meta.target_arch
    wd_rank: int | str | None  # None: the architecture's own; "full": experts not decomposed
    trace: str | None  # as written in the spec (None for a dense architecture)
    trace_facts: TraceFacts | None
    cache_fraction: float | None  # of all the architecture's experts; resolved once the arch is known
    config: RunConfig
    exrep: float | None = None  # replay a trace synthesised like `trace` at this ExRep; None: `trace` itself
    synth_seed: int | None = None  # the synthesis seed (with `exrep`)
    overrides: tuple[tuple[str, int], ...] = ()  # (axis, value) of the override axes, in OVERRIDES order


def overrides_of(settings: dict) -> tuple[tuple[str, int], ...]:
    return tuple((name, settings[name]) for name in OVERRIDES if name in settings)


def _arch_name(settings: dict, spec: SweepSpec) -> str:
    if "arch" in settings:
        return settings["arch"]
    return spec.traces[settings["trace"]].target_arch


def _applicable(settings: dict, spec: SweepSpec) -> dict:
    """The settings with those that cannot change this point's result dropped."""
    base = get_arch(_arch_name(settings, spec))
    if settings.get("n_experts", base.n_experts) <= 1:  # a dense architecture, or a dense variant of one
        return {name: value for name, value in settings.items() if name not in ROUTING_ONLY}
    if settings.get("exrep", RECORDED) == RECORDED:
        settings = {name: value for name, value in settings.items() if name not in ("exrep", "synth_seed")}
    else:
        settings = {"synth_seed": 0, **settings}  # one seed unless the spec sweeps them
    policy = settings.get("policy", RunConfig.policy)
    if not POLICIES[policy].needs_cache_size:
        return {name: value for name, value in settings.items() if name not in CACHE_SIZING}
    return settings


def _point(point_id: int, settings: dict, spec: SweepSpec) -> Point:
    profile = spec.profiles[settings["profile"]]
    trace = settings.get("trace")
    return Point(
        point_id=point_id, profile=profile.name, profile_path=profile.path, arch=settings.get("arch"),
        overrides=overrides_of(settings),
        wd_rank=settings.get("wd_rank"), trace=trace, trace_facts=None if trace is None else spec.traces[trace],
        cache_fraction=settings.get("cache_fraction"), exrep=settings.get("exrep"), synth_seed=settings.get("synth_seed"),
        config=RunConfig(**{name: value for name, value in settings.items() if name in CONFIG_AXES}),
    )


def grid(spec: SweepSpec) -> list[Point]:
    """Every distinct point of the spec's product, numbered in product order."""
    names = [name for name, _ in spec.axes]
    seen: set[tuple] = set()
    points: list[Point] = []
    for combination in itertools.product(*(values for _, values in spec.axes)):
        settings = dict(zip(names, combination))
        if overrides_of(settings):  # a variant names its base, even one a dense variant's dropped trace named
            settings = {"arch": _arch_name(settings, spec), **settings}
        settings = _applicable(settings, spec)
        key = tuple(sorted((name, repr(value)) for name, value in settings.items()))
        if key not in seen:
            seen.add(key)
            points.append(_point(len(points), settings, spec))
    return points
