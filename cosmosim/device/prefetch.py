"""Prefetchers: after a layer's router has chosen, guess the next layer's experts and start reading
them from flash while the current layer computes. One small class each behind one interface; add a
new one to `PREFETCHERS`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from cosmosim.workload.stream import Workload


class Prefetcher:
    name: ClassVar[str]

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def predict(self, step: int, layer: int, chosen: list[int]) -> list[int]:
        """Keys to prefetch for the step after `step`, given the experts `chosen` (as keys) now."""
        raise NotImplementedError


class NoPrefetch(Prefetcher):
    name = "none"

    def predict(self, step: int, layer: int, chosen: list[int]) -> list[int]:
        return []


class NextLayer(Prefetcher):
    """Guess layer l+1's top-k experts from layer l's choice with the co-occurrence counts learned
    on the warm-up sequences (summed over the chosen experts). It never sees the answer."""

    name = "next-layer"

    def __init__(self, workload: Workload) -> None:
        super().__init__(workload)
        self._rows = workload.warmup_cooccurrence.astype(np.float64)
        self._n_experts = workload.n_experts
        self._top_k = workload.top_k
        # Ranking costs more than the rest of a step, and a layer has few distinct choices: memoise.
        self._memo: dict[tuple[int, ...], list[int]] = {}

    def predict(self, step: int, layer: int, chosen: list[int]) -> list[int]:
        if layer + 1 >= self.workload.n_layers:
            return []
        signature = (layer, *sorted(chosen))
        guess = self._memo.get(signature)
        if guess is None:
            experts = [key - layer * self._n_experts for key in chosen]
            scores = self._rows[layer][experts].sum(axis=0)
            ranked = np.argsort(-scores, kind="stable")[: self._top_k]
            guess = [(layer + 1) * self._n_experts + int(e) for e in ranked]
            self._memo[signature] = guess
        return guess


class Oracle(Prefetcher):
    """Prefetch the true next layer's experts: an upper bound on what prefetching can buy."""

    name = "oracle"

    def __init__(self, workload: Workload) -> None:
        super().__init__(workload)
        self._offsets = workload.step_offsets
        self._keys = workload.access_key
        self._kinds = workload.step_kind

    def predict(self, step: int, layer: int, chosen: list[int]) -> list[int]:
        following = step + 1
        if layer + 1 >= self.workload.n_layers or following >= self._kinds.size or self._kinds[following] != self._kinds[step]:
            return []
        return self._keys[self._offsets[following]:self._offsets[following + 1]].tolist()


PREFETCHERS: dict[str, type[Prefetcher]] = {p.name: p for p in (NoPrefetch, NextLayer, Oracle)}
