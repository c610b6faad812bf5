"""Cache policies on hand-worked access sequences, and properties on random ones."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.device.cache import ExpertCache
from cosmosim.device.policies import POLICIES, PolicyContext
from cosmosim.workload.stream import next_use_of

A, B, C, D = 0, 1, 2, 3


def replay(policy: str, keys: list[int], capacity: int, *, n_experts: int = 4, n_layers: int = 1, top_k: int = 1,
           usage=None, per_layer: bool = False) -> str:
    """Serve single-key steps through the cache; 'H' for a hit, 'M' for a miss."""
    keys_array = np.asarray(keys)
    usage = np.zeros(n_layers * n_experts, dtype=np.int64) if usage is None else np.asarray(usage)
    context = PolicyContext(capacity=capacity, n_experts=n_experts, top_k=top_k,
                            next_use=next_use_of(keys_array), warmup_usage=usage)
    cache = ExpertCache(POLICIES[policy], capacity, n_layers, context, per_layer=per_layer)
    out = []
    for clock, key in enumerate(keys):
        if key in cache:
            out.append("H")
        else:
            cache.insert(key, clock, 0.0, {key})
            out.append("M")
        cache.touch(key, clock)
    return "".join(out)


def test_lru_evicts_least_recently_used():
    # A B A C: C evicts B (A was used more recently); B evicts A; A evicts C.
    assert replay("lru", [A, B, A, C, B, A], capacity=2) == "MMHMMM"


def test_belady_evicts_furthest_next_use():
    # At C, A is next used at 5 and B at 4: evict A, so B hits.
    assert replay("belady", [A, B, A, C, B, A], capacity=2) == "MMHMHM"


def test_lfu_counts_survive_eviction_and_ties_go_to_least_recent():
    # At C: A has 2 uses, B 1 -> evict B. At B: C has 1 (A 2) -> evict C; B's count is 2 now.
    # At D: A 2 (last 2), B 2 (last 4) -> tie on count, evict A, the least recent.
    assert replay("lfu", [A, B, A, C, B, D], capacity=2) == "MMHMMM"
    assert replay("lfu", [A, B, A, C, B, A], capacity=2) == "MMHMMH"


def test_pinned_keeps_the_most_used_experts():
    # Capacity 2, top_k 1: one pinned slot for B (most used in warm-up), one LRU slot for the rest.
    usage = [1, 9, 0, 0]
    assert replay("pinned", [A, B, A, C, B, A], capacity=2, usage=usage) == "MMHMHM"
    assert replay("lru", [B, A, C, B], capacity=2) == "MMMM"
    assert replay("pinned", [B, A, C, B], capacity=2, usage=usage) == "MMMH"


def test_kactive_swaps_on_every_change_per_layer():
    # Two layers, top-1: layer 0 uses A A B, layer 1 uses its expert 0 every time.
    keys = [A, 4 + A, A, 4 + A, B, 4 + A]
    assert replay("kactive", keys, capacity=2, n_layers=2, per_layer=True) == "MMHHMH"


def test_cache_smaller_than_top_k_is_refused():
    context = PolicyContext(capacity=1, n_experts=4, top_k=2, next_use=np.zeros(0, dtype=np.int64),
                            warmup_usage=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="top_k=2"):
        ExpertCache(POLICIES["lru"], 1, 1, context)


sequences = st.lists(st.integers(0, 7), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(keys=sequences, capacity=st.integers(1, 8))
def test_belady_never_misses_more_than_lru_or_lfu(keys, capacity):
    belady = replay("belady", keys, capacity, n_experts=8).count("M")
    assert belady <= replay("lru", keys, capacity, n_experts=8).count("M")
    assert belady <= replay("lfu", keys, capacity, n_experts=8).count("M")


@settings(max_examples=60, deadline=None)
@given(keys=sequences, capacity=st.integers(1, 7))
def test_more_cache_never_hurts_belady(keys, capacity):
    assert replay("belady", keys, capacity + 1, n_experts=8).count("M") <= replay("belady", keys, capacity, n_experts=8).count("M")


def test_belady_prices_a_wrong_prefetch_by_its_true_next_use():
    # Stream A B D B A, cache of 3. After A and B, a prefetch brings C, which is never used: at D's
    # miss Belady must evict C (never needed), not A (needed at clock 4).
    keys = np.array([A, B, D, B, A])
    context = PolicyContext(capacity=3, n_experts=4, top_k=1, next_use=next_use_of(keys),
                            warmup_usage=np.zeros(4, dtype=np.int64), access_key=keys)
    cache = ExpertCache(POLICIES["belady"], 3, 1, context)
    for clock in (0, 1):
        cache.insert(int(keys[clock]), clock, 0.0, {int(keys[clock])})
        cache.touch(int(keys[clock]), clock)
    cache.insert(C, 2, 0.0, set(), prefetch=True)
    assert cache.insert(D, 2, 0.0, {D}) == C


@pytest.mark.parametrize("seed, n", [(0, 0), (1, 1), (2, 50), (3, 5000)])
def test_next_use_is_the_next_index_of_the_same_key(seed, n):
    """Against a plain scan forward from each access."""
    keys = np.random.default_rng(seed).integers(0, 12, n)
    expected = [next((j for j in range(i + 1, n) if keys[j] == keys[i]), n) for i in range(n)]
    assert next_use_of(keys).tolist() == expected
