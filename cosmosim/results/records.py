"""What an engine records as it runs: per decode token, per layer, and totals.

Hot-path methods only add to plain ints and floats; arrays are written once per token.
`cosmosim.results.summary` turns a `Records` into the summary every engine reports.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from cosmosim.device.costs import OpCost
from cosmosim.results import catalog
from cosmosim.workload.stream import DECODE, Workload

ENERGY_PARTS = catalog.parts(catalog.ENERGY_GROUP)  # flash, dram, compute, static: priced in `summarize`
BREAKDOWN_PARTS = catalog.parts(catalog.TIME_GROUP)  # where a decode token's time goes, as `add_op` books it


@dataclass
class Records:
    # Per decode token.
    latency_s: np.ndarray
    flash_bytes: np.ndarray
    flops: np.ndarray
    dram_bytes: np.ndarray
    token_end_s: np.ndarray  # the clock when the token ended (NaN: the engine keeps no clock)
    token_load_s: np.ndarray  # seconds of sustained load when it began (NaN: no clock, or no throttle)
    # Per request: time to first token (prefill of the prompt + LM head).
    ttft_s: list[float]
    # Decode accesses per layer, by outcome (plain lists while running: faster to increment).
    _layer_hits: list[int]
    _layer_late: list[int]
    _layer_misses: list[int]
    prefill_outcomes: dict[str, int]
    breakdown_s: dict[str, float]  # decode only, summed over tokens
    prefetch: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    total_s: float = 0.0
    flash_busy_s: float = 0.0
    peak_cache_entries: int = 0
    peak_cache_bytes: int | None = None  # --loader mmap: the most bytes the page cache held (every weight)
    _token: int = 0
    _flash: int = 0
    _flops: float = 0.0
    _dram: float = 0.0

    @classmethod
    def empty(cls, workload: Workload) -> "Records":
        n = workload.n_decode_tokens
        return cls(
            latency_s=np.zeros(n), flash_bytes=np.zeros(n), flops=np.zeros(n), dram_bytes=np.zeros(n),
            token_end_s=np.full(n, np.nan), token_load_s=np.full(n, np.nan), ttft_s=[],
            _layer_hits=[0] * workload.n_layers, _layer_late=[0] * workload.n_layers,
            _layer_misses=[0] * workload.n_layers,
            prefill_outcomes={"hit": 0, "late_hit": 0, "miss": 0},
            breakdown_s=dict.fromkeys(BREAKDOWN_PARTS, 0.0),
        )

    @property
    def layer_outcomes(self) -> dict[str, np.ndarray]:
        """Decode accesses per layer: {"hit", "late_hit", "miss"} -> int array [layers]."""
        return {"hit": np.array(self._layer_hits, dtype=np.int64), "late_hit": np.array(self._layer_late, dtype=np.int64),
                "miss": np.array(self._layer_misses, dtype=np.int64)}

    def begin_pass(self, kind: int) -> None:
        self._flash, self._flops, self._dram = 0, 0.0, 0.0

    def end_pass(self, kind: int, latency_s: float, end_s: float = math.nan, load_s: float = math.nan) -> None:
        if kind == DECODE:
            i = self._token
            self.latency_s[i], self.flash_bytes[i] = latency_s, self._flash
            self.token_end_s[i], self.token_load_s[i] = end_s, load_s
            self.flops[i], self.dram_bytes[i] = self._flops, self._dram
            self._token += 1
        else:
            self.ttft_s.append(latency_s)

    def add_op(self, kind: int, part: str, cost: OpCost, overhead_s: float = 0.0, count: int = 1) -> None:
        self._flops += count * cost.flops
        self._dram += count * cost.dram_bytes
        if kind != DECODE:
            return
        if part == "lm_head":
            self.breakdown_s["lm_head"] += cost.time_s
        else:
            self.breakdown_s[part + ("_dram" if cost.memory_bound else "_compute")] += count * cost.time_s
        self.breakdown_s["layer_overhead"] += overhead_s

    def add_outcomes(self, kind: int, layer: int, hits: int, late_hits: int, misses: int, flash_bytes: int) -> None:
        """One step's demand accesses, by outcome, and the bytes its misses read."""
        self._flash += flash_bytes
        if kind == DECODE:
            self._layer_hits[layer] += hits
            self._layer_late[layer] += late_hits
            self._layer_misses[layer] += misses
        else:
            self.prefill_outcomes["hit"] += hits
            self.prefill_outcomes["late_hit"] += late_hits
            self.prefill_outcomes["miss"] += misses

    def add_flash(self, nbytes: int) -> None:
        """Bytes read from flash for weights other than routed experts (--loader mmap: their page faults)."""
        self._flash += nbytes

    def add_beside(self, kind: int, cost: OpCost, exposed_s: float) -> None:
        """An operation computed beside the routed experts on another unit (the shared experts): its FLOPs
        and bytes count, and only the time it ran past them (`exposed_s`)."""
        self._flops += cost.flops
        self._dram += cost.dram_bytes
        if kind == DECODE:
            self.breakdown_s["shared_exposed"] += exposed_s

    def add_miss_overhead(self, kind: int, overhead_s: float) -> None:
        """The per-miss CPU work of a step's missed experts (`StepCosts.miss_overhead_s` each)."""
        if kind == DECODE:
            self.breakdown_s["miss_overhead"] += overhead_s

    def add_stall(self, kind: int, stall_s: float) -> None:
        if kind == DECODE:
            self.breakdown_s["flash_stall"] += stall_s

    def add_prefetch_issue(self, nbytes: int) -> None:
        self._flash += nbytes
        self.prefetch["issued"] += 1
        self.prefetch["bytes"] += nbytes

    def add_prefetch_outcome(self, used: int, wasted: int, wasted_bytes: int) -> None:
        self.prefetch["used"] += used
        self.prefetch["wasted"] += wasted
        self.prefetch["wasted_bytes"] += wasted_bytes
