"""The simulator's and the analytic model's LRU hit counts against a plain LRU written here from
the documented access stream (docs/simulator.md, "Requests and steps" and "Cache"), on shipped
traces, at cache sizes on both sides of one token's working set.

The stream: the first 10% of sequences (rounded up) are held out; each later sequence is a request
whose first P tokens are the prompt. Per request: a prefill step per layer (the experts any prompt
token chose at that layer, each once, in order of first use; only the expert being loaded is
protected from eviction), then per decode token a step per layer (its top-k experts in gate order,
all k protected: a miss never evicts an expert the same step uses). Keys are (layer, expert); one
global cache; only decode accesses are counted.

Without the protection this would be textbook per-access LRU, which differs exactly where a step's
second expert is the least recently used entry when its first one misses: then textbook LRU evicts
it and misses on it next (`traces/wd.npz` at 64 entries, P = 1: 0.257 against 0.311).
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig

TRACES = Path(__file__).resolve().parent.parent / "traces"
SEQUENCES = 12  # replayed sequences per case: enough for thousands of decode tokens, quick in pure Python


def reference_lru(path: Path, capacity: int, prompt: int, protect_step: bool = True) -> tuple[int, int, int]:
    """(decode hits, decode accesses, tokens replayed) of a plain LRU over the documented stream."""
    with np.load(path, allow_pickle=False) as npz:
        experts, positions = npz["experts"].astype(np.int64), npz["positions"]
    starts = np.flatnonzero(positions == 0).tolist() + [len(positions)]
    held_out = int(np.ceil(0.1 * (len(starts) - 1)))
    n_layers = experts.shape[1]
    cache: OrderedDict[tuple[int, int], None] = OrderedDict()
    hits = accesses = tokens = 0

    def access(key, protected, counted):
        nonlocal hits, accesses
        accesses += counted
        if key in cache:
            hits += counted
            cache.move_to_end(key)
            return
        if len(cache) >= capacity:
            victim = next(k for k in cache if k not in protected)
            del cache[victim]
        cache[key] = None

    for a, b in zip(starts[held_out:held_out + SEQUENCES], starts[held_out + 1:held_out + 1 + SEQUENCES]):
        tokens += b - a
        for layer in range(n_layers):
            first_use = dict.fromkeys((layer, int(e)) for e in experts[a:a + prompt, layer].reshape(-1))
            for key in first_use:
                access(key, {key}, 0)
        for t in range(a + prompt, b):
            for layer in range(n_layers):
                step = [(layer, int(e)) for e in experts[t, layer]]
                for key in step:
                    access(key, set(step) if protect_step else {key}, 1)
    return hits, accesses, tokens


CASES = [("wd.npz", 64, 1), ("wd.npz", 40, 1), ("wd.npz", 160, 1), ("wd.npz", 64, 4),
         ("moe.npz", 38, 1), ("moe.npz", 64, 1), ("moe.npz", 24, 4), ("bles.npz", 38, 1), ("bles.npz", 100, 4)]


@pytest.mark.parametrize("name, capacity, prompt", CASES)
def test_lru_hits_equal_a_plain_lru_of_the_documented_stream(name, capacity, prompt):
    path = TRACES / name
    hits, accesses, tokens = reference_lru(path, capacity, prompt)
    config = RunConfig(policy="lru", cache_experts=capacity, prompt_tokens=prompt, tokens=tokens)
    for engine in ("des", "analytic"):
        result = run("wearable", path, None, config, engine=engine)
        assert result["accesses"]["decode"] == accesses, engine
        assert result["accesses"]["hit"] == hits, engine


def test_the_step_protection_is_what_separates_it_from_textbook_lru():
    path = TRACES / "wd.npz"
    protected, _, _ = reference_lru(path, 64, 1)
    textbook, _, _ = reference_lru(path, 64, 1, protect_step=False)
    assert protected > textbook
