"""The inverse question: how much locality must training buy to reach a speed?

`largest_exrep` answers, for one device, architecture, cache and policy, the largest ExRep
(docs/metrics.md) at which decoding still reaches a target tokens/s. Each probe replays a trace
synthesised like a source trace (`cosmosim.inputs.synthetic.synthesized_like`: the source's expert
popularity and layer-to-layer co-occurrence, only the switching rate dialled) through an engine.
Speed falls as ExRep rises, so the search brackets the target between a probe that reaches it and
one that does not, and halves the bracket until it is narrower than the synthesis tolerance.

    from cosmosim.sweep.target import largest_exrep
    answer = largest_exrep("phone", "traces/moe.npz", 20.0, arch="phone-moe")
    answer.verdict, answer.largest_exrep          # "reached", 0.31...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cosmosim.errors import InputError
from cosmosim.inputs.profiles import DeviceProfile, load_profile
from cosmosim.inputs.synthetic import highest_exrep_like, synthesized_like
from cosmosim.inputs.trace import load_trace
from cosmosim.provenance import sha256_file
from cosmosim.runner import RunConfig, run
from cosmosim.scenario.build import resolve_arch

TOLERANCE = 0.01  # the bracket's final width: what `trace synth` promises on the ExRep it hits
REACHED, EVERY, NONE = "reached", "every ExRep suffices", "no ExRep suffices"


@dataclass(frozen=True)
class Probe:
    exrep_target: float
    exrep: float  # measured on the synthesised trace
    tokens_per_s: float
    tpot_ms: float
    hit_rate: float


@dataclass
class ExrepAnswer:
    target_tokens_per_s: float
    verdict: str  # REACHED, EVERY or NONE
    largest_exrep: float | None  # measured ExRep of the most switching probe that reaches the target
    smallest_failing_exrep: float | None  # the least switching probe that does not (the bracket's other end)
    reachable: tuple[float, float]  # ExReps a trace synthesised like the source can have
    reason: str
    inputs: dict  # the run's resolved inputs at the first probe (device, architecture, cache, policy)
    probes: list[Probe] = field(default_factory=list)  # in the order run

    def to_dict(self) -> dict:
        return asdict(self)


def check_target(tokens_per_s: object) -> float:
    if isinstance(tokens_per_s, bool) or not isinstance(tokens_per_s, (int, float)) or not 0 < tokens_per_s < float("inf"):
        raise InputError(f"--target-tps: expected a positive number of tokens/s, got {tokens_per_s!r}")
    return float(tokens_per_s)


def _no_exrep_reason(first: Probe, inputs: dict, working_set: int) -> str:
    if first.hit_rate > 0:
        return (f"even with no switching (ExRep {first.exrep:.3f}) it decodes {first.tokens_per_s:.3g} tokens/s: "
                "the time left is not the experts' loading (see the breakdown of `cosmosim run`)")
    return (f"the cache never hits, even with no switching: under {inputs['policy']} its {inputs['cache_experts']} "
            f"experts cannot hold a token's working set of {working_set} (layers x top_k), so every access misses "
            "at any ExRep; try --policy kactive or a cache of at least that many experts")


def largest_exrep(profile: str | Path | DeviceProfile, like: str | Path, target_tokens_per_s: float, *,
                  arch: str | None = None, config: RunConfig | None = None, engine: str = "analytic", seed: int = 0,
                  on_probe: Callable[[Probe], None] | None = None) -> ExrepAnswer:
    """The largest ExRep at which `profile` decodes `arch` (default: the trace's) at `target_tokens_per_s`
    or faster, with `config`'s cache and policy, routing synthesised like the trace `like`.

    About 2 + log2(range / TOLERANCE) runs (9 for the shipped minis); `on_probe` sees each as it ends.
    """
    check_target(target_tokens_per_s)
    config = config or RunConfig()
    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    source = load_trace(like)
    architecture = resolve_arch(arch, source)
    if not architecture.is_moe:
        raise InputError(f"--arch {architecture.name}: a dense model routes nothing; ExRep does not apply")
    sha256, highest = sha256_file(like), highest_exrep_like(source)
    probes: list[Probe] = []
    inputs: dict = {}

    def probe(exrep_target: float) -> Probe:
        trace = load_trace(synthesized_like(like, sha256, exrep_target, seed))
        result = run(profile, trace, architecture, config, engine)
        if not inputs:
            inputs.update(result["inputs"])
        made = Probe(exrep_target, trace.meta["synthetic"]["measured_exrep"], result["tokens_per_s"],
                     result["tpot_ms"]["mean"], result["hit_rate"])
        probes.append(made)
        if on_probe is not None:
            on_probe(made)
        return made

    def answer(verdict: str, passing: Probe | None, failing: Probe | None, reason: str) -> ExrepAnswer:
        return ExrepAnswer(float(target_tokens_per_s), verdict, passing and passing.exrep, failing and failing.exrep,
                           (0.0, highest), reason, dict(inputs), probes)

    passing = probe(0.0)
    if passing.tokens_per_s < target_tokens_per_s:
        return answer(NONE, None, passing, _no_exrep_reason(passing, inputs, architecture.n_moe_layers * architecture.top_k))
    failing = probe(highest)
    if failing.tokens_per_s >= target_tokens_per_s:
        return answer(EVERY, failing, None, f"at the most switching this popularity allows (ExRep {failing.exrep:.3f}) "
                                            f"it still decodes {failing.tokens_per_s:.3g} tokens/s")
    while failing.exrep_target - passing.exrep_target > TOLERANCE:
        middle = probe(round((passing.exrep_target + failing.exrep_target) / 2, 4))  # short, cacheable names
        if middle.tokens_per_s >= target_tokens_per_s:
            passing = middle
        else:
            failing = middle
    return answer(REACHED, passing, failing, f"{passing.tokens_per_s:.3g} tokens/s at ExRep {passing.exrep:.3f}, "
                                             f"{failing.tokens_per_s:.3g} at {failing.exrep:.3f}")
