"""Design-space sweeps: a TOML spec's axes, their product, a resumable Parquet results folder.

    from cosmosim.sweep.spec import load_spec; from cosmosim.sweep.execute import run_sweep
    from cosmosim.sweep.dataset import read_results

    spec = load_spec("examples/wearable_des.toml")
    summary = run_sweep(spec, "results/", workers=2)     # or scheduler="tcp://host:8786"
    frame = read_results("results/")                     # one tidy row per point

Modules, in data-flow order: `spec` (parse and check), `grid` (points), `evaluate` (a point's
row), `dataset` (part files, manifest, fingerprint), `execute` (local, process pool or Dask), then `analysis` and `report`.
"""
