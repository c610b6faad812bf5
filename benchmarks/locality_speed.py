"""Time every locality statistic on a trace of the size the brief names: 32k tokens x 19 layers, top-2 of 8.

    python benchmarks/locality_speed.py [--tokens 32768] [--layers 19] [--sequence 512] [--stay 0.8] [--json [l.json]]

Two traces, each cut into sequences of `--sequence` tokens: uniformly random routing, and "sticky"
routing where each (token, layer) keeps the previous token's experts with probability `--stay`.

`--json l.json` writes the case and, per trace (`random`, `sticky`), each statistic's `seconds` and
the `summary` (`locality_summary`'s object) to l.json; a bare `--json` prints that object to stdout
and the table to stderr.
"""

import argparse
import time

import numpy as np
from _report import add_json_option, emit, human_output, parse

from cosmosim.inputs.locality import (
    delta_uniform,
    exrep,
    format_summary,
    locality_summary,
    random_routing,
    reuse_distances,
    reuse_histogram,
    sch,
    srp,
)


def sticky_routing(n_tokens: int, n_layers: int, stay: float, seed: int) -> np.ndarray:
    """Random top-2-of-8 routing where a (token, layer) repeats the previous token's choice with probability `stay`."""
    fresh = random_routing((n_tokens, n_layers, 2), 8, seed)
    keeps = np.random.default_rng(seed + 1).random((n_tokens, n_layers)) < stay
    keeps[0] = False
    # Each (token, layer) copies the last token at or before it that drew fresh experts.
    source = np.maximum.accumulate(np.where(keeps, 0, np.arange(n_tokens)[:, None]), axis=0)
    return np.take_along_axis(fresh, source[:, :, None], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768, help="tokens in each trace (default: 32768)")
    parser.add_argument("--layers", type=int, default=19, help="MoE layers in each trace (default: 19)")
    parser.add_argument("--sequence", type=int, default=512, help="tokens per sequence (default: 512)")
    parser.add_argument("--stay", type=float, default=0.8,
                        help="sticky trace: the probability that a (token, layer) keeps the previous token's "
                             "experts (default: 0.8)")
    add_json_option(parser, "the case and each statistic's seconds and summary per trace")
    args = parse(parser)
    with human_output(args.json):
        report = measure(args)
    emit(args.json, report)


def measure(args: argparse.Namespace) -> dict:
    """Time every statistic on both traces, print the table, return the JSON object."""
    positions = np.arange(args.tokens) % args.sequence
    statistics = {  # JSON key: (label in the table, the statistic)
        "exrep": ("exrep", lambda e: exrep(e, positions)),
        "delta_uniform": ("delta_uniform", lambda e: delta_uniform(e, 8)),
        "reuse_distances": ("reuse distances", lambda e: reuse_histogram(reuse_distances(e, positions, 8), 8)),
        "srp_m16": ("srp m=16", lambda e: srp(e, positions, 8, 16)),
        "sch_rho2_m16": ("sch rho=2 m=16", lambda e: sch(e, positions, 8, 2.0, 16)),
        "summary": ("summary (both + baselines)", lambda e: locality_summary(e, positions, 8)),
    }
    traces = {"random": ("random", random_routing((args.tokens, args.layers, 2), 8, seed=1)),  # baseline: seed 0
              "sticky": (f"sticky {args.stay}", sticky_routing(args.tokens, args.layers, args.stay, 0))}
    results = {}
    for name, (trace_label, experts) in traces.items():
        print(f"{trace_label} routing, {args.tokens} tokens x {args.layers} layers, sequences of {args.sequence}")
        seconds = {}
        for key, (label, run) in statistics.items():
            start = time.perf_counter()
            run(experts)
            seconds[key] = time.perf_counter() - start
            print(f"  {label:<28}{seconds[key]:8.3f} s")
        summary = locality_summary(experts, positions, 8)
        print(format_summary(summary))
        results[name] = {"seconds": seconds, "summary": summary}
    return {"case": {"tokens": args.tokens, "layers": args.layers, "sequence": args.sequence, "stay": args.stay},
            "traces": results}


if __name__ == "__main__":
    main()
