"""Routed experts in two sizes (`--expert-bits hot=BITS,cold=BITS`): which are hot, and each key's bytes.

The hot experts are the ones the trace's warm-up part uses most (ties go to the lower key, so the
choice is deterministic): as many as a count says, or as fit in a byte budget at their bits, or by
default `HOT_SHARE` of all routed experts. Every engine then sees one size per key: the cache counts
bytes, a miss reads that key's bytes, and an expert computes at its own class's roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.precision import HOT_SHARE
from cosmosim.scenario.settings import RunConfig, flag
from cosmosim.units import MB
from cosmosim.workload.stream import Workload


@dataclass(frozen=True)
class ExpertSizes:
    hot_key: np.ndarray  # bool [layers * n_experts]: replayed at the hot experts' bits
    hot_bytes: int
    cold_bytes: int

    @property
    def key_bytes(self) -> np.ndarray:
        """int64 [layers * n_experts]: each key's size."""
        return np.where(self.hot_key, self.hot_bytes, self.cold_bytes).astype(np.int64)

    @property
    def n_hot(self) -> int:
        return int(self.hot_key.sum())

    @property
    def total_bytes(self) -> int:
        return self.n_hot * self.hot_bytes + (self.hot_key.size - self.n_hot) * self.cold_bytes

    @property
    def largest(self) -> int:
        return max(self.hot_bytes, self.cold_bytes) if self.n_hot else self.cold_bytes


def hot_count(config: RunConfig, total_experts: int, hot_bytes: int) -> int:
    """How many experts are hot: the count asked for, what the budget holds, or HOT_SHARE of them."""
    if config.hot_experts is not None:
        if config.hot_experts > total_experts:
            raise InputError(f"{flag('hot_experts')}: expected at most the {total_experts} routed experts there are, "
                             f"got {config.hot_experts}")
        return config.hot_experts
    if config.hot_mb is not None:
        count = int(config.hot_mb * MB // hot_bytes)
        if count < 1:
            raise InputError(f"{flag('hot_mb')}: {config.hot_mb:g} MB holds no hot expert of {hot_bytes / MB:.2f} MB")
        return min(count, total_experts)
    return max(1, int(HOT_SHARE * total_experts))


def resolve_expert_sizes(config: RunConfig, workload: Workload, hot_bytes: int, cold_bytes: int) -> ExpertSizes | None:
    """The experts' sizes for `config` (None when every routed expert has one size)."""
    if config.hot_expert_bits is None:
        return None
    usage = workload.warmup_usage
    if not usage.any():
        raise InputError(f"{flag('hot_expert_bits')}: the hot experts are the warm-up's most used, and this run's "
                         f"warm-up routes nothing (--warmup-fraction {config.warmup_fraction:g}); give a larger one")
    count = hot_count(config, usage.size, hot_bytes)
    hot_key = np.zeros(usage.size, dtype=bool)
    hot_key[np.argsort(-usage, kind="stable")[:count]] = True
    return ExpertSizes(hot_key, hot_bytes, cold_bytes)
