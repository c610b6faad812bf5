"""Wall time of the example sweeps, for the README.

    python benchmarks/sweep_speed.py [--workers N] [SPEC ...] [--json [w.json]]   (default: both examples/ specs)

Each spec runs into a fresh temporary folder and the script prints its points, wall time and
points per second. When the spec's traces are missing (no recorded trace in traces/ yet), its trace
axis is pointed at a synthetic fixture trace of 32,768 tokens (19 layers, top-2 of 8, the size of a
shipped trace) and the output says SYNTHETIC.

`--json w.json` writes the case and, per spec, its points, wall time, points per second and
infeasible points to w.json; a bare `--json` (after the SPECs) prints that object to stdout and the
lines to stderr.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import tomllib
from pathlib import Path

from _report import add_json_option, emit, human_output, parse

from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace
from cosmosim.sweep.execute import run_sweep
from cosmosim.sweep.spec import spec_from_dict

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = [ROOT / "examples" / "wearable_analytic.toml", ROOT / "examples" / "wearable_des.toml"]


def fixture_trace(folder: Path) -> Path:
    trace = sticky_trace(n_tokens=32768, n_layers=19, seq_len=128, seed=0)
    trace.meta["target_arch"] = "wearable-moe"
    return save_trace(trace, folder / "synthetic.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", type=Path, default=EXAMPLES, metavar="SPEC",
                        help="sweep spec TOML files (default: examples/wearable_{analytic,des}.toml)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per sweep (default: 1)")
    add_json_option(parser, "the case and each spec's points, wall time and points per second")
    args = parse(parser)
    with human_output(args.json):
        report = measure(args)
    emit(args.json, report)


def measure(args: argparse.Namespace) -> dict:
    """Run every spec, print one line each, return the JSON object."""
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for spec_path in args.specs:
            data = tomllib.loads(spec_path.read_text())
            patterns = data["axes"].get("trace", [])
            found = [match for pattern in patterns for match in glob.glob(str(spec_path.parent / pattern))]
            synthetic = bool(patterns) and not found
            if synthetic:
                data["axes"]["trace"] = [str(fixture_trace(scratch))]
            spec = spec_from_dict(data, base_dir=spec_path.parent, source=str(spec_path))
            summary = run_sweep(spec, scratch / spec_path.stem, workers=args.workers, progress=False)
            label = "SYNTHETIC fixture trace" if synthetic else f"{len(spec.traces)} recorded trace(s)"
            print(f"{spec_path} ({label}, engine {summary.engine}, {args.workers} worker(s)): "
                  f"{summary.n_points} points in {summary.elapsed_s:.1f} s = {summary.n_points / summary.elapsed_s:.1f} "
                  f"points/s; {summary.n_errors} infeasible")
            results.append({"spec": str(spec_path), "synthetic": synthetic, "traces": len(spec.traces),
                            "engine": summary.engine, "points": summary.n_points, "elapsed_s": summary.elapsed_s,
                            "points_per_s": summary.n_points / summary.elapsed_s, "infeasible": summary.n_errors})
    return {"case": {"workers": args.workers}, "specs": results}


if __name__ == "__main__":
    main()
