"""Trace statistics for many cache sizes at once, kept between calls (`StatsCache`).

A design sweep asks the same trace about many cache sizes and devices. What depends on the trace
alone is computed once and kept: the workload, the LRU stack depths (every cache size at once) and,
per cache size asked for, Belady's hits. From them, for a cache of c entries per partition:

- decode: how many decode steps miss m = 0..top_k experts (`miss_counts`). A step's time depends on
  its misses only through m, so these counts and the m-miss step time price every decode step;
- prefill: the summed expert phase of the prefill steps for given per-expert compute times
  (`prefill_phase_total`). For LRU, a prefill step's hits at size c are the accesses with depth < c,
  i.e. its `level(c)` shallowest accesses, so each step has at most width + 1 outcomes: price those
  once and every cache size is a lookup;
- per decode token, its summed expert phases at each cache size (`token_phase_s`), for TPOT percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cosmosim.engines.analytic.latency import expert_phase_s
from cosmosim.engines.analytic.reuse import belady_hits, distinct_keys, lru_depths
from cosmosim.engines.analytic.steps import StepArrays, step_arrays
from cosmosim.inputs.trace import Trace, load_trace
from cosmosim.workload.stream import Workload


class LruOutcomes:
    """LRU outcomes at every cache size from one pass of stack depths."""

    def __init__(self, workload: Workload, steps: StepArrays, per_layer: bool) -> None:
        depths = lru_depths(workload, per_layer)
        self.max_capacity = workload.n_experts * (1 if per_layer else workload.n_layers)
        sizes = np.arange(self.max_capacity + 1)
        self._decode_depths = depths[steps.decode_clock]  # [tokens, layers, top_k]
        self._miss_counts = _miss_count_table(self._decode_depths.reshape(-1, steps.top_k), self.max_capacity)
        # Padding gets depth -1: a "hit" at every size, with no compute, so it changes nothing.
        prefill_depths = np.where(steps.prefill_valid, depths[np.maximum(steps.prefill_clock, 0)], -1)
        self._prefill_rank = np.argsort(np.argsort(prefill_depths, axis=1, kind="stable"), axis=1)
        self._prefill_level = (prefill_depths[:, :, None] < sizes).sum(axis=1)  # [steps, sizes]: hits at size c
        self._prefill_hits = self._prefill_level.sum(axis=0) - (~steps.prefill_valid).sum()  # padding excluded

    def miss_counts(self, capacities: np.ndarray) -> np.ndarray:
        """int [n, top_k + 1]: decode steps with m misses, for each capacity (entries per partition)."""
        return self._miss_counts[capacities]

    def token_phase_s(self, phase_s: np.ndarray, capacities: np.ndarray) -> tuple[list[int], np.ndarray]:
        """(the distinct capacities (entries per partition), ascending; float [sizes, tokens]: each decode token's
        expert phases summed over its layers at each), from the m-miss phase times `phase_s` [top_k + 1]. A
        step whose sorted depths are d_1 <= ... <= d_k misses k - j experts at capacities in (d_j, d_j+1], so
        each access changes its token's sum once, at capacity d + 1: the sums at every capacity are a running
        total of those changes, one pass over the accesses (in `_changes`' order)."""
        n_tokens, n_layers, top_k = self._decode_depths.shape
        at, token, slot = self._changes
        change = (phase_s[top_k - 1 - np.arange(top_k)] - phase_s[top_k - np.arange(top_k)])[slot]
        sizes = np.unique(capacities).tolist()
        sums = np.empty((len(sizes), n_tokens))
        running = np.full(n_tokens, n_layers * phase_s[top_k])  # capacity 0: every access misses
        done = 0
        for index, capacity in enumerate(sizes):
            upto = int(np.searchsorted(at, capacity, side="right"))
            running = sums[index] = running + np.bincount(token[done:upto], weights=change[done:upto], minlength=n_tokens)
            done = upto
        return sizes, sums

    @cached_property
    def _changes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every decode access as (capacity d + 1 at which its token's sum changes, the token, its slot j among
        the step's sorted depths), in order of capacity: `token_phase_s`'s pass, the same for any phase times."""
        n_tokens, n_layers, top_k = self._decode_depths.shape
        ordered = np.sort(self._decode_depths, axis=2).astype(np.int64)
        at = (ordered + 1).reshape(-1)  # [tokens * layers * top_k], j fastest
        order = np.argsort(at, kind="stable")
        token = np.repeat(np.arange(n_tokens), n_layers * top_k)
        slot = np.tile(np.arange(top_k), n_tokens * n_layers)
        return at[order], token[order], slot[order]

    def prefill_hits(self, capacities: np.ndarray) -> np.ndarray:
        """int [n]: prefill accesses that hit, for each capacity."""
        return self._prefill_hits[capacities]

    def prefill_phase_total(self, compute_s: np.ndarray, read_done: np.ndarray, capacities: np.ndarray,
                            concurrent_s: float = 0.0) -> np.ndarray:
        """float [n]: summed prefill expert phase for each capacity, given per-access compute [steps, width]
        (each step's phase at least `concurrent_s`: `expert_phase_s`)."""
        width = compute_s.shape[1]
        miss_by_level = self._prefill_rank[:, None, :] >= np.arange(width + 1)[None, :, None]  # [steps, levels, width]
        phase_by_level = expert_phase_s(compute_s[:, None, :], miss_by_level, read_done, concurrent_s)
        totals = np.take_along_axis(phase_by_level, self._prefill_level, axis=1).sum(axis=0)
        return totals[capacities]


class BeladyOutcomes:
    """Belady outcomes, one pass per cache size asked for (each pass kept)."""

    def __init__(self, workload: Workload, steps: StepArrays, per_layer: bool) -> None:
        self._workload, self._steps, self._per_layer = workload, steps, per_layer
        self._at: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _outcomes_at(self, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token misses [tokens, layers], miss counts [top_k + 1], prefill misses [steps, width])."""
        if capacity not in self._at:
            hits = belady_hits(self._workload, int(capacity), self._per_layer)
            token_misses = self._steps.decode_misses(hits).astype(np.int8)
            counts = np.bincount(token_misses.reshape(-1), minlength=self._steps.top_k + 1)
            self._at[capacity] = token_misses, counts, self._steps.prefill_misses(hits)
        return self._at[capacity]

    def token_phase_s(self, phase_s: np.ndarray, capacities: np.ndarray) -> tuple[list[int], np.ndarray]:
        """As `LruOutcomes.token_phase_s`, one Belady pass per capacity."""
        sizes = np.unique(capacities).tolist()
        return sizes, np.stack([phase_s[self._outcomes_at(size)[0]].sum(axis=1) for size in sizes])

    def miss_counts(self, capacities: np.ndarray) -> np.ndarray:
        return np.array([self._outcomes_at(c)[1] for c in capacities]).reshape(len(capacities), -1)

    def prefill_hits(self, capacities: np.ndarray) -> np.ndarray:
        valid = self._steps.prefill_valid
        return np.array([valid.sum() - self._outcomes_at(c)[2].sum() for c in capacities], dtype=np.int64)

    def prefill_phase_total(self, compute_s: np.ndarray, read_done: np.ndarray, capacities: np.ndarray,
                            concurrent_s: float = 0.0) -> np.ndarray:
        by_size = {c: expert_phase_s(compute_s, self._outcomes_at(c)[2], read_done, concurrent_s).sum()
                   for c in np.unique(capacities)}
        return np.array([by_size[c] for c in capacities], dtype=float)


def _miss_count_table(depths: np.ndarray, max_capacity: int) -> np.ndarray:
    """int [max_capacity + 1, top_k + 1]: steps with m misses at each capacity c = 0..max_capacity.

    A step misses at least m experts at size c exactly when its m-th deepest access has depth >= c.
    """
    n_steps, top_k = depths.shape
    ordered = np.sort(depths, axis=1)
    at_least = np.empty((max_capacity + 1, top_k + 2), dtype=np.int64)
    at_least[:, 0], at_least[:, top_k + 1] = n_steps, 0
    for m in range(1, top_k + 1):
        shallower = np.bincount(np.minimum(ordered[:, top_k - m], max_capacity + 1), minlength=max_capacity + 2)
        at_least[:, m] = n_steps - np.concatenate([[0], np.cumsum(shallower)[:max_capacity]])  # depth < c
    return at_least[:, :-1] - at_least[:, 1:]


@dataclass
class TraceStats:
    """What a workload says about the cache, independent of device and architecture costs."""

    workload: Workload
    steps: StepArrays
    context_values: np.ndarray  # distinct decode contexts
    context_counts: np.ndarray  # decode steps at each
    _outcomes: dict = field(default_factory=dict)

    @classmethod
    def of(cls, workload: Workload) -> "TraceStats":
        steps = step_arrays(workload)
        values, counts = np.unique(steps.decode_context, return_counts=True)
        return cls(workload, steps, values, counts)

    def outcomes(self, rule: str, per_layer: bool) -> LruOutcomes | BeladyOutcomes:
        key = (rule, per_layer)
        if key not in self._outcomes:
            kind = BeladyOutcomes if rule == "belady" else LruOutcomes
            self._outcomes[key] = kind(self.workload, self.steps, per_layer)
        return self._outcomes[key]

    def distinct_keys(self, per_layer: bool) -> np.ndarray:
        key = ("distinct", per_layer)
        if key not in self._outcomes:
            self._outcomes[key] = distinct_keys(self.workload, per_layer)
        return self._outcomes[key]


class StatsCache:
    """Traces and their statistics, kept across `evaluate_points` calls.

    A trace file is known by its resolved path, size and modification time, so a rewritten file is
    read again. Statistics are keyed by everything the workload depends on (see frame.py).
    """

    def __init__(self) -> None:
        self._traces: dict[tuple, Trace] = {}
        self._stats: dict[tuple, TraceStats] = {}

    def trace(self, path: str | Path) -> tuple[tuple, Trace]:
        path = Path(path)
        try:
            status = path.stat()
            key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
        except OSError:
            load_trace(path)  # raises the loader's one-line InputError for a missing file
            raise
        if key not in self._traces:
            self._traces[key] = load_trace(path)
        return key, self._traces[key]

    def stats(self, key: tuple, build_workload) -> TraceStats:
        """The statistics for `key`, building the workload with `build_workload()` the first time."""
        if key not in self._stats:
            self._stats[key] = TraceStats.of(build_workload())
        return self._stats[key]

    def clear(self) -> None:
        self._traces.clear()
        self._stats.clear()
