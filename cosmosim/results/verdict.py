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

What-if arithmetic (`at_bits`, `capacity`), from the result's own inputs and memory parts, the way
`cosmosim.scenario.build.resolve_cache` sizes a cache, so that an actual run at the suggested setting
reports the same figures (tests/test_verdict.py runs it):
- bytes at b' bits = ceil(bytes × b' / b), for one expert and for the resident weights
  (`expert_mb`, `memory_mb.resident_weights`); exact going down from the run's bit-width, since the
  counter is ceil(parameters × bits / 8). The KV cache and activations are 16-bit: unchanged.
- the cache at b': a cache sized from the app budget holds floor((budget − resident' − KV − activations)
  / expert bytes'); a `--cache-mb` one floor(MB / expert bytes'); a `--cache-experts` one, or a policy
  that sizes its own cache (`kactive`: k per layer), the same count; then floored to whole per-layer
  partitions and capped at every expert. Fewer than top_k experts (per partition): no such run.
- peak DRAM at b' = resident' + cache' × expert bytes' + KV + activations: the cache full.
- one token's working set = decode accesses / decode tokens (= layers × top_k).
What the result does not echo comes from the caller as a `Sizing` (the app budget, the layers and
top_k, how the cache was sized, the expert shape for WD); without one, what-ifs are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from cosmosim.device.policies import POLICIES
from cosmosim.inputs.arch import WEIGHT_BITS
from cosmosim.results.catalog import (
    ATTENTION_ROUTER_OVERHEAD,
    BY_KEY,
    EXPERT_COMPUTE,
    FLASH_WAIT,
    LM_HEAD,
    MEMORY_GROUP,
    TIME_GROUP,
)
from cosmosim.units import MB

MAX_LINES = 2
DRAM_BUDGET = "dram_budget"  # the limit of a finding about peak DRAM against the app budget
GROUPS = (FLASH_WAIT, EXPERT_COMPUTE, ATTENTION_ROUTER_OVERHEAD, LM_HEAD)
ALL_CACHED_HIT_RATE = 0.99  # rule all_cached: at or above this hit rate flash is (nearly) idle
NEAR_BUDGET = 0.95  # rule near_budget: peak DRAM at or above this fraction of the app budget

# How the cache was sized (Sizing.cache_from), as `resolve_cache` does it.
BUDGET, CACHE_MB, CACHE_EXPERTS, POLICY = "budget", "cache_mb", "cache_experts", "policy"


@dataclass(frozen=True)
class Sizing:
    """What a what-if needs that the result does not echo, from the run's scenario
    (`cosmosim.results.summary.sizing_of`)."""

    app_budget_bytes: int  # the profile's app DRAM budget
    n_layers: int  # MoE layers (a dense model: its layers)
    top_k: int
    cache_from: str = BUDGET  # BUDGET (the default), CACHE_MB, CACHE_EXPERTS, or POLICY (kactive sizes its own)
    cache_mb: float | None = None  # the --cache-mb asked for, when cache_from is CACHE_MB
    per_layer: bool = False  # the cache is split into equal per-layer partitions
    d_model: int | None = None  # the expert shape, for the WD what-if (None: dense)
    ffn_hidden: int | None = None
    wd_rank: int | None = None  # None: full-rank experts


@dataclass(frozen=True)
class Finding:
    limit: str  # what it blames: a time group (FLASH_WAIT, ...) or DRAM_BUDGET
    weight: float  # how much it matters (see the module docstring)
    line: str
    suggestions: tuple[dict, ...] = ()
    share: float | None = None  # the share of TPOT of `limit`, a time group
    rule: str = ""  # the registry's name, filled in by `verdict`


@dataclass(frozen=True)
class Facts:
    """A result dict, parsed once for the rules."""

    result: dict
    sizing: Sizing | None
    tpot_ms: float
    parts_ms: dict[str, float]  # every time part of the breakdown
    groups_ms: dict[str, float]  # the parts summed by group (GROUPS)
    moe: bool
    bits: int
    capacity: int  # experts the cache holds
    total_experts: int
    working_set: int  # experts one decode token reads: layers × top_k
    hit_rate: float | None
    expert_bytes: int
    memory: dict[str, int] | None = field(default=None)  # bytes by part (des, analytic); None: not reported

    def share(self, group: str) -> float:
        return self.groups_ms.get(group, 0.0) / self.tpot_ms

    @property
    def inputs(self) -> dict:
        return self.result["inputs"]

    @property
    def per_layer(self) -> bool:
        policy = POLICIES.get(self.inputs.get("policy"))
        return bool(self.inputs.get("per_layer_cache")) or bool(policy and policy.per_layer_partitions)

    @property
    def global_cache(self) -> bool:
        """One cache over all layers, sized by the user or the budget (lru, lfu, belady, pinned)."""
        policy = POLICIES.get(self.inputs.get("policy"))
        return self.moe and not self.per_layer and bool(policy and policy.needs_cache_size)

    @property
    def peak_dram_mb(self) -> float | None:
        return self.result.get("peak_dram_mb")

    @property
    def budget_mb(self) -> float | None:
        return self.sizing.app_budget_bytes / MB if self.sizing else None

    def lower_bits(self) -> list[int]:
        return sorted((b for b in WEIGHT_BITS if b < self.bits), reverse=True)

    @classmethod
    def of(cls, result: dict, sizing: Sizing | None) -> Facts | None:
        tpot = (result.get("tpot_ms") or {}).get("mean")
        parts = dict((result.get("breakdown") or {}).get("time_ms_per_token") or {})
        if tpot is None or not math.isfinite(tpot) or tpot <= 0 or not parts:
            return None
        groups = dict.fromkeys(GROUPS, 0.0)
        for part, ms in parts.items():
            groups[BY_KEY[f"{TIME_GROUP}.{part}"].compared_as] += ms
        inputs = result["inputs"]
        tokens = inputs.get("decode_tokens") or 0
        accesses = (result.get("accesses") or {}).get("decode") or 0
        memory = result.get(MEMORY_GROUP)
        return cls(result=result, sizing=sizing, tpot_ms=tpot, parts_ms=parts, groups_ms=groups,
                   moe=inputs.get("total_experts", 0) > 0, bits=inputs["weight_bits"],
                   capacity=inputs.get("cache_experts") or 0, total_experts=inputs.get("total_experts") or 0,
                   working_set=round(accesses / tokens) if tokens else 0, hit_rate=result.get("hit_rate"),
                   expert_bytes=round(inputs.get("expert_mb", 0) * MB),
                   memory={part: round(mb * MB) for part, mb in memory.items()} if memory else None)


# ----------------------------------------------------------------------------- what-if arithmetic

def _scaled(n_bytes: int, bits: int, from_bits: int) -> int:
    return -(-n_bytes * bits // from_bits)  # ceil(bytes × bits / from_bits), in integers


def capacity(f: Facts, expert_bytes: int, fixed_bytes: int) -> int | None:
    """Experts the cache would hold with experts of `expert_bytes` and `fixed_bytes` resident
    (weights + KV + activations); None where the scenario would refuse the run (fewer than top_k)."""
    s = f.sizing
    if not f.moe:
        return 0
    if s.cache_from == POLICY:
        cap = f.working_set  # kactive: top_k per layer
    elif s.cache_from == CACHE_EXPERTS:
        cap = f.capacity
    elif s.cache_from == CACHE_MB:
        cap = int(s.cache_mb * MB // expert_bytes)
    else:
        cap = max(int((s.app_budget_bytes - fixed_bytes) // expert_bytes), 0)
    if f.per_layer and cap % s.n_layers:
        cap -= cap % s.n_layers
    cap = min(cap, f.total_experts)
    per_partition = cap // s.n_layers if f.per_layer else cap
    return cap if per_partition >= s.top_k else None


def _fixed(f: Facts, resident: int) -> int:
    return resident + f.memory["kv_cache"] + f.memory["activations"]


def at_bits(f: Facts, bits: int) -> dict | None:
    """The suggestion `--weight-bits bits`: the cache it gives and its peak DRAM (cache full);
    None without the memory parts or a Sizing."""
    if f.sizing is None or f.memory is None:
        return None
    expert = _scaled(f.expert_bytes, bits, f.bits)
    resident = _scaled(f.memory["resident_weights"], bits, f.bits)
    cap = capacity(f, expert, _fixed(f, resident))
    peak = None if cap is None else (_fixed(f, resident) + cap * expert) / MB
    return {"flag": "--weight-bits", "value": bits, "cache_experts": cap, "expert_mb": expert / MB,
            "peak_dram_mb": peak, "fits_budget": None if peak is None else peak <= f.budget_mb}


def _peak_with(f: Facts, experts: int) -> float:
    """Peak DRAM (MB) at this run's bits with `experts` in the cache."""
    return (_fixed(f, f.memory["resident_weights"]) + experts * f.expert_bytes) / MB


def _cache_mb_for(f: Facts, experts: int) -> dict:
    """The suggestion `--cache-mb X` that holds `experts` (X rounded up to 0.1 MB)."""
    value = math.ceil((experts * f.expert_bytes + 1) / (MB / 10)) / 10
    peak = _peak_with(f, experts) if f.memory else None
    return {"flag": "--cache-mb", "value": value, "cache_experts": experts, "peak_dram_mb": peak,
            "fits_budget": None if peak is None or f.budget_mb is None else peak <= f.budget_mb}


def _wd(f: Facts) -> dict | None:
    """WD experts at rank d/2 (CoSMoEs' choice): 3 r (d + f) instead of 3 d f parameters, so each
    expert's bytes and FLOPs scale by r (d + f) / (d f)."""
    s = f.sizing
    if s is None or not f.moe or s.wd_rank is not None or not s.d_model or not s.ffn_hidden:
        return None
    rank = s.d_model // 2
    ratio = rank * (s.d_model + s.ffn_hidden) / (s.d_model * s.ffn_hidden)
    return {"flag": None, "value": None, "change": "wd_rank", "wd_rank": rank, "expert_scale": ratio,
            "expert_mb": f.expert_bytes * ratio / MB}


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
    fixed = _fixed(f, f.memory["resident_weights"])
    most = int((f.sizing.app_budget_bytes - fixed) // f.expert_bytes) if f.moe and f.expert_bytes else -1
    if f.global_cache and most >= f.sizing.top_k:
        suggestions.append({"flag": "--cache-experts", "value": most, "cache_experts": most,
                            "peak_dram_mb": _peak_with(f, most)})
    clauses = [f"at --weight-bits {fitting['value']} it needs {_num(fitting['peak_dram_mb'])} MB" if fitting else "",
               f"--cache-experts {most} is the most that fits" if len(suggestions) > bool(fitting) else ""]
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
    if f.sizing and f.memory:
        kactive = {"flag": "--policy", "value": "kactive", "cache_experts": f.working_set,
                   "peak_dram_mb": _peak_with(f, f.working_set)}
        suggestions += [kactive, _cache_mb_for(f, f.working_set)]
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
    wd = _wd(f) if wd else None
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
        every = _cache_mb_for(f, f.total_experts)
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
