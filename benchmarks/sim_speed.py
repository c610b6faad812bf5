"""How many expert accesses per second the discrete-event simulator replays.

Fixed case: the test fixture's 32k-token sticky trace (19 layers, top-2 of 8), the wearable
profile and architecture, LRU, a cache of 25% of the experts. Prints the rate of the simulation
alone (the workload is built first, outside the timer) and of the whole `run` call.

    python benchmarks/sim_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from cosmosim.engines.des import simulate
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policy", default="lru")
    args = parser.parse_args()

    trace = sticky_trace(n_tokens=32768, n_layers=19, seed=0)
    config = RunConfig(policy=args.policy, cache_experts=19 * 8 // 4)
    scenario = prepare("wearable", trace, "wearable-moe", config)
    accesses = scenario.workload.n_accesses
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        records = simulate(scenario)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    result = run("wearable", trace, "wearable-moe", config)
    whole = time.perf_counter() - start
    print(f"case: 32,768-token fixture trace, wearable, {args.policy}, cache {config.cache_experts}/152 experts")
    print(f"expert accesses replayed: {accesses:,} (hit rate {result['hit_rate']:.3f}, "
          f"{records.latency_s.size:,} decode tokens)")
    print(f"simulation alone: {best:.2f} s (best of {args.repeats}) -> {accesses / best:,.0f} accesses/s")
    print(f"whole run() incl. workload and summary: {whole:.2f} s -> {accesses / whole:,.0f} accesses/s")


if __name__ == "__main__":
    main()
