"""The simulator's and the analytic model's LRU hit counts against a plain LRU written here, on
shipped traces, at cache sizes on both sides of one token's working set.

The LRU replays the stream every engine replays (`cosmosim.workload.stream.access_stream`, the
same function `cosmosim trace export` writes for other cache simulators; tests/test_export.py
checks it against the stream docs/simulator.md describes). Per request: a prefill step per layer,
where only the expert being loaded is protected from eviction, then per decode token a step per
layer whose k experts are all protected: a miss never evicts an expert the same step uses. Keys
are (layer, expert); one global cache; only decode accesses are counted as hits and accesses.

Without the protection this is textbook per-access LRU, which differs exactly where a step's
second expert is the least recently used entry when its first one misses: then textbook LRU evicts
it and misses on it next (`traces/wd.npz` at 64 entries, P = 1: 0.257 against 0.311).
tests/test_export.py checks libCacheSim's LRU against that textbook variant.
"""

from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import pytest

from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import AccessStream, access_stream

TRACES = Path(__file__).resolve().parent.parent / "traces"
TOKENS = 12 * 128  # replayed tokens per case (12 of the shipped traces' sequences): quick in pure Python


class LruCount(NamedTuple):
    decode_hits: int
    decode_accesses: int
    misses: int  # every access's, prefill included: the flash loads


def reference_lru_hits(steps, capacity: int, size_of=lambda key: 1, protect_step: bool = True) -> list[bool]:
    """Each access's hit under a plain LRU of `capacity` units (entries, or bytes with `size_of`) that
    evicts the least recently used entry, one after another, until a miss fits; a decode step's own
    keys are never evicted during it, a prefill step protects only the key being loaded."""
    cache: OrderedDict[int, None] = OrderedDict()
    used, hits = 0, []
    for decode, keys in steps:
        for key in keys:
            if key in cache:
                hits.append(True)
                cache.move_to_end(key)
                continue
            hits.append(False)
            protected = set(keys) if decode and protect_step else {key}
            while used + size_of(key) > capacity:
                victim = next(k for k in cache if k not in protected)
                used -= size_of(victim)
                del cache[victim]
            cache[key] = None
            used += size_of(key)
    return hits


def reference_lru(stream: AccessStream, capacity: int, protect_step: bool = True) -> LruCount:
    """A plain LRU of `capacity` entries over `stream`."""
    steps = list(stream.steps())
    decode = [bool(is_decode) for is_decode, keys in steps for _ in keys]
    hits = reference_lru_hits(steps, capacity, protect_step=protect_step)
    return LruCount(sum(h and d for h, d in zip(hits, decode)), sum(decode), hits.count(False))


def stream_of(path: Path, prompt: int) -> AccessStream:
    return access_stream(prepare("wearable", path, None, RunConfig(prompt_tokens=prompt, tokens=TOKENS)).workload)


CASES = [("wd.npz", 64, 1), ("wd.npz", 40, 1), ("wd.npz", 160, 1), ("wd.npz", 64, 4),
         ("moe.npz", 38, 1), ("moe.npz", 64, 1), ("moe.npz", 24, 4), ("bles.npz", 38, 1), ("bles.npz", 100, 4)]


@pytest.mark.parametrize("name, capacity, prompt", CASES)
def test_lru_hits_equal_a_plain_lru_of_the_documented_stream(name, capacity, prompt):
    path = TRACES / name
    hits, accesses, _ = reference_lru(stream_of(path, prompt), capacity)
    config = RunConfig(policy="lru", cache_experts=capacity, prompt_tokens=prompt, tokens=TOKENS)
    for engine in ("des", "analytic"):
        result = run("wearable", path, None, config, engine=engine)
        assert result["accesses"]["decode"] == accesses, engine
        assert result["accesses"]["hit"] == hits, engine


def test_the_step_protection_is_what_separates_it_from_textbook_lru():
    stream = stream_of(TRACES / "wd.npz", 1)
    assert reference_lru(stream, 64).decode_hits > reference_lru(stream, 64, protect_step=False).decode_hits
