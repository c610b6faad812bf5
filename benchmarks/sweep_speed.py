"""Wall time of the example sweeps, for the README.

    python benchmarks/sweep_speed.py [--workers N] [SPEC ...]      (default: both examples/ specs)

Each spec runs into a fresh temporary folder and the script prints its points, wall time and
points per second. When the spec's traces are missing (no recorded trace in traces/ yet), its trace
axis is pointed at a synthetic fixture trace of 32,768 tokens (19 layers, top-2 of 8, the size of a
shipped trace) and the output says SYNTHETIC.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import tomllib
from pathlib import Path

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
    parser.add_argument("specs", nargs="*", type=Path, default=EXAMPLES)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
