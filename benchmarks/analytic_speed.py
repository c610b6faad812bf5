"""How many design points per second `cosmosim.analytic.evaluate_points` prices.

Fixed case: the test fixture's sticky trace (19 layers, top-2 of 8, written to a temporary file),
a grid of {phone, wearable} x {phone-moe, phone-wd, wearable-moe, wearable-wd} x {16, 8, 4 bits} x
{LRU over many cache sizes, per-layer LRU, Belady at 4 sizes, kactive} x 2 prompt lengths. Prints:

- the cold call: traces read, workloads built, stack depths and Belady passes computed;
- the warm call, with every trace's statistics cached (the sweep case): device prices, tables and
  every metric but TPOT percentiles recomputed per call;
- the warm call with TPOT percentiles (one pass over the decode tokens per distinct point).

    python benchmarks/analytic_speed.py [--tokens 16384] [--repeats 3] [--json [a.json]]

`--json a.json` writes the case, `cold_points_per_s`, `warm_points_per_s` and
`percentile_points_per_s` to a.json; a bare `--json` prints that object to stdout and the table to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import pandas as pd
from _report import add_json_option, emit, human_output, parse

from cosmosim.engines.analytic.frame import evaluate_points
from cosmosim.engines.analytic.outcomes import StatsCache
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace

ARCHS = ("phone-moe", "phone-wd", "wearable-moe", "wearable-wd")


def design_points(trace_path: Path) -> pd.DataFrame:
    rows = []
    for profile, arch_name, bits, prompt in itertools.product(("phone", "wearable"), ARCHS, (16, 8, 4), (16, 64)):
        arch = get_arch(arch_name)
        all_experts = arch.total_experts
        base = {"profile": profile, "arch": arch_name, "trace": str(trace_path), "weight_bits": bits,
                "prompt_tokens": prompt}
        for size in range(arch.top_k, all_experts + 1):
            rows.append(dict(base, policy="lru", cache_experts=size))
        for size in range(arch.top_k, arch.n_experts + 1):
            rows.append(dict(base, policy="lru", cache_experts=size * arch.n_layers, per_layer_cache=True))
        for fraction in (0.25, 0.5, 0.75, 1.0):
            rows.append(dict(base, policy="belady", cache_experts=round(fraction * all_experts)))
        rows.append(dict(base, policy="kactive"))
    points = pd.DataFrame(rows)
    points["cache_experts"] = points["cache_experts"].astype("Int64")
    points["per_layer_cache"] = points["per_layer_cache"].fillna(False).astype(bool)
    return points


def timed(points: pd.DataFrame, cache: StatsCache, percentiles: bool) -> float:
    start = time.perf_counter()
    evaluate_points(points, percentiles=percentiles, cache=cache)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384,
                        help="trace length in tokens, sequences of 256 (default: 16384)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="time the warm call this many times, keep the best (default: 3)")
    add_json_option(parser, "the case and the three rates")
    args = parse(parser)
    with human_output(args.json):
        rates = measure(args)
    emit(args.json, rates)


def measure(args: argparse.Namespace) -> dict:
    """Time the three calls, print the table, return the JSON object."""
    with tempfile.TemporaryDirectory() as folder:
        trace_path = save_trace(sticky_trace(n_tokens=args.tokens, n_layers=19, seed=0), Path(folder) / "sticky.npz")
        points = design_points(trace_path)
        cache = StatsCache()
        cold = timed(points, cache, percentiles=False)
        warm = min(timed(points, cache, percentiles=False) for _ in range(args.repeats))
        with_percentiles = timed(points, cache, percentiles=True)
    n = len(points)
    print(f"case: {args.tokens:,}-token sticky trace, {n:,} design points "
          f"(2 profiles x {len(ARCHS)} archs x 3 bit-widths x 2 prompt lengths x cache sizes and policies)")
    print(f"cold (statistics computed):      {cold:7.2f} s -> {n / cold:10,.0f} points/s")
    print(f"warm (statistics cached):        {warm:7.2f} s -> {n / warm:10,.0f} points/s (best of {args.repeats})")
    print(f"warm, with TPOT percentiles:     {with_percentiles:7.2f} s -> {n / with_percentiles:10,.0f} points/s")
    return {"case": {"tokens": args.tokens, "points": n, "repeats": args.repeats},
            "cold_points_per_s": n / cold, "warm_points_per_s": n / warm,
            "percentile_points_per_s": n / with_percentiles}


if __name__ == "__main__":
    main()
