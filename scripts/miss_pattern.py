"""Where a validation report's flash wait goes: per decode layer that misses one expert, and per one
that misses two, measured against predicted.

For each case of `cosmosim validate --json REPORT`, walks the case's workload through its own cache
(the engines' `ExpertCache` and policy, as replay does) and counts, per decode token, the layers that
miss one and two experts. A least-squares fit of each case's flash wait per token on those two counts
then gives the milliseconds a single-miss and a double-miss layer cost, measured and as the engines
priced them. The flash model prices a double miss at about twice a single one (its reads share one
channel); a host where two reads in flight go faster than one shows a ratio well under 2.

    python scripts/miss_pattern.py v.json [v2.json ...]

Needs the traces the report names and the host profile (`cosmosim calibrate`); times nothing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cosmosim import runner
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import load_profile
from cosmosim.inputs.trace import load_trace
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE


def miss_layers_per_token(scenario) -> tuple[float, float]:
    """Decode layers per decode token that miss exactly one and exactly two experts."""
    workload, cache = scenario.workload, scenario.expert_cache()
    keys, offsets, counts = workload.access_key.tolist(), workload.step_offsets.tolist(), [0, 0, 0]
    for step, kind in enumerate(workload.step_kind.tolist()):
        step_keys, misses = keys[offsets[step]:offsets[step + 1]], 0
        for clock, key in enumerate(step_keys, start=offsets[step]):
            if key not in cache:
                cache.insert(key, clock, 0.0, set(step_keys) if kind == DECODE else {key})
                misses += 1
            cache.touch(key, clock)
        if kind == DECODE:
            counts[min(misses, 2)] += 1
    return counts[1] / workload.n_decode_tokens, counts[2] / workload.n_decode_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="`cosmosim validate --json` reports")
    for path in parser.parse_args().reports:
        report = json.load(open(path))
        arch, profile = get_arch(report["arch"]), load_profile(report["profile"])
        rows = []
        for case in report["cases"]:
            cache = None if case["policy"] == "kactive" else case["cache_experts"]
            config = RunConfig(policy=case["policy"], cache_experts=cache, tokens=report["tokens_per_replay"])
            single, double = miss_layers_per_token(runner.prepare(profile, load_trace(case["trace"]), arch, config))
            wait = case["parts_ms"]["flash_wait"]
            rows.append((case["policy"], single, double, wait["measured"], wait["des"]))
        counts = np.array([[row[1], row[2]] for row in rows])
        fits = {name: np.linalg.lstsq(counts, np.array([row[column] for row in rows]), rcond=None)[0]
                for name, column in (("measured", 3), ("predicted", 4))}
        print(f"{path}: ms of flash wait per single-miss and per double-miss layer")
        for name, (single, double) in fits.items():
            print(f"  {name:9s} {single:6.3f} {double:6.3f}   ratio {double / single:.2f}")
        for policy in dict.fromkeys(row[0] for row in rows):
            mine = [row for row in rows if row[0] == policy]
            print(f"  {policy:8s} single / double-miss layers per token: {np.mean([r[1] for r in mine]):.1f} / "
                  f"{np.mean([r[2] for r in mine]):.1f}; measured / predicted wait "
                  f"{np.median([r[3] / r[4] for r in mine]):.2f}")


if __name__ == "__main__":
    main()
