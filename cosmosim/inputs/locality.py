"""Routing-locality statistics of a routing trace: ExRep, ΔUni, usage, reuse distance, SRP, SCH.

Every function takes plain arrays (formulas, units and worked examples: docs/metrics.md (part 2)):

    experts    int [T, L, K]  expert ids per token and layer, by descending gate
    positions  int [T]        position of each token in its sequence; 0 starts a new sequence
    n_experts  E              experts per MoE layer

A "transition" is a pair of consecutive tokens of the same sequence; nothing is counted across a
sequence boundary, and every stateful statistic (reuse distance, SCH) starts afresh per sequence.
SRP and SCH follow the reference code of "Not All Models Suit Expert Offloading" (arXiv 2505.16056,
github.com/ljcleo/moe-lrc, src/30_srp_calc.py, 31_srp_refine.py, 41_sch_calc.py).
Each statistic has a random baseline: uniformly random top-K routing of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from cosmosim.errors import InputError

# --- input checks --------------------------------------------------------------------------------

def _check_trace(experts, positions, n_experts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 copies of (experts [T, L, K], positions [T]); InputError on the first fault."""
    experts = _check_experts(experts, n_experts)
    return experts, _check_positions(positions, experts.shape[0])


def _check_experts(experts, n_experts: int | None) -> np.ndarray:
    experts = np.asarray(experts)
    if experts.ndim != 3 or 0 in experts.shape:
        raise InputError(f"experts: shape {experts.shape}, expected a non-empty [tokens, layers, top_k] array")
    if not np.issubdtype(experts.dtype, np.integer):
        raise InputError(f"experts: dtype {experts.dtype}, expected an integer array of expert ids")
    experts = experts.astype(np.int64)
    upper = np.iinfo(np.int64).max if n_experts is None else _check_count("n_experts", n_experts)
    if experts.shape[2] > upper:
        raise InputError(f"experts: top_k {experts.shape[2]} exceeds n_experts {upper}")
    bad = np.argwhere((experts < 0) | (experts >= upper))
    if len(bad):
        t, layer, _ = bad[0]
        raise InputError(f"experts: id {experts[tuple(bad[0])]} at token {t}, layer {layer} is outside [0, {upper})")
    ordered = np.sort(experts, axis=2)
    repeated = np.argwhere(ordered[..., 1:] == ordered[..., :-1])
    if len(repeated):
        t, layer, _ = repeated[0]
        raise InputError(f"experts: token {t}, layer {layer} selects {experts[t, layer].tolist()}, "
                         f"expected {experts.shape[2]} distinct ids")
    return experts


def _check_positions(positions, n_tokens: int) -> np.ndarray:
    positions = np.asarray(positions)
    if positions.shape != (n_tokens,) or not np.issubdtype(positions.dtype, np.integer):
        raise InputError(f"positions: shape {positions.shape} dtype {positions.dtype}, expected int [{n_tokens}]")
    positions = positions.astype(np.int64)
    # Each position either starts a sequence (0) or continues the previous token's sequence.
    previous = np.concatenate(([-1], positions[:-1]))
    broken = np.flatnonzero((positions != 0) & (positions != previous + 1))
    if len(broken):
        t = broken[0]
        raise InputError(f"positions: {positions[t]} at token {t} after {previous[t]}, expected 0 or {previous[t] + 1}")
    return positions


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: {value!r}, expected a positive integer")
    return int(value)


def _sequences(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start token, length) of every sequence, in trace order."""
    starts = np.flatnonzero(positions == 0)
    return starts, np.diff(np.append(starts, len(positions)))


# --- switching and balance -----------------------------------------------------------------------

def exrep(experts, positions) -> tuple[float, np.ndarray]:
    """Expert replacement rate (CoSMoEs' H_norm) as a fraction: overall (mean of layers), per layer [L].

    Per transition t-1 -> t: |S_t \\ S_{t-1}| / K, averaged over transitions within sequences.
    """
    experts, positions = _check_trace(experts, positions)
    within = positions[1:] != 0
    if not within.any():
        raise InputError("positions: every sequence is one token long, expected at least one transition")
    top_k = experts.shape[2]
    # [T-1, L, K]: is expert k of token t also among the experts of token t-1?
    kept = (experts[1:, :, :, None] == experts[:-1, :, None, :]).any(axis=3)
    replaced = top_k - kept.sum(axis=2)
    per_layer = replaced[within].mean(axis=0) / top_k
    return float(per_layer.mean()), per_layer


def expert_usage(experts, n_experts: int) -> np.ndarray:
    """Share of each layer's expert selections that went to each expert, [L, E]; rows sum to 1."""
    experts = _check_experts(experts, n_experts)
    n_tokens, n_layers, top_k = experts.shape
    flat = experts + n_experts * np.arange(n_layers)[None, :, None]
    counts = np.bincount(flat.ravel(), minlength=n_layers * n_experts).reshape(n_layers, n_experts)
    return counts / (n_tokens * top_k)


def delta_uniform(experts, n_experts: int) -> tuple[float, np.ndarray]:
    """ΔUni as a fraction: mean over layers of ½ Σ_e |u_e − 1/E| (total-variation distance), and per layer [L]."""
    per_layer = 0.5 * np.abs(expert_usage(experts, n_experts) - 1 / n_experts).sum(axis=1)
    return float(per_layer.mean()), per_layer


def exrep_from_usage(experts, n_experts: int) -> tuple[float, np.ndarray]:
    """The ExRep a trace's expert usage alone implies, overall and per layer [L]: the expected ExRep of
    tokens drawn independently with the trace's per-layer usage, 1 - K·Σ_e u_e² (docs/metrics.md). What
    the trace's ExRep lies below it is owed to the order of its tokens; what this lies below 1 - K/E,
    to uneven usage."""
    top_k = _check_experts(experts, n_experts).shape[2]
    per_layer = 1 - top_k * (expert_usage(experts, n_experts) ** 2).sum(axis=1)
    return float(per_layer.mean()), per_layer


# --- reuse distance ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReuseHistogram:
    """Reuse distances counted per layer: counts[l, d] accesses at distance d (0..E-1); first accesses apart."""

    counts: np.ndarray  # int [L, E]
    first_access: np.ndarray  # int [L]

    @property
    def n_accesses(self) -> np.ndarray:
        return self.counts.sum(axis=1) + self.first_access

    def shares(self) -> tuple[np.ndarray, float]:
        """Overall share of accesses at each distance [E], and the share of first accesses."""
        total = self.n_accesses.sum()
        return self.counts.sum(axis=0) / total, float(self.first_access.sum() / total)

    def lru_hit_rate(self, capacity: int) -> tuple[float, np.ndarray]:
        """Hit rate of a per-layer LRU cache of `capacity` experts, started empty per sequence (cold
        misses count) and updated access by access: a reuse distance d hits iff d < capacity."""
        per_layer = self.counts[:, : _check_count("capacity", capacity)].sum(axis=1) / self.n_accesses
        return float(per_layer.mean()), per_layer


def reuse_distances(experts, positions, n_experts: int) -> np.ndarray:
    """Reuse distance of every access, [L, T*K] in stream order (token by token, gate order); -1 = first
    access of that expert in its sequence. Distance = distinct other experts of the layer accessed since
    the previous access to the same expert (= its depth in an LRU stack)."""
    experts, positions = _check_trace(experts, positions, n_experts)
    n_tokens, n_layers, top_k = experts.shape
    access_count = n_tokens * top_k
    starts, lengths = _sequences(positions)
    # Stream index of the first access of each access's sequence: earlier accesses do not count.
    sequence_first_access = np.repeat(starts * top_k, lengths * top_k)
    access = np.arange(access_count)
    distances = np.empty((n_layers, access_count), np.int64)
    for layer in range(n_layers):
        stream = experts[:, layer, :].reshape(-1)
        # Previous access to the same expert: neighbours after a stable sort by expert id.
        order = np.argsort(stream, kind="stable")
        same = stream[order][1:] == stream[order][:-1]
        previous = np.full(access_count, -1)
        previous[order[1:][same]] = order[:-1][same]
        # seen[n, e] = accesses of e before stream position n; distinct experts in (previous, n).
        seen = np.zeros((access_count + 1, n_experts), np.int32)
        seen[1:] = np.cumsum(np.eye(n_experts, dtype=np.int32)[stream], axis=0)
        between = seen[access] - seen[previous + 1]
        distance = (between > 0).sum(axis=1)
        distances[layer] = np.where(previous >= sequence_first_access, distance, -1)
    return distances


def reuse_histogram(distances: np.ndarray, n_experts: int) -> ReuseHistogram:
    """Histogram of `reuse_distances` output, per layer."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or not np.issubdtype(distances.dtype, np.integer) or distances.size == 0 \
            or distances.min() < -1 or distances.max() >= n_experts:
        raise InputError(f"distances: expected reuse_distances output, int [layers, accesses] in [-1, {n_experts})")
    n_layers = distances.shape[0]
    offset = (n_experts + 1) * np.arange(n_layers)[:, None]
    counts = np.bincount((distances + 1 + offset).ravel(), minlength=n_layers * (n_experts + 1))
    counts = counts.reshape(n_layers, n_experts + 1)
    return ReuseHistogram(counts=counts[:, 1:], first_access=counts[:, 0])


# --- segment routing best performance (SRP) -------------------------------------------------------

def _tail_sums(x: np.ndarray) -> np.ndarray:
    """Σ_{c ≥ α} x[..., c] for α = 1..len-1 (the α = 0 router predicts every expert and never wins)."""
    return np.flip(np.cumsum(np.flip(x, -1), -1), -1)[..., 1:]


def _best_f1(count_histogram: np.ndarray, window_tokens: int, top_k: int, n_experts: int) -> np.ndarray:
    """Best F1 over α = 1..m of the segment router, from window counts: count_histogram[..., c] is the
    number of (window, expert) pairs in which the expert is used c times (c = 0..m)."""
    uses = np.arange(window_tokens + 1)
    matches = _tail_sums(count_histogram * uses)  # correctly predicted (token, expert) selections
    predicted = window_tokens * _tail_sums(count_histogram)  # the set is predicted for all m tokens
    actual = (count_histogram.sum(-1, keepdims=True) / n_experts) * window_tokens * top_k
    return (2 * matches / (predicted + actual)).max(axis=-1)


def srp(experts, positions, n_experts: int, m: int = 16) -> tuple[float, np.ndarray]:
    """SRP(m) in percent: overall (counts pooled over layers, one α for all, as moe-lrc's model-level
    figure) and per layer [L] (each layer its best α). Windows: every run of m consecutive tokens of one
    sequence (stride 1, as moe-lrc); a sequence shorter than m contributes none."""
    experts, positions = _check_trace(experts, positions, n_experts)
    m = _check_count("m", m)
    n_tokens, n_layers, top_k = experts.shape
    # Windows that start at t and stay inside t's sequence.
    n_starts = max(n_tokens - m + 1, 0)
    starts = np.flatnonzero(positions[m - 1 : m - 1 + n_starts] == positions[:n_starts] + m - 1)
    if len(starts) == 0:
        raise InputError(f"m: {m}, expected at most the longest sequence ({_sequences(positions)[1].max()} tokens)")
    used = np.zeros((n_tokens + 1, n_layers, n_experts), np.int32)
    np.put_along_axis(used[1:], experts, 1, axis=2)
    used = np.cumsum(used, axis=0)
    window_counts = used[starts + m] - used[starts]  # [W, L, E], uses of each expert per window
    flat = window_counts + (m + 1) * np.arange(n_layers)[None, :, None]
    histogram = np.bincount(flat.ravel(), minlength=n_layers * (m + 1)).reshape(n_layers, m + 1)
    per_layer = 100 * _best_f1(histogram, m, top_k, n_experts)
    return float(100 * _best_f1(histogram.sum(axis=0), m, top_k, n_experts)), per_layer


def srp_random(m: int, top_k: int, n_experts: int) -> float:
    """SRP(m) in percent of uniformly random top-K routing on an endless trace: an expert's uses in a
    window of m independent tokens are Binomial(m, K/E)."""
    m = _check_count("m", m)
    probabilities = binom.pmf(np.arange(m + 1), m, top_k / n_experts)
    return float(100 * _best_f1(probabilities, m, top_k, n_experts))


# --- segment cache best hit rate (SCH) -----------------------------------------------------------

def _cache_capacity(rho: float, top_k: int) -> int:
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)):
        raise InputError(f"rho: {rho!r}, expected a number")
    capacity = rho * top_k
    if not np.isfinite(capacity) or capacity < 1 or abs(capacity - round(capacity)) > 1e-9:
        raise InputError(f"rho: {rho!r}, expected rho * top_k ({top_k}) to be a whole number of experts ≥ 1")
    return round(capacity)


def sch(experts, positions, n_experts: int, rho: float = 2.0, m: int = 16) -> tuple[float, np.ndarray]:
    """SCH(ρ, m) in percent, per layer [L] and their mean (layers have equal access counts).

    A cache of ρ·K experts per layer (moe-lrc 41_sch_calc.py): all K experts of a token hit or miss
    against the cache as it stood before the token; a missing expert is loaded, evicting the cached
    expert with the fewest uses from that access to the end of the m-token window starting at the
    token, ties to the least recently used. Filling a free slot is free: the cache starts each
    sequence warm, so only misses that evict count.
    """
    experts, positions = _check_trace(experts, positions, n_experts)
    m = _check_count("m", m)
    capacity = _cache_capacity(rho, experts.shape[2])
    hits = _segment_cache_hits(experts, positions, n_experts, capacity, m)
    per_layer = 100 * hits / (experts.shape[0] * experts.shape[2])
    return float(per_layer.mean()), per_layer


def _segment_cache_hits(experts, positions, n_experts: int, capacity: int, m: int) -> np.ndarray:
    """Hit count per layer [L]. All sequences run in lockstep by position: row s of the state is the
    s-th longest sequence, so the sequences still running at position p are the rows [:active]."""
    starts, lengths = _sequences(positions)
    by_length = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[by_length], lengths[by_length]
    n_sequences, n_layers, top_k = len(starts), experts.shape[1], experts.shape[2]
    rows, layers = np.arange(n_sequences)[:, None], np.arange(n_layers)[None, :]
    cached = np.zeros((n_sequences, n_layers, n_experts), bool)
    n_cached = np.zeros((n_sequences, n_layers), np.int64)
    window_uses = np.zeros((n_sequences, n_layers, n_experts), np.int64)  # uses left in the window
    last_use = np.zeros((n_sequences, n_layers, n_experts), np.int64)  # access clock of the last use
    # Priority to stay = (window uses, last use); packed in one integer, last use below `clock_span`.
    clock_span = int(lengths[0]) * top_k + 1
    never = np.iinfo(np.int64).max
    hits = np.zeros(n_layers, np.int64)

    def add_window_token(position: int) -> None:
        active = int((lengths > position).sum())
        token = experts[starts[:active] + position]  # [active, L, K]
        for slot in range(top_k):
            window_uses[rows[:active], layers, token[:, :, slot]] += 1

    for position in range(min(m, int(lengths[0]))):
        add_window_token(position)
    for position in range(int(lengths[0])):
        active = int((lengths > position).sum())
        token = experts[starts[:active] + position]
        state = cached[:active]
        hits += np.take_along_axis(state, token, axis=2).sum(axis=(0, 2))
        for slot in range(top_k):
            expert = token[:, :, slot]  # [active, L]
            missing = ~np.take_along_axis(state, expert[..., None], axis=2)[..., 0]
            free = missing & (n_cached[:active] < capacity)
            evicting = missing & ~free
            hits += free.sum(axis=0)  # a free fill was never cached before this token
            if evicting.any():
                priority = np.where(state, window_uses[:active] * clock_span + last_use[:active], never)
                victim = priority.argmin(axis=2)
                s, layer = np.nonzero(evicting)
                state[s, layer, victim[s, layer]] = False
            s, layer = np.nonzero(missing)
            state[s, layer, expert[s, layer]] = True
            n_cached[:active] += free
            window_uses[rows[:active], layers, expert] -= 1
            last_use[rows[:active], layers, expert] = position * top_k + slot + 1
        if position + m < lengths[0]:
            add_window_token(position + m)
    return hits


# --- random baselines and the summary ------------------------------------------------------------

def random_routing(shape: tuple[int, int, int], n_experts: int, seed: int = 0) -> np.ndarray:
    """Uniformly random top-K routing, int64 [T, L, K]: each (token, layer) draws K distinct experts
    in random order, independently of every other."""
    if len(shape) != 3:
        raise InputError(f"shape: {tuple(shape)}, expected (tokens, layers, top_k)")
    n_tokens, n_layers, top_k = (_check_count(name, n) for name, n in zip(("tokens", "layers", "top_k"), shape))
    if top_k > _check_count("n_experts", n_experts):
        raise InputError(f"top_k: {top_k} exceeds n_experts {n_experts}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: {seed!r}, expected a non-negative integer")
    keys = np.random.default_rng(seed).random((n_tokens, n_layers, n_experts))
    return np.argsort(keys, axis=2)[:, :, :top_k]


def locality_summary(experts, positions, n_experts: int, *, m: int = 16, rho: float = 2.0, seed: int = 0) -> dict:
    """Every statistic with its random-routing baseline, JSON-ready (plain floats, ints and lists).

    Baselines use closed forms where they exist (ExRep, usage, SRP) and otherwise the same statistic on
    `random_routing` of the same shape with the same sequence boundaries, seeded by `seed`."""
    experts, positions = _check_trace(experts, positions, n_experts)
    n_tokens, n_layers, top_k = experts.shape
    m, rho = _check_count("m", m), float(rho)
    random = random_routing(experts.shape, n_experts, seed)
    monte_carlo = f"monte carlo, seed {seed}"

    def entry(value, per_layer, random_value, method: str) -> dict:
        return {"value": float(value), "per_layer": np.asarray(per_layer).tolist(),
                "random": float(random_value), "random_method": method}

    reuse = reuse_histogram(reuse_distances(experts, positions, n_experts), n_experts)
    reuse_random = reuse_histogram(reuse_distances(random, positions, n_experts), n_experts)
    shares, first_share = reuse.shares()
    random_shares, random_first_share = reuse_random.shares()
    return {
        "n_tokens": n_tokens, "n_layers": n_layers, "top_k": top_k, "n_experts": int(n_experts),
        "n_sequences": len(_sequences(positions)[0]), "m": m, "rho": rho, "seed": int(seed),
        "exrep": entry(*exrep(experts, positions), 1 - top_k / n_experts, "closed form 1 - K/E"),
        "exrep_from_usage": entry(*exrep_from_usage(experts, n_experts), 1 - top_k / n_experts, "closed form 1 - K/E"),
        "delta_uniform": entry(*delta_uniform(experts, n_experts), delta_uniform(random, n_experts)[0], monte_carlo),
        "expert_usage": {"per_layer": expert_usage(experts, n_experts).tolist(), "random": 1 / n_experts,
                         "random_method": "closed form 1/E"},
        "reuse_distance": {"shares": shares.tolist(), "first_access_share": first_share,
                           "per_layer_counts": reuse.counts.tolist(), "per_layer_first_access": reuse.first_access.tolist(),
                           "random_shares": random_shares.tolist(), "random_first_access_share": random_first_share,
                           "random_method": monte_carlo},
        "srp_percent": entry(*srp(experts, positions, n_experts, m), srp_random(m, top_k, n_experts),
                             "closed form, Binomial(m, K/E) uses per window"),
        "sch_percent": entry(*sch(experts, positions, n_experts, rho, m), sch(random, positions, n_experts, rho, m)[0],
                             monte_carlo),
    }


def format_summary(summary: dict) -> str:
    """`locality_summary` as a small text table: statistic, this trace, random routing."""
    m, rho, reuse = summary["m"], summary["rho"], summary["reuse_distance"]
    rows = [
        ("ExRep", f"{summary['exrep']['value']:.3f}", f"{summary['exrep']['random']:.3f}"),
        ("ExRep from usage alone", f"{summary['exrep_from_usage']['value']:.3f}", f"{summary['exrep_from_usage']['random']:.3f}"),
        ("ΔUni", f"{summary['delta_uniform']['value']:.3f}", f"{summary['delta_uniform']['random']:.3f}"),
        (f"SRP(m={m}) %", f"{summary['srp_percent']['value']:.1f}", f"{summary['srp_percent']['random']:.1f}"),
        (f"SCH(ρ={rho:g}, m={m}) %", f"{summary['sch_percent']['value']:.1f}", f"{summary['sch_percent']['random']:.1f}"),
        ("reuse: first access", f"{reuse['first_access_share']:.3f}", f"{reuse['random_first_access_share']:.3f}"),
    ]
    rows += [(f"reuse: distance {d}", f"{share:.3f}", f"{random_share:.3f}")
             for d, (share, random_share) in enumerate(zip(reuse["shares"], reuse["random_shares"]))]
    return "\n".join(f"{label:<22}{value:>10}{random:>10}" for label, value, random in [("statistic", "trace", "random")] + rows)
