"""Step times when routed experts come in two sizes (`--expert-bits hot=BITS,cold=BITS`).

With one size, a step's expert phase depends only on how many of its experts miss. With two, it
depends on which slots miss and what each slot's expert costs: its compute time and, for a miss, the
bytes its read moves. Steps share few such patterns (top-2 with two sizes: at most 16), so each
distinct pattern is priced once: its misses read one after another on an idle flash, in access
order, by the simulator's own recurrence (`cosmosim.device.hardware.Flash`), then `expert_phase_s`.
"""

from __future__ import annotations

import numpy as np

from cosmosim.device.hardware import Flash
from cosmosim.engines.analytic.latency import expert_phase_s
from cosmosim.inputs.profiles import FlashSpec


def sized_phase_s(flash: FlashSpec, compute_s: np.ndarray, miss: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """float [n]: each step's expert phase (from router_done to its last expert's end).

    compute_s, miss, nbytes: [n, width] in access order (padding: compute 0, not a miss); nbytes is
    what a miss of that slot reads."""
    n, width = compute_s.shape
    if n == 0:
        return np.zeros(0)
    rows = np.concatenate([compute_s, miss.astype(float), np.where(miss, nbytes, 0).astype(float)], axis=1)
    patterns, inverse = np.unique(rows, axis=0, return_inverse=True)
    phase_s = np.empty(len(patterns))
    for index, pattern in enumerate(patterns):
        slot_compute_s, slot_miss = pattern[:width], pattern[width:2 * width].astype(bool)
        device = Flash(flash)  # idle at router_done: without prefetch no read outlives its step
        read_done = np.array([device.read(int(size), 0.0) for size in pattern[2 * width:][slot_miss]] or [0.0])
        phase_s[index] = expert_phase_s(slot_compute_s, slot_miss, read_done)
    return phase_s[inverse.reshape(-1)]
