"""What a miss really costs a replayed token on this host, against what the host profile prices.

Replays one trace on `--arch` at several cache sizes (O_DIRECT reads, torch threads 1) and groups
the decode tokens by how many experts they read. For each group it prints the median measured and
predicted (simulator, host profile) latency. The slope of each column against the misses is the
cost of a miss, measured and priced; the intercept is the cost of a token that reads nothing.

    python scripts/miss_cost.py [--trace traces/bles.npz] [--arch wearable-moe] [--tokens 400] [--caches 152 129 76]

Needs a calibrated host profile (`cosmosim calibrate`) and an idle machine: it times real decoding.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from cosmosim.engines.des import simulate
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default="traces/bles.npz")
    parser.add_argument("--arch", default="wearable-moe")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per replay, 16 of them the prompt")
    parser.add_argument("--caches", type=int, nargs="+", default=[152, 129, 76], help="cache sizes in experts")
    args = parser.parse_args()
    arch, profile = get_arch(args.arch), load_profile(host_profile_path())
    with torch_threads(1), HostModel(arch, None) as model:
        for cache in args.caches:
            scenario = prepare(profile, args.trace, arch, RunConfig(cache_experts=cache, tokens=args.tokens, prompt_tokens=16))
            records, predicted = model.run(scenario), simulate(scenario).latency_s
            by_misses = defaultdict(list)
            for measured_s, predicted_s, nbytes in zip(records.decode_latency_s, predicted, records.decode_read_bytes):
                by_misses[nbytes // model.layout.stride].append((measured_s, predicted_s))
            print(f"cache {cache} experts: misses -> tokens, median measured ms, median predicted ms")
            for misses, pairs in sorted(by_misses.items()):
                measured, priced = (1e3 * float(np.median(column)) for column in zip(*pairs))
                print(f"  {misses:3d} -> {len(pairs):4d}  {measured:7.1f}  {priced:7.1f}")


if __name__ == "__main__":
    main()
