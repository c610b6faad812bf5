"""Does a flash probe just before a replay predict that replay's flash wait? Alternates the drift
probe's read-rate measurement (0.5 s at the profile's largest request, its queue depth in flight, on
the expert file) with an all-miss replay (`lru`, a cache of 23 experts) of `--trace`, `--pairs` times.

    python scripts/probe_vs_replay.py [--trace traces/moe.npz] [--pairs 10]

Prints each pair and the correlation of the replay's flash wait with 1 / the probe's rate (mean of the
probes before and after): near 1 if the host's speed moves slowly enough for a probe to track it.
Needs a calibrated host profile and an idle machine: it times real reads.
"""

from __future__ import annotations

import argparse

import numpy as np

from cosmosim import runner
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel
from cosmosim.host.flash_measure import _read_rate
from cosmosim.host.probe import probe_request_bytes
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile
from cosmosim.inputs.trace import load_trace
from cosmosim.scenario.settings import RunConfig

PROBE_S = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="traces/moe.npz")
    parser.add_argument("--arch", default="wearable-moe")
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    arch, profile = get_arch(args.arch), load_profile(host_profile_path())
    config = RunConfig(policy="lru", cache_experts=23, tokens=64)
    waits, rates = [], []
    with torch_threads(1), HostModel(arch, None) as model:
        scenario = runner.prepare(profile, load_trace(args.trace), arch, config)
        size, depth = model.layout.file_bytes, profile.flash.queue_depth
        request = probe_request_bytes(profile.flash, size)
        for pair in range(args.pairs):
            before = _read_rate(model.reader, size, request, depth, PROBE_S, pair)
            replayed = model.replay(scenario)
            after = _read_rate(model.reader, size, request, depth, PROBE_S, 1000 + pair)
            wait = replayed["breakdown"]["time_ms_per_token"]["flash_wait"]
            waits.append(wait)
            rates.append((before + after) / 2)
            print(f"probe {before / 1e6:5.0f} then {after / 1e6:5.0f} MB/s; replay TPOT {replayed['tpot_ms']['mean']:6.1f} ms, "
                  f"flash wait {wait:5.1f} ms, {replayed['flash_mb_per_token'] / wait * 1e3:5.0f} MB/s", flush=True)
    waits_ms, rate = np.array(waits), np.array(rates)
    print(f"correlation of flash wait with 1 / probe rate: {np.corrcoef(waits_ms, 1 / rate)[0, 1]:.2f}; "
          f"spread (max - min) / median: waits {np.ptp(waits_ms) / np.median(waits_ms):.0%}, probes {np.ptp(rate) / np.median(rate):.0%}")


if __name__ == "__main__":
    main()
