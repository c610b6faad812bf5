"""Choose traces/bles.npz from the BlES ladder: the point with the largest ExRep cut against the
plain MoE mini at no more than 3% validation-loss cost; copy it with the choice recorded in meta.

    python scripts/select_bles.py --baseline traces/moe.npz traces/bles-l*-t*.npz [--out traces/bles.npz]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cosmosim.inputs.locality import exrep
from cosmosim.inputs.trace import load_trace, save_trace

MAX_LOSS_COST = 0.03  # the bound: at most 3% more validation loss than the baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ladder", nargs="+", type=Path)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("traces/bles.npz"))
    args = parser.parse_args()

    baseline = load_trace(args.baseline)
    base_exrep, _ = exrep(baseline.experts, baseline.positions)
    base_loss = baseline.meta["training"]["val_loss"]
    candidates = []
    for path in args.ladder:
        trace = load_trace(path)
        value, _ = exrep(trace.experts, trace.positions)
        cost = trace.meta["training"]["val_loss"] / base_loss - 1
        ok = cost <= MAX_LOSS_COST
        print(f"{path.name}: ExRep {value:.3f} (baseline {base_exrep:.3f}, cut x{base_exrep / value:.2f}), "
              f"val loss {cost:+.2%} {'ok' if ok else 'over the 3% bound'}")
        if ok:
            candidates.append((value, path, trace, cost))
    if not candidates:
        raise SystemExit("no ladder point is within 3% of the baseline's validation loss; bles.npz not written")
    value, path, trace, cost = min(candidates, key=lambda c: c[0])
    meta = {**trace.meta, "selection": {
        "rule": "largest ExRep cut against the baseline at <= 3% validation-loss cost",
        "chosen": path.name, "baseline": args.baseline.name, "exrep": value, "baseline_exrep": base_exrep,
        "val_loss_cost": cost, "ladder": [point.name for point in args.ladder],
        "candidates": [c[1].name for c in candidates]}}
    save_trace(dataclasses.replace(trace, meta=meta), args.out)
    print(f"wrote {args.out}: a copy of {path.name}")


if __name__ == "__main__":
    main()
