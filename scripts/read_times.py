"""How long replay's expert reads take on this host, by how long the device was idle before each.

Replays `--arch` with every access a miss on random routing (calibration's miss replay) and on each
`--trace` at each `--caches` size (O_DIRECT reads, torch threads 1), tags every expert read replay
issues (its submission, its last request's completion), and prints, per replay and per bin of the
device's idle time before the read (no read in flight since the last one completed), the median
duration of a read and how many others were in flight when it was issued. A flash device that pays
a wake-up after idling, or storage that caches what was read recently, shows here as reads that get
slower with the idle time or faster on routing that re-reads few experts.

    python scripts/read_times.py [--trace traces/bles.npz traces/moe.npz] [--caches 23 76] [--tokens 200]

Needs a calibrated host profile (`cosmosim calibrate`) and an idle machine: it times real reads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cosmosim.engines.replay import engine
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel
from cosmosim.host.effort import FULL
from cosmosim.host.overhead_measure import random_trace
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile
from cosmosim.inputs.trace import load_trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

IDLE_BINS_MS = (0.0, 0.5, 2.0, 5.0, 20.0, np.inf)


def tag_reads(reads: list[tuple[float, list[float]]]):
    """Wrap replay's submit_read so that each expert read appends (submitted, [request completions])."""
    submit = engine.submit_read

    def tagged(pool, reader, view, offset, request_bytes):
        entry = (time.perf_counter(), [])
        futures = submit(pool, reader, view, offset, request_bytes)
        for future in futures:
            future.add_done_callback(lambda _, done=entry[1]: done.append(time.perf_counter()))
        reads.append(entry)
        return futures

    engine.submit_read = tagged


def report(label: str, reads: list[tuple[float, list[float]]]) -> None:
    submitted = np.array([read[0] for read in reads])
    completed = np.array([max(read[1]) for read in reads])
    duration_ms = 1e3 * (completed - submitted)
    last_done = np.maximum.accumulate(completed)
    idle_ms = np.r_[np.inf, 1e3 * (submitted[1:] - last_done[:-1])]  # <= 0: another read was in flight
    in_flight = np.array([int(((submitted[:i] <= at) & (completed[:i] > at)).sum()) for i, at in enumerate(submitted)])
    print(f"{label}: {len(reads)} expert reads")
    for low, high in zip((-np.inf, *IDLE_BINS_MS[:-1]), IDLE_BINS_MS):
        chosen = (idle_ms > low) & (idle_ms <= high)
        if chosen.any():
            span = "another in flight" if high == 0 else f"idle {low:g}-{high:g} ms"
            print(f"  {span:>20}: {chosen.sum():5d} reads, median {np.median(duration_ms[chosen]):5.2f} ms "
                  f"(p10 {np.percentile(duration_ms[chosen], 10):5.2f}, p90 {np.percentile(duration_ms[chosen], 90):5.2f}), "
                  f"{in_flight[chosen].mean():.1f} others in flight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", nargs="+", default=["traces/bles.npz", "traces/moe.npz"])
    parser.add_argument("--arch", default="wearable-moe")
    parser.add_argument("--caches", type=int, nargs="+", default=[23, 76], help="cache sizes in experts")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per replay, 16 of them the prompt")
    args = parser.parse_args()
    arch, profile = get_arch(args.arch), load_profile(host_profile_path())
    replays = [("random routing, every access a miss", random_trace(arch, FULL, 16), arch.top_k)]
    replays += [(f"{path}, {cache} experts", load_trace(path), cache) for path in args.trace for cache in args.caches]
    reads: list[tuple[float, list[float]]] = []
    tag_reads(reads)
    with torch_threads(1), HostModel(arch, None) as model:
        for label, trace, cache in replays:
            reads.clear()
            config = RunConfig(cache_experts=cache, tokens=min(args.tokens, trace.n_tokens), prompt_tokens=16)
            model.run(prepare(profile, trace, arch, config))
            report(label, reads)


if __name__ == "__main__":
    main()
