"""Does the analytic model agree with the discrete-event simulator? (issue 4, item 4)

For every trace (default: traces/*.npz) x {phone, wearable} x {LRU and Belady at 4 cache sizes,
kactive}, without prefetch, run both engines and compare. A case passes when the decode and prefill
hit counts are equal and the mean TPOT differs by at most 3%. Prints one row per case, then the
median and maximum errors; exits 1 when any case fails.

With no trace under traces/ (or with --synthetic), it runs the test fixture's sticky trace instead,
built in memory and labelled as such.

    python benchmarks/agreement.py [TRACE ...] [--tokens N] [--synthetic] [--json [g.json]]

Every shipped trace at full length takes about 15 minutes; one TRACE with a small --tokens, e.g.
`traces/moe.npz --tokens 256`, takes seconds. `--json g.json` writes the case, every case's row and
the totals (`hits_equal`, `tpot_error_median`, `tpot_error_max`, `failed`) to g.json; a bare `--json`
(after the TRACEs) prints that object to stdout and the table to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _report import add_json_option, emit, human_output, parse

from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import Trace, load_trace
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig

ROOT = Path(__file__).resolve().parent.parent

PROFILES = ("phone", "wearable")
CACHE_FRACTIONS = (0.125, 0.25, 0.5, 0.75)  # of all the architecture's experts
TPOT_TOLERANCE = 0.03
DEFAULT_ARCH = "wearable-moe"  # for a trace that names no target architecture (19 layers, top-2 of 8)


def cases(trace: Trace, tokens: int | None) -> list[tuple[str, str, RunConfig]]:
    """(profile, arch, config) of every case for one trace."""
    from cosmosim.inputs.arch import get_arch

    arch = get_arch(trace.meta.get("target_arch") or DEFAULT_ARCH)
    all_experts = arch.n_layers * arch.n_experts
    sizes = sorted({max(arch.top_k, round(f * all_experts)) for f in CACHE_FRACTIONS})
    configs = [RunConfig(policy=policy, cache_experts=size, tokens=tokens) for policy in ("lru", "belady") for size in sizes]
    configs.append(RunConfig(policy="kactive", tokens=tokens))
    return [(profile, arch.name, config) for profile in PROFILES for config in configs]


def compare(name: str, trace: Trace, profile: str, arch: str, config: RunConfig) -> dict:
    des = run(profile, trace, arch, config, engine="des")
    analytic = run(profile, trace, arch, config, engine="analytic")
    hits_equal = all(des["accesses"][key] == analytic["accesses"][key] for key in ("hit", "miss", "prefill", "prefill_miss"))
    tpot_error = analytic["tpot_ms"]["mean"] / des["tpot_ms"]["mean"] - 1
    ttft_error = analytic["ttft_ms"] / des["ttft_ms"] - 1
    p99_error = analytic["tpot_ms"]["p99"] / des["tpot_ms"]["p99"] - 1
    return {"trace": name, "profile": profile, "arch": arch, "policy": config.policy,
            "cache": des["inputs"]["cache_experts"], "hits_des": des["accesses"]["hit"],
            "hits_analytic": analytic["accesses"]["hit"], "hits_equal": hits_equal,
            "tpot_des_ms": des["tpot_ms"]["mean"], "tpot_error": tpot_error, "ttft_error": ttft_error,
            "p99_error": p99_error, "passed": hits_equal and abs(tpot_error) <= TPOT_TOLERANCE}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="*", type=Path, help="trace files (default: traces/*.npz)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="replay at most this many tokens per run (default: every token)")
    parser.add_argument("--synthetic", action="store_true", help="also run the test fixture's sticky trace")
    add_json_option(parser, "the case, every case's row and the totals")
    args = parse(parser)
    with human_output(args.json):
        report = measure(args)
    emit(args.json, report)
    return 1 if report["failed"] else 0


def measure(args: argparse.Namespace) -> dict:
    """Run every case on both engines, print the table, return the JSON object."""
    paths = args.traces or sorted((ROOT / "traces").glob("*.npz"))
    traces = [(path.name, load_trace(path)) for path in paths]
    if args.synthetic or not traces:
        if not traces:
            print("no trace under traces/: running the synthetic fixture trace only")
        traces.append(("sticky fixture (synthetic, in memory)", sticky_trace(n_tokens=8192, n_layers=19, seed=0)))

    header = (f"{'trace':<38} {'profile':<8} {'arch':<13} {'policy':<8} {'cache':>5} {'hits des':>9} "
              f"{'analytic':>9} {'TPOT des ms':>11} {'TPOT err':>9} {'TTFT err':>9} {'p99 err':>9}  result")
    print(header)
    rows = []
    for name, trace in traces:
        for profile, arch, config in cases(trace, args.tokens):
            row = compare(name, trace, profile, arch, config)
            rows.append(row)
            print(f"{row['trace'][:38]:<38} {profile:<8} {arch:<13} {row['policy']:<8} {row['cache']:>5} "
                  f"{row['hits_des']:>9} {row['hits_analytic']:>9} {row['tpot_des_ms']:>11.4f} "
                  f"{row['tpot_error']:>+9.2e} {row['ttft_error']:>+9.2e} {row['p99_error']:>+9.2e}  "
                  f"{'ok' if row['passed'] else 'FAIL'}", flush=True)
    errors = [abs(row["tpot_error"]) for row in rows]
    failed = [row for row in rows if not row["passed"]]
    print(f"\n{len(rows)} cases over {len(traces)} trace(s); hit counts equal in "
          f"{sum(row['hits_equal'] for row in rows)}; mean TPOT |error|: median {statistics.median(errors):.2e}, "
          f"max {max(errors):.2e} (tolerance {TPOT_TOLERANCE:.0%})")
    print("all cases agree" if not failed else f"{len(failed)} case(s) FAILED")
    return {"case": {"traces": [name for name, _ in traces], "tokens": args.tokens, "tpot_tolerance": TPOT_TOLERANCE},
            "cases": rows, "n_cases": len(rows), "hits_equal": sum(row["hits_equal"] for row in rows),
            "tpot_error_median": statistics.median(errors), "tpot_error_max": max(errors), "failed": len(failed)}


if __name__ == "__main__":
    sys.exit(main())
