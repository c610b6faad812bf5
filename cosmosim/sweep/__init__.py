"""Design-space sweeps: a TOML spec's axes, their product, a resumable Parquet results folder.

    spec = load_spec("examples/wearable_des.toml")
    summary = run_sweep(spec, "results/", workers=2)     # or scheduler="tcp://host:8786"
    frame = read_results("results/")                     # one tidy row per point

Modules, in data-flow order: `spec` (parse and check), `grid` (points), `evaluate` (a point's
row), `dataset` (part files, manifest, fingerprint), `execute` (local, process pool or Dask).
"""

from cosmosim.sweep.dataset import export_csv, read_results
from cosmosim.sweep.evaluate import COLUMNS
from cosmosim.sweep.execute import SweepSummary, run_sweep
from cosmosim.sweep.grid import Point, grid
from cosmosim.sweep.spec import SweepSpec, load_spec, spec_from_dict

__all__ = ["COLUMNS", "Point", "SweepSpec", "SweepSummary", "export_csv", "grid", "load_spec", "read_results",
           "run_sweep", "spec_from_dict"]
