"""Routing-locality statistics: hand-worked traces, brute-force references, random baselines, input errors."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.errors import InputError
from cosmosim.inputs.locality import (
    delta_uniform,
    expert_usage,
    exrep,
    exrep_from_usage,
    format_summary,
    locality_summary,
    random_routing,
    reuse_distances,
    reuse_histogram,
    sch,
    srp,
    srp_random,
)


def trace(tokens: list[list[int]], lengths: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-layer trace from per-token expert lists; `lengths` splits it into sequences."""
    experts = np.array(tokens, dtype=np.int16)[:, None, :]
    lengths = lengths or [len(tokens)]
    return experts, np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)


@st.composite
def traces(draw, max_layers: int = 2):
    """(experts, positions, n_experts): a few sequences of routing that repeats the last token often."""
    n_experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(3, n_experts)))
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    n_layers = draw(st.integers(1, max_layers))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    experts = random_routing((sum(lengths), n_layers, top_k), n_experts, int(rng.integers(2**32)))
    repeat = rng.random(experts.shape[:2]) < draw(st.floats(0, 0.9))
    for t in range(1, len(experts)):
        experts[t, repeat[t]] = experts[t - 1, repeat[t]]
    positions = np.concatenate([np.arange(n) for n in lengths])
    return experts, positions, n_experts


def sequences(positions):
    starts = list(np.flatnonzero(positions == 0))
    return list(zip(starts, starts[1:] + [len(positions)]))


# --- hand-worked traces --------------------------------------------------------------------------

def test_constant_routing_is_perfectly_local():
    experts, positions = trace([[3, 5]] * 20)
    assert exrep(experts, positions)[0] == 0
    assert srp(experts, positions, 8, m=4)[0] == pytest.approx(100)
    for rho in (1, 2, 4):
        assert sch(experts, positions, 8, rho=rho)[0] == pytest.approx(100)
    # ½ (2 |1/2 - 1/8| + 6 |0 - 1/8|) = 0.75
    assert delta_uniform(experts, 8)[0] == pytest.approx(0.75)
    np.testing.assert_allclose(expert_usage(experts, 8)[0], [0, 0, 0, 0.5, 0, 0.5, 0, 0])
    # Stream 3 5 3 5 ...: after the two first accesses, one other expert sits between reuses.
    assert reuse_distances(experts, positions, 8)[0].tolist() == [-1, -1] + [1] * 38


def test_alternating_pairs():
    experts, positions = trace([[0, 1], [2, 3]] * 6)
    assert exrep(experts, positions)[0] == 1
    # Every 2-token window uses experts 0..3 once: α = 1 predicts all four for both tokens, so
    # precision 4/8, recall 1, F1 2/3; α = 2 predicts nothing.
    assert srp(experts, positions, 8, m=2)[0] == pytest.approx(200 / 3)
    assert srp(experts, positions, 8, m=4)[0] == pytest.approx(200 / 3)
    # ρ = 1, m = 1 (no look-ahead: least recently used goes): only the warm fill of token 0 hits.
    assert sch(experts, positions, 8, rho=1, m=1)[0] == pytest.approx(100 * 2 / 24)
    # ρ = 1, m = 16: an expert just used has one use fewer left in the window than its partner, so
    # from token 2 on the cache keeps expert 3 across (0, 1) tokens and 3 hits at tokens 3, 5, .., 11.
    assert sch(experts, positions, 8, rho=1, m=16)[0] == pytest.approx(100 * 7 / 24)
    # ρ = 2: all four experts fit.
    assert sch(experts, positions, 8, rho=2)[0] == pytest.approx(100)


def test_sch_evicts_the_expert_least_used_in_the_window():
    experts, positions = trace([[0], [1], [2], [0]])
    # Capacity 2. Tokens 0, 1 fill free slots (hits). At token 2, window [2, 6) still uses 0 once and
    # 1 never: SCH evicts 1 (LRU would evict 0) and token 3 hits.
    assert sch(experts, positions, 3, rho=2, m=4)[0] == pytest.approx(75)
    # m = 1 sees no future: 0 and 1 tie at zero uses and the least recently used (0) goes, as moe-lrc.
    assert sch(experts, positions, 3, rho=2, m=1)[0] == pytest.approx(50)


def test_a_token_hits_against_the_cache_before_it():
    # Capacity 2, m = 3, cache {0, 1} after token 0. Token 1 = (2, 1): loading 2 evicts 1 (one use
    # left in the window) rather than 0 (two), yet 1 still hits: all experts of a token are judged
    # against the cache before the token (moe-lrc); 1 is reloaded, evicting 2. Token 2 = (0, 3): 0
    # hits, 3 evicts 1. Token 3 = (0, 4): 0 hits. Hits 2 + 1 + 1 + 1 of 8.
    experts, positions = trace([[0, 1], [2, 1], [0, 3], [0, 4]])
    assert sch(experts, positions, 5, rho=1, m=3)[0] == pytest.approx(62.5)


def test_nothing_crosses_a_sequence_boundary():
    experts, positions = trace([[0, 1]] * 5 + [[2, 3]] * 5, lengths=[5, 5])
    assert exrep(experts, positions)[0] == 0
    assert srp(experts, positions, 4, m=5)[0] == pytest.approx(100)
    assert sch(experts, positions, 4, rho=1)[0] == pytest.approx(100)
    distances = reuse_distances(experts, positions, 4)[0]
    assert distances[10:12].tolist() == [-1, -1]
    assert reuse_histogram(distances[None], 4).first_access.tolist() == [4]


def test_exrep_per_layer():
    experts = np.array([[[0, 1], [0, 1]], [[0, 2], [4, 5]]])
    per_layer = exrep(experts, np.arange(2))[1]
    np.testing.assert_allclose(per_layer, [0.5, 1.0])


def test_worked_example_of_the_doc():
    """docs/metrics-locality.md works this trace by hand: E = 4, K = 2, tokens {0,1} {0,2} {0,2} {3,1}."""
    experts, positions = trace([[0, 1], [0, 2], [0, 2], [3, 1]])
    assert exrep(experts, positions)[0] == pytest.approx(0.5)
    np.testing.assert_allclose(expert_usage(experts, 4), [[0.375, 0.25, 0.25, 0.125]])
    assert delta_uniform(experts, 4)[0] == pytest.approx(0.125)
    distances = reuse_distances(experts, positions, 4)
    assert distances.tolist() == [[-1, -1, 1, -1, 1, 1, -1, 3]]
    assert reuse_histogram(distances, 4).lru_hit_rate(2)[0] == pytest.approx(3 / 8)
    assert srp(experts, positions, 4, m=2)[0] == pytest.approx(80)
    assert sch(experts, positions, 4, rho=1, m=2)[0] == pytest.approx(62.5)


# --- brute-force references ----------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(traces())
def test_exrep_is_cosmoes_h_norm(case):
    """⌊H/2⌋ / (K · transitions), H counting every expert that left or came (CoSMoEs Eq. for BlES)."""
    experts, positions, n_experts = case
    top_k = experts.shape[2]
    for layer in range(experts.shape[1]):
        flips, transitions = 0, 0
        for start, stop in sequences(positions):
            for t in range(start + 1, stop):
                before, after = set(experts[t - 1, layer]), set(experts[t, layer])
                flips += len(before ^ after)
                transitions += 1
        if transitions:
            assert exrep(experts, positions)[1][layer] == pytest.approx((flips // 2) / (top_k * transitions))


@settings(max_examples=60, deadline=None)
@given(traces())
def test_reuse_distances_match_a_scan(case):
    experts, positions, n_experts = case
    top_k = experts.shape[2]
    distances = reuse_distances(experts, positions, n_experts)
    for layer in range(experts.shape[1]):
        for start, stop in sequences(positions):
            stream = list(experts[start:stop, layer].ravel())
            for n, x in enumerate(stream):
                earlier = [i for i in range(n) if stream[i] == x]
                expected = len(set(stream[earlier[-1] + 1:n])) if earlier else -1
                assert distances[layer, start * top_k + n] == expected


@settings(max_examples=60, deadline=None)
@given(traces(), st.integers(1, 6))
def test_lru_hit_rate_from_reuse_distances(case, capacity):
    experts, positions, n_experts = case
    histogram = reuse_histogram(reuse_distances(experts, positions, n_experts), n_experts)
    for layer in range(experts.shape[1]):
        hits = 0
        for start, stop in sequences(positions):
            recent: list[int] = []  # most recent last
            for x in experts[start:stop, layer].ravel():
                hits += x in recent
                recent = [y for y in recent if y != x][-(capacity - 1):] + [x] if capacity > 1 else [x]
        assert histogram.lru_hit_rate(capacity)[1][layer] == pytest.approx(hits / experts[:, layer].size)


@settings(max_examples=60, deadline=None)
@given(traces(), st.integers(1, 5))
def test_srp_matches_window_enumeration(case, m):
    experts, positions, n_experts = case
    top_k = experts.shape[2]
    if not any(stop - start >= m for start, stop in sequences(positions)):
        with pytest.raises(InputError):
            srp(experts, positions, n_experts, m)
        return
    overall, per_layer = srp(experts, positions, n_experts, m)
    pooled = np.zeros((3, m))
    for layer in range(experts.shape[1]):
        totals = np.zeros((3, m))  # matches, predicted, actual; by α = 1..m
        for start, stop in sequences(positions):
            for s in range(start, stop - m + 1):
                uses = np.bincount(experts[s:s + m, layer].ravel(), minlength=n_experts)
                for alpha in range(1, m + 1):
                    chosen = uses >= alpha
                    totals[:, alpha - 1] += [uses[chosen].sum(), m * chosen.sum(), m * top_k]
        pooled += totals
        assert per_layer[layer] == pytest.approx(100 * max(2 * totals[0] / (totals[1] + totals[2])))
    assert overall == pytest.approx(100 * max(2 * pooled[0] / (pooled[1] + pooled[2])))


def reference_segment_cache(stream_by_token: np.ndarray, capacity: int, m: int) -> int:
    """Hits of one layer and one sequence, simulated access by access with a plain set."""
    cache: set[int] = set()
    last_use: dict[int, int] = {}
    hits, clock = 0, 0
    for t, token in enumerate(stream_by_token):
        before = set(cache)
        for slot, x in enumerate(token):
            free = x not in cache and len(cache) < capacity
            hits += x in before or free
            if x not in cache and not free:
                upcoming = list(token[slot + 1:]) + list(stream_by_token[t + 1:t + m].ravel())
                cache.remove(min(cache, key=lambda y: (upcoming.count(y), last_use[y])))
            cache.add(x)
            clock += 1
            last_use[x] = clock
    return hits


@settings(max_examples=80, deadline=None)
@given(traces(), st.integers(1, 6), st.integers(1, 6))
def test_sch_matches_a_plain_simulation(case, capacity, m):
    experts, positions, n_experts = case
    top_k = experts.shape[2]
    per_layer = sch(experts, positions, n_experts, rho=capacity / top_k, m=m)[1]
    for layer in range(experts.shape[1]):
        hits = sum(reference_segment_cache(experts[a:b, layer], capacity, m) for a, b in sequences(positions))
        assert per_layer[layer] == pytest.approx(100 * hits / experts[:, layer].size)


@settings(max_examples=40, deadline=None)
@given(traces(), st.integers(1, 6))
def test_sch_grows_with_the_cache(case, m):
    """A priority cache with size-independent priorities is a stack algorithm: inclusion holds."""
    experts, positions, n_experts = case
    top_k = experts.shape[2]
    rates = [sch(experts, positions, n_experts, rho=c / top_k, m=m)[0] for c in range(1, n_experts + 1)]
    assert all(a <= b + 1e-9 for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(100)


# --- random baselines ----------------------------------------------------------------------------

def test_random_routing_is_uniform_top_k():
    experts = random_routing((4000, 3, 2), 8, seed=7)
    assert experts.shape == (4000, 3, 2)
    assert (experts[..., 0] != experts[..., 1]).all()
    np.testing.assert_array_equal(experts, random_routing((4000, 3, 2), 8, seed=7))
    np.testing.assert_allclose(expert_usage(experts, 8), 1 / 8, atol=0.01)


@pytest.mark.parametrize("top_k,n_experts", [(2, 8), (1, 4), (3, 16)])
def test_random_baselines_match_closed_forms(top_k, n_experts):
    experts = random_routing((20000, 2, top_k), n_experts, seed=1)
    positions = np.arange(20000) % 500
    # E|S_t ∩ S_{t-1}| = K²/E (hypergeometric mean), so ExRep = 1 - K/E; not 1 - (K-1)/(E-1).
    assert exrep(experts, positions)[0] == pytest.approx(1 - top_k / n_experts, abs=0.01)
    assert srp(experts, positions, n_experts, m=16)[0] == pytest.approx(srp_random(16, top_k, n_experts), abs=0.5)


def test_exrep_from_usage_is_the_exrep_of_the_same_tokens_shuffled():
    """Skewed, sticky routing: shuffling the tokens keeps each layer's usage and removes the order, so
    the shuffled trace's ExRep (measured, Monte Carlo) is the closed form's; the ordered trace's is lower."""
    rng = np.random.default_rng(4)
    n_tokens, n_experts = 40000, 8
    weights = np.array([8, 4, 2, 1, 1, 1, 1, 1], float)
    sets = np.stack([rng.choice(n_experts, 2, replace=False, p=weights / weights.sum()) for _ in range(n_tokens // 20)])
    experts = sets[:, None, :].repeat(20, axis=0)  # [T, 1, 2]: each set held for 20 tokens
    positions = np.arange(n_tokens) % 400
    closed_form = exrep_from_usage(experts, n_experts)[0]
    shuffled = experts[rng.permutation(n_tokens)]
    assert exrep(shuffled, positions)[0] == pytest.approx(closed_form, abs=0.01)
    assert exrep(experts, positions)[0] < 0.1 < closed_form < 1 - 2 / n_experts  # order and usage both local
    always_the_same = np.tile([[[2, 5]]], (10, 3, 1))
    assert exrep_from_usage(always_the_same, n_experts)[1] == pytest.approx([0, 0, 0])
    assert exrep_from_usage(random_routing((20000, 2, 2), n_experts, seed=2), n_experts)[0] == pytest.approx(0.75, abs=0.005)


def test_srp_random_of_top2_of_8():
    # Per (window, expert), uses c ~ Binomial(4, 1/4); actual selections E[c] = 1. α = 1 predicts the
    # expert when c ≥ 1: matches 1, predicted 4·P(c ≥ 1); α = 2: matches 1 - P(c = 1), predicted
    # 4·P(c ≥ 2). F1 = 2·matches / (predicted + 1); α = 2 wins (56.5 % against 53.6 %).
    p1, p0 = 4 * 0.25 * 0.75**3, 0.75**4
    f1_alpha1 = 2 * 1 / (4 * (1 - p0) + 1)
    f1_alpha2 = 2 * (1 - p1) / (4 * (1 - p0 - p1) + 1)
    assert srp_random(4, 2, 8) == pytest.approx(100 * f1_alpha2, rel=1e-9)
    assert f1_alpha2 > f1_alpha1


# --- summary and input errors --------------------------------------------------------------------

def test_summary_is_json_ready_and_printable():
    experts, positions = trace([[0, 1], [0, 1], [2, 3]] * 10, lengths=[15, 15])
    summary = locality_summary(experts, positions, 8, m=4, rho=2, seed=3)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["exrep"]["random"] == pytest.approx(0.75)
    assert summary["exrep"]["value"] == pytest.approx(exrep(experts, positions)[0])
    assert summary["sch_percent"]["value"] == pytest.approx(sch(experts, positions, 8, 2, 4)[0])
    assert summary == locality_summary(experts, positions, 8, m=4, rho=2, seed=3)
    assert "SRP(m=4)" in format_summary(summary) and "ExRep from usage alone" in format_summary(summary)
    assert summary["exrep_from_usage"]["value"] == pytest.approx(exrep_from_usage(experts, 8)[0])


@pytest.mark.parametrize("experts,positions,call,field", [
    (np.zeros((3, 2)), np.arange(3), lambda e, p: exrep(e, p), "experts"),
    (np.zeros((3, 1, 2)), np.arange(3), lambda e, p: exrep(e, p), "experts"),  # float ids
    (np.array([[[0, 9]]]), [0], lambda e, p: sch(e, p, 8), "experts"),
    (np.array([[[1, 1]], [[0, 2]]]), [0, 1], lambda e, p: exrep(e, p), "experts"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 2], lambda e, p: exrep(e, p), "positions"),
    (np.array([[[0, 1]], [[0, 2]]]), [1, 2], lambda e, p: exrep(e, p), "positions"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 0], lambda e, p: exrep(e, p), "positions"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: sch(e, p, 8, rho=0.75), "rho"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: srp(e, p, 8, m=0), "m"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: srp(e, p, 8, m=3), "m"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: delta_uniform(e, 1), "experts"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: sch(e, p, 8, rho="2"), "rho"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: random_routing((2, 1), 8), "shape"),
    (np.array([[[0, 1]], [[0, 2]]]), [0, 1], lambda e, p: random_routing((2, 1, 2), 8, seed=-1), "seed"),
])
def test_bad_input_raises_one_line(experts, positions, call, field):
    with pytest.raises(InputError) as error:
        call(np.asarray(experts), np.asarray(positions))
    assert str(error.value).startswith(field + ":") and "\n" not in str(error.value)
