"""`belady` is the offline optimum of the simulator's own execution model, checked exactly.

The model (docs/simulator.md, "Cache"): every miss is loaded into the cache; a decode step's k
experts must be resident together (the router chose them all before the first read), a prefill
step streams its experts one at a time. For that model the fewest flash loads any schedule can
achieve is found here by exhaustive search over cache states on small workloads, with no reference
to the simulator's code, and compared with what the simulator's `belady` does. The optimum of the
bare access stream (which may evict an expert its own step still needs) is a different, lower
number; it is not a schedule this execution model can run.
"""

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.inputs.synthetic import trace_from_experts
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import access_stream

N_LAYERS, N_EXPERTS, TOP_K = 2, 5, 2


def optimal_loads(steps: list[tuple[bool, list[int]]], capacity: int) -> int:
    """Fewest loads over every eviction schedule of (decode?, keys) steps (dynamic programming over
    the cache's contents)."""
    best: dict[frozenset, int] = {frozenset(): 0}
    for decode, keys in steps:
        groups = [keys] if decode else [[key] for key in keys]  # what must be resident together
        for group in groups:
            need = set(group)
            following: dict[frozenset, int] = {}
            for cache, cost in best.items():
                missing = need - cache
                evictable = sorted(cache - need)
                overflow = max(len(cache) + len(missing) - capacity, 0)
                for victims in combinations(evictable, overflow):
                    state = frozenset((cache - set(victims)) | need)
                    if following.get(state, 1 << 30) > cost + len(missing):
                        following[state] = cost + len(missing)
            best = following
    return min(best.values())


routing = st.lists(st.lists(st.lists(st.integers(0, N_EXPERTS - 1), min_size=TOP_K, max_size=TOP_K, unique=True),
                            min_size=N_LAYERS, max_size=N_LAYERS), min_size=6, max_size=14)


def loads(result: dict) -> int:
    accesses = result["accesses"]
    return accesses["miss"] + accesses["prefill_miss"] + result["prefetch"]["issued"]


@settings(max_examples=60, deadline=None)
@given(experts=routing, capacity=st.integers(TOP_K, N_LAYERS * N_EXPERTS - 1), prompt=st.integers(1, 3))
def test_belady_loads_what_an_exhaustive_search_finds_optimal(experts, capacity, prompt, tiny_profile, tiny_arch):
    trace = trace_from_experts(experts, n_experts=N_EXPERTS)
    config = RunConfig(policy="belady", cache_experts=capacity, prompt_tokens=prompt, warmup_fraction=0.0)
    arch, profile = tiny_arch(N_LAYERS, N_EXPERTS, TOP_K), tiny_profile()
    scenario = prepare(profile, trace, arch, config)
    optimum = optimal_loads(access_stream(scenario.workload).steps(), scenario.cache_capacity)
    assert loads(run(profile, trace, arch, config)) == optimum
    for policy in ("lru", "lfu", "pinned"):  # no demand-only policy needs fewer loads
        other = RunConfig(policy=policy, cache_experts=capacity, prompt_tokens=prompt, warmup_fraction=0.0)
        assert loads(run(profile, trace, arch, other)) >= optimum
    for prefetch in ("next-layer", "oracle"):  # nor does any policy with a prefetcher
        for policy in ("lru", "belady"):
            other = RunConfig(policy=policy, prefetch=prefetch, cache_experts=capacity, prompt_tokens=prompt,
                              warmup_fraction=0.0)
            assert loads(run(profile, trace, arch, other)) >= optimum


def test_the_search_knows_a_step_must_fit_together():
    """A step's pair stays co-resident: the bare stream 0 1 0 2 1 2 needs only 3 loads at 2 entries
    (load 2 over 0, whose next use is never), but the step [0, 2] still computes with 0."""
    steps = [(True, [0, 1]), (True, [0, 2]), (True, [1, 2])]
    assert optimal_loads(steps, 2) == 4  # 0 1 | 2 over 1 | 1 over 0
    assert optimal_loads(steps, 3) == 3
