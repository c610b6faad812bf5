"""How many expert accesses per second the discrete-event simulator replays, against SimPy itself
and against libCacheSim, each measured in this one process (machines here are shared and noisy:
read the ratios, not the absolute rates).

Fixed case: the test fixture's 32k-token sticky trace (19 layers, top-2 of 8), the wearable
profile and architecture, LRU, a cache of 25% of the experts. It prints:

- `accesses_per_s`: the simulation alone (the workload is built first, outside the timer; LRU takes the
  compiled fast path, `engines/des/lru_path.py`), best of --repeats; `general_path_accesses_per_s`, the
  same case on the general path that every other policy, prefetcher and loader takes; and the whole
  `run` call;
- `simpy_timeouts_per_s`: a bare SimPy process yielding one timeout after another, the cost floor of
  an event (best of --repeats), and `ratio_to_simpy`, the first over the second;
- `libcachesim_accesses_per_s`: the same access stream's hits and misses through libCacheSim's LRU
  (its C loop, `process_trace`, from the Python bindings; the dev extra installs `libcachesim`, and
  the benchmark says so and goes on without it). libCacheSim decides hits only: no clock, no
  flash queue, no compute, no pinning; a peer for the cache part, not the same work.

    python benchmarks/sim_speed.py [--repeats 3] [--policy lru] [--json [s.json]]

`--json s.json` writes the case, the rates and `ratio_to_simpy` to s.json; a bare `--json` prints
that object to stdout and the table to stderr.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import simpy
from _report import add_json_option, emit, human_output, parse

from cosmosim.engines.des import Simulation, simulate
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.export import LIBCACHESIM_TRACE_PARAMS, write_libcachesim_csv
from cosmosim.workload.stream import access_stream

SIMPY_TIMEOUTS = 1_000_000


def best_of(repeats: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def bare_simpy(count: int) -> None:
    env = simpy.Environment()

    def process():
        for _ in range(count):
            yield env.timeout(1e-6)

    env.process(process())
    env.run()


def libcachesim_seconds(scenario, capacity: int, repeats: int) -> float | None:
    """Seconds libCacheSim's LRU takes over the scenario's access stream, or None without the package."""
    try:
        import libcachesim as lcs
    except ImportError:
        print("libcachesim is not installed (pip install -e '.[dev]'): no peer rate")
        return None
    with tempfile.TemporaryDirectory() as folder:
        csv = write_libcachesim_csv(access_stream(scenario.workload), Path(folder) / "stream.csv")
        params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                                     obj_id_is_num_set=True)
        params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3  # LIBCACHESIM_TRACE_PARAMS

        def replay() -> None:
            lcs.LRU(cache_size=capacity).process_trace(lcs.TraceReader(str(csv), lcs.TraceType.CSV_TRACE, params))

        return best_of(repeats, replay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3,
                        help="time each measurement this many times, keep the best (default: 3)")
    parser.add_argument("--policy", default="lru", help="cache policy the simulator replays (default: lru)")
    add_json_option(parser, "the case, the rates and ratio_to_simpy")
    args = parse(parser)
    with human_output(args.json):
        rates = measure(args)
    emit(args.json, rates)


def measure(args: argparse.Namespace) -> dict:
    """Time the fixed case, print the table, return the JSON object."""
    trace = sticky_trace(n_tokens=32768, n_layers=19, seed=0)
    config = RunConfig(policy=args.policy, cache_experts=19 * 8 // 4)
    scenario = prepare("wearable", trace, "wearable-moe", config)
    accesses = scenario.workload.n_accesses
    records = simulate(scenario)
    simulation_s = best_of(args.repeats, lambda: simulate(scenario))
    general_s = best_of(args.repeats, lambda: Simulation(scenario, fast_path=False).run())
    simpy_s = best_of(args.repeats, lambda: bare_simpy(SIMPY_TIMEOUTS))
    start = time.perf_counter()
    result = run("wearable", trace, "wearable-moe", config)
    whole_s = time.perf_counter() - start
    peer_s = libcachesim_seconds(scenario, config.cache_experts, args.repeats)

    rates = {"accesses_per_s": accesses / simulation_s, "simpy_timeouts_per_s": SIMPY_TIMEOUTS / simpy_s,
             "general_path_accesses_per_s": accesses / general_s, "whole_run_accesses_per_s": accesses / whole_s,
             "libcachesim_accesses_per_s": None if peer_s is None else accesses / peer_s}
    rates["ratio_to_simpy"] = rates["accesses_per_s"] / rates["simpy_timeouts_per_s"]
    print(f"case: 32,768-token fixture trace, wearable, {args.policy}, cache {config.cache_experts}/152 experts; "
          f"{accesses:,} expert accesses (hit rate {result['hit_rate']:.3f}, {records.latency_s.size:,} decode tokens)")
    print(f"simulation alone: {simulation_s:.2f} s (best of {args.repeats}) -> {rates['accesses_per_s']:,.0f} accesses/s")
    print(f"the same on the general path (every policy, prefetcher and loader): {general_s:.2f} s -> "
          f"{rates['general_path_accesses_per_s']:,.0f} accesses/s")
    print(f"bare SimPy: {rates['simpy_timeouts_per_s']:,.0f} timeouts/s -> ratio_to_simpy {rates['ratio_to_simpy']:.3f}")
    print(f"whole run() incl. workload and summary: {whole_s:.2f} s -> {rates['whole_run_accesses_per_s']:,.0f} accesses/s")
    if peer_s is not None:
        print(f"libCacheSim LRU (hits only, C loop, `-t \"{LIBCACHESIM_TRACE_PARAMS}\"` layout): "
              f"{rates['libcachesim_accesses_per_s']:,.0f} accesses/s, "
              f"{rates['libcachesim_accesses_per_s'] / rates['accesses_per_s']:.1f}x cosmosim's full simulation")
    return {"case": {"tokens": 32768, "policy": args.policy, "cache_experts": config.cache_experts,
                     "accesses": accesses, "repeats": args.repeats}, **rates}


if __name__ == "__main__":
    main()
