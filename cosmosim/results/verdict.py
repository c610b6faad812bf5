"""The verdict of a run: one or two lines saying what limits this design on this device, and what
would change it, computed from the result dict (nothing in a line is written by hand).

    verdict(result, sizing) -> {"limit": "flash_wait", "share": 0.94, "parts": {...}, "lines": [...],
                                "findings": [...], "suggestions": [...]}

`limit` and `share`: the largest part of TPOT and its share, the time parts summed into the four
groups validation compares (the catalogue's `compared_as`: `flash_wait`, `expert_compute`,
`attention_router_overhead`, `lm_head`); `parts`: every group's share. `findings`: the rules shown,
best first, each with its `rule`, `limit`, `weight`, `share`, `line` and `suggestions`; `lines`:
their lines; `suggestions`: theirs, in order. A suggestion is a dict with the `flag` that makes the
change (None where no one flag does) and its `value`, plus what it would give (`cache_experts`,
`expert_mb`, `peak_dram_mb`, ...).

Rules. Each is one small function of `Facts` (the result dict, parsed once), registered with
`@rule`: a new rule is one decorated function here, nothing else. A rule returns a `Finding` or None.
Its `weight` ranks it: the share of TPOT the finding explains; a design over its DRAM budget weighs
1 + the overshoot (it does not fit at all, whatever its speed); a note that explains no time weighs 0.
Findings are sorted by weight (ties: registry order, so a specific rule comes before the generic
`dominant_part` that blames the same part), one per `limit` is kept, and the first `MAX_LINES` shown.

The facts the rules read and the what-if arithmetic: `cosmosim.results.whatif`.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from cosmosim.results.catalog import ATTENTION_ROUTER_OVERHEAD, EXPERT_COMPUTE, FLASH_WAIT, LM_HEAD, MEMORY_GROUP
from cosmosim.results.whatif import (
    BUDGET,
    GROUPS,
    Facts,
    Sizing,
    at_bits,
    cache_mb_for,
    fixed_of,
    peak_with,
    wd_option,
)
from cosmosim.units import MB

MAX_LINES = 2
DRAM_BUDGET = "dram_budget"  # the limit of a finding about peak DRAM against the app budget
ALL_CACHED_HIT_RATE = 0.99  # rule all_cached: at or above this hit rate flash is (nearly) idle
NEAR_BUDGET = 0.95  # rule near_budget: peak DRAM at or above this fraction of the app budget


@dataclass(frozen=True)
class Finding:
    limit: str  # what it blames: a time group (FLASH_WAIT, ...) or DRAM_BUDGET
    weight: float  # how much it matters (see the module docstring)
    line: str
    suggestions: tuple[dict, ...] = ()
    share: float | None = None  # the share of TPOT of `limit`, a time group
    rule: str = ""  # the registry's name, filled in by `verdict`


# ----------------------------------------------------------------------------- wording

def _pct(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _fraction(ratio: float) -> str:
    return {0.5: "half", 0.25: "a quarter"}.get(ratio, f"{_num(ratio)}×")


def _of_tpot(f: Facts, group: str) -> str:
    return f"{_pct(f.share(group))} of TPOT ({_num(f.groups_ms[group])} of {_num(f.tpot_ms)} ms)"


def _held(f: Facts, experts: int) -> str:
    return f"all {experts}" if experts >= f.total_experts else str(experts)


def _bits_phrase(f: Facts, options: list[dict]) -> str:
    """"at --weight-bits 8 the cache holds 98 experts (at 4: 271)", or each expert's bytes when the
    count does not move."""
    options = [o for o in options if o and o["cache_experts"] is not None]
    if not options:
        return ""
    first, rest = options[0], []
    for option in options[1:]:
        if (rest or [first])[-1]["cache_experts"] < f.total_experts:  # once all fit, more bits say nothing
            rest.append(option)
    if first["cache_experts"] != f.capacity:
        others = ", ".join(f"{o['value']}: {_held(f, o['cache_experts'])}" for o in rest)
        tail = f" (at {others})" if rest else ""
        return f"at --weight-bits {first['value']} the cache holds {_held(f, first['cache_experts'])} experts{tail}"
    return (f"at --weight-bits {first['value']} each expert is {_num(first['expert_mb'])} MB instead of "
            f"{_num(f.expert_bytes / MB)}")


def _over(f: Facts, peak_mb: float | None) -> str:
    if peak_mb is None or f.budget_mb is None:
        return ""
    return f", over the {_num(f.budget_mb)} MB app budget" if peak_mb > f.budget_mb else ""


def _sentence(*clauses: str) -> str:
    text = "; ".join(c for c in clauses if c)
    return text[:1].upper() + text[1:] + "." if text else ""


def _text(line: str, clauses: list[str]) -> str:
    """The finding's line: what limits, then what would change it."""
    return " ".join(s for s in (_sentence(line), _sentence(*clauses)) if s)


# ----------------------------------------------------------------------------- the rules

RULES: dict[str, Callable[[Facts], Finding | None]] = {}


def rule(name: str):
    """Register a rule under `name`; registry order breaks ties of weight."""
    def register(function: Callable[[Facts], Finding | None]):
        RULES[name] = function
        return function
    return register


@rule("over_budget")
def over_budget(f: Facts) -> Finding | None:
    """(d) Peak DRAM over the profile's app budget (a `--cache-mb`/`--cache-experts` cache, or
    `kactive`, may need more than the budget; a cache sized from it never does)."""
    peak, budget = f.peak_dram_mb, f.budget_mb
    if peak is None or budget is None or peak <= budget:
        return None
    memory = f.result[MEMORY_GROUP]
    named = {"resident_weights": "resident weights", "expert_cache": "expert cache", "kv_cache": "KV cache"}
    held = ", ".join(f"{name} {_num(memory[part])}" for part, name in named.items() if memory.get(part))
    line = (f"peak DRAM is {_num(peak)} MB, over the {f.inputs['profile']} app budget of {_num(budget)} MB "
            f"({held} MB)")
    suggestions = []
    fitting = next((o for o in (at_bits(f, b) for b in f.lower_bits()) if o and o["fits_budget"]), None)
    if fitting:
        suggestions.append(fitting)
    fixed = fixed_of(f, f.memory["resident_weights"])
    if f.two_sizes:  # a cache that counts bytes: the budget left, in MB (rounded down to 0.1)
        most_mb = math.floor((f.sizing.app_budget_bytes - fixed) / (MB / 10)) / 10
        if f.global_cache and most_mb > 0:
            suggestions.append({"flag": "--cache-mb", "value": most_mb, "cache_experts": None,
                                "peak_dram_mb": fixed / MB + most_mb})
        most_text = f"--cache-mb {most_mb:g}"
    else:
        most = int((f.sizing.app_budget_bytes - fixed) // f.expert_bytes) if f.moe and f.expert_bytes else -1
        if f.global_cache and most >= f.sizing.top_k:
            suggestions.append({"flag": "--cache-experts", "value": most, "cache_experts": most,
                                "peak_dram_mb": peak_with(f, most)})
        most_text = f"--cache-experts {most}"
    clauses = [f"at --weight-bits {fitting['value']} it needs {_num(fitting['peak_dram_mb'])} MB" if fitting else "",
               f"{most_text} is the most that fits" if len(suggestions) > bool(fitting) else ""]
    return Finding(DRAM_BUDGET, 1 + (peak - budget) / budget, _sentence(line, *clauses), tuple(suggestions))


@rule("working_set")
def working_set(f: Facts) -> Finding | None:
    """(b) A global cache smaller than one token's working set (layers × top_k): under LRU every
    expert a token needs is evicted before the next token asks again, so the hit rate is ~0
    (lfu, belady and pinned keep a few). Suggests a lower bit-width and the cache it gives,
    `--policy kactive` (k per layer: exactly the working set), and a `--cache-mb` that holds it."""
    if not f.global_cache or f.capacity >= f.working_set:
        return None
    hit = f.hit_rate or 0.0
    reads = ("every expert is read from flash" if hit < 0.005 else
             f"{_pct(1 - hit)} of expert accesses read flash")
    layers = f" ({f.sizing.n_layers} MoE layers × top-{f.sizing.top_k})" if f.sizing else ""
    line = (f"a token needs {f.working_set} experts{layers} and the cache holds {f.capacity}: {reads} "
            f"(hit rate {hit:.2f}), and waiting for flash is {_of_tpot(f, FLASH_WAIT)}")
    bits = [at_bits(f, b) for b in f.lower_bits()]
    suggestions = [o for o in bits if o]
    clauses = [_bits_phrase(f, suggestions)]
    # Under mmap the page cache is the policy; with experts of two sizes a count of experts fixes no bytes.
    if f.sizing and f.memory and f.inputs.get("loader") != "mmap" and not f.two_sizes:
        kactive = {"flag": "--policy", "value": "kactive", "cache_experts": f.working_set,
                   "peak_dram_mb": peak_with(f, f.working_set)}
        suggestions += [kactive, cache_mb_for(f, f.working_set)]
        clauses.append(f"--policy kactive keeps the {f.working_set} a token needs "
                       f"(peak DRAM {_num(kactive['peak_dram_mb'])} MB{_over(f, kactive['peak_dram_mb'])})")
    return Finding(FLASH_WAIT, f.share(FLASH_WAIT), _text(line, clauses),
                   tuple(suggestions), f.share(FLASH_WAIT))


def _bound(f: Facts, compute_parts: tuple[str, ...], dram_parts: tuple[str, ...]) -> str | None:
    """"DRAM bandwidth" or "arithmetic", whichever roofline term the parts spent more time on;
    None where the breakdown does not split them (replay)."""
    compute = sum(f.parts_ms.get(p, 0.0) for p in compute_parts)
    dram = sum(f.parts_ms.get(p, 0.0) for p in dram_parts)
    if not any(p in f.parts_ms for p in dram_parts):
        return None
    return "DRAM bandwidth" if dram >= compute else "arithmetic"


def _remedies(f: Facts, bound: str | None, what: str, wd: bool = True) -> tuple[list[str], list[dict]]:
    """Fewer bits unless arithmetic-bound (`what` then reads fewer bytes), and WD experts (fewer
    bytes and FLOPs) where `wd`."""
    clauses, suggestions = [], []
    lower = f.lower_bits()
    if lower and bound != "arithmetic":
        option = at_bits(f, lower[0]) or {"flag": "--weight-bits", "value": lower[0]}
        suggestions.append(option)
        clauses.append(f"at --weight-bits {lower[0]} {what} {_fraction(lower[0] / f.bits)} the bytes")
    wd = wd_option(f) if wd else None
    if wd:
        suggestions.append(wd)
        clauses.append(f"WD experts at rank {wd['wd_rank']} are {_num(wd['expert_scale'])}× the bytes and FLOPs")
    return clauses, suggestions


@rule("all_cached")
def all_cached(f: Facts) -> Finding | None:
    """(c) The cache holds every expert (or serves ≥ 99% of accesses): flash is idle after the first
    reads, and the limit is the roofline of the rest, DRAM bandwidth or arithmetic. Suggests fewer
    bits (when DRAM-bound) and WD experts."""
    if not f.moe or not (f.inputs.get("offloading_idle") or (f.hit_rate or 0) >= ALL_CACHED_HIT_RATE):
        return None
    rest = [g for g in GROUPS if g != FLASH_WAIT]
    limit = max(rest, key=lambda g: f.groups_ms[g])
    bound = _bound(f, ("nonexpert_compute", "expert_compute"), ("nonexpert_dram", "expert_dram"))
    held = (f"the cache holds all {f.total_experts} experts" if f.inputs.get("offloading_idle") else
            f"the cache ({f.capacity} of {f.total_experts} experts) serves {f.hit_rate:.1%} of accesses")
    biggest = ", ".join(f"{_LABELS[g](f)} {_pct(f.share(g))}" for g in sorted(rest, key=lambda g: -f.groups_ms[g])
                        if f.share(g) >= 0.1)
    limit_text = f"the limit is {bound}" if bound else "the limit is compute and DRAM (measured together)"
    line = (f"{held} (hit rate {f.hit_rate:.2f}): waiting for flash is {_pct(f.share(FLASH_WAIT))} of TPOT, "
            f"{limit_text}: {biggest} of {_num(f.tpot_ms)} ms")
    clauses, suggestions = _remedies(f, bound, "the weights are")
    return Finding(limit, f.share(limit), _text(line, clauses), tuple(suggestions),
                   f.share(limit))


_LABELS: dict[str, Callable[[Facts], str]] = {
    FLASH_WAIT: lambda f: "waiting for flash",
    EXPERT_COMPUTE: lambda f: "expert FFNs",
    ATTENTION_ROUTER_OVERHEAD: lambda f: ("attention, router, norms and bookkeeping" if "bookkeeping" in f.parts_ms
                                          else "attention, router, norms and per-layer overhead" if f.moe
                                          else "attention, FFN, norms and per-layer overhead"),
    LM_HEAD: lambda f: "the LM head",
}


def _flash_remedies(f: Facts) -> tuple[list[str], list[dict]]:
    bits = [o for o in (at_bits(f, b) for b in f.lower_bits()) if o]
    clauses = [_bits_phrase(f, bits)]
    suggestions = list(bits)
    if f.moe and f.capacity < f.total_experts:
        every = cache_mb_for(f, f.total_experts)
        suggestions.append(every)
        if every["fits_budget"]:  # one that does not is no way out on this device
            clauses.append(f"--cache-mb {every['value']:g} holds all {f.total_experts} experts "
                           f"(peak DRAM {_num(every['peak_dram_mb'])} MB)")
    return clauses, suggestions


@rule("dominant_part")
def dominant_part(f: Facts) -> Finding | None:
    """(a) The largest part of TPOT (flash wait, expert FFNs, attention/router/norms/overhead, LM head)
    with its share, and what shrinks it."""
    limit = max(GROUPS, key=lambda g: f.groups_ms[g])
    line = f"{_LABELS[limit](f)}: {_of_tpot(f, limit)}"
    if limit == FLASH_WAIT:
        line += f", hit rate {f.hit_rate or 0:.2f}, {_num(f.result.get('flash_mb_per_token') or 0)} MB read per token"
        clauses, suggestions = _flash_remedies(f)
    elif limit == EXPERT_COMPUTE:
        bound = _bound(f, ("expert_compute",), ("expert_dram",))
        line += f", bound by {bound}" if bound else ""
        clauses, suggestions = _remedies(f, bound, "they are")
    elif limit == ATTENTION_ROUTER_OVERHEAD:
        overhead = f.parts_ms.get("layer_overhead", 0.0)
        bound = _bound(f, ("nonexpert_compute",), ("nonexpert_dram",))
        if overhead > f.groups_ms[limit] / 2:
            line += f", mostly the profile's fixed per-layer overhead ({_num(overhead)} ms per token)"
            clauses, suggestions = [], []
        else:
            line += f", bound by {bound}" if bound else ""
            clauses, suggestions = _remedies(f, bound, "its weights are", wd=False)
            if bound == "DRAM bandwidth":
                clauses.append("a shorter --context-len reads less KV cache")
    else:
        clauses, suggestions = _remedies(f, None, "its weights are", wd=False)
    return Finding(limit, f.share(limit), _text(line, clauses),
                   tuple(suggestions), f.share(limit))


@rule("near_budget")
def near_budget(f: Facts) -> Finding | None:
    """(d) Peak DRAM within 5% of the app budget, for a cache not sized from the budget (one that
    is sized from it fills it by design): a larger cache or more bits would not fit."""
    peak, budget = f.peak_dram_mb, f.budget_mb
    if (peak is None or budget is None or f.sizing.cache_from == BUDGET or not NEAR_BUDGET * budget <= peak <= budget):
        return None
    line = (f"peak DRAM is {_num(peak)} MB, {_pct(peak / budget)} of the {f.inputs['profile']} app budget of "
            f"{_num(budget)} MB: a larger cache or more bits would not fit")
    return Finding(DRAM_BUDGET, 0.0, _sentence(line))


THROTTLE = "sustained_load"  # the limit of a finding about throttling: no time group, the whole token slows


@rule("sustained_load")
def sustained_load(f: Facts) -> Finding | None:
    """(e) A throttled profile (its `throttle` section) that reached its steady state slower than its first
    minute: weighed by the share of a steady-state token that the slowdown adds. Suggests idle between
    requests (`--idle-gap-s`), in which the device cools."""
    throttle = f.result.get("throttle") or {}
    first, steady = throttle.get("tpot_first_minute_ms"), throttle.get("tpot_steady_ms")
    if first is None or steady is None or steady <= first:
        return None
    line = (f"sustained load slows {f.inputs['profile']}: TPOT {_num(first)} ms in the first minute, {_num(steady)} ms "
            f"at the steady state (from {_num(throttle['steady_from_s'])} s); idle between requests "
            "(--idle-gap-s) lets it cool")
    return Finding(THROTTLE, (steady - first) / steady, _sentence(line), ({"flag": "--idle-gap-s", "value": None},))


# ----------------------------------------------------------------------------- the verdict

def _as_json(finding: Finding) -> dict:
    return {**asdict(finding), "suggestions": list(finding.suggestions)}


def verdict(result: dict, sizing: Sizing | None = None) -> dict:
    """What limits the run and what would change it (the module docstring): computed from `result`,
    a result dict without its verdict, and `sizing`, what the result does not echo."""
    f = Facts.of(result, sizing)
    if f is None:
        return {"limit": None, "share": None, "parts": {}, "lines": [], "findings": [], "suggestions": []}
    found = [replace(finding, rule=name) for name, check in RULES.items() if (finding := check(f)) is not None]
    shown: list[Finding] = []
    for finding in sorted(found, key=lambda finding: -finding.weight):  # stable: registry order breaks ties
        if finding.limit not in {s.limit for s in shown} and len(shown) < MAX_LINES:
            shown.append(finding)
    limit = max(GROUPS, key=lambda g: f.groups_ms[g])
    return {
        "limit": limit,
        "share": f.share(limit),
        "parts": {group: f.share(group) for group in GROUPS},
        "lines": [finding.line for finding in shown],
        "findings": [_as_json(finding) for finding in shown],
        "suggestions": [suggestion for finding in shown for suggestion in finding.suggestions],
    }
