"""`cosmosim sweep` and `cosmosim report`: design-space sweeps into Parquet, and their plotly page."""

from __future__ import annotations

from pathlib import Path

import typer

from cosmosim.cli.app import app
from cosmosim.files import check_outputs, check_outside
from cosmosim.runner import ENGINES
from cosmosim.scenario.settings import choices
from cosmosim.sweep.dataset import export_csv, read_results
from cosmosim.sweep.execute import CONNECT_TIMEOUT_S, run_sweep


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec (TOML): the axes whose product is swept (docs/sweeps.md)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder (Parquet parts + sweep.json). Rerun with the same folder to resume."),
    engine: str = typer.Option(None, help=f"Engine: {choices(ENGINES)}. Default: the spec's `engine`, else des."),
    workers: int = typer.Option(1, help="Local worker processes."),
    scheduler: str = typer.Option(None, help="Dask scheduler address (e.g. tcp://10.0.0.5:8786): run on that cluster instead of local processes."),
    connect_timeout: float = typer.Option(CONNECT_TIMEOUT_S, help="Seconds to wait for the Dask scheduler to answer."),
    points_per_part: int = typer.Option(None, help="Points per Parquet part (the unit of work and of resuming). Default: sized from the work left."),
    csv: Path = typer.Option(None, "--csv", help="Also export every finished row as one CSV file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary line."),
) -> None:
    """Run every point of a spec's grid not yet in --out; parts are written atomically, so a killed sweep resumes.

    Example: cosmosim sweep examples/wearable_analytic.toml --out results/wearable --workers 2
    """
    check_outputs({"--csv": csv}, {"SPEC": spec})
    if csv is not None:
        check_outside(csv, out, "--csv")
    summary = run_sweep(spec, out, engine=engine, workers=workers, scheduler=scheduler, points_per_part=points_per_part,
                        progress=not quiet, connect_timeout_s=connect_timeout)
    if csv is not None:
        export_csv(read_results(out), csv)
    if not quiet:
        typer.echo(f"{summary.out_dir}: {summary.n_points} points ({summary.n_already_done} already done, "
                   f"{summary.n_computed} computed in {summary.elapsed_s:.1f} s with engine {summary.engine}"
                   + (f", {summary.n_errors} infeasible: see the `error` column" if summary.n_errors else "") + ")")
        if csv is not None:
            typer.echo(f"wrote {csv}")


@app.command()
def report(
    results: Path = typer.Argument(..., help="A sweep's results folder (from `cosmosim sweep --out`)."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML page to write (self-contained: plotly.js inlined)."),
    png_dir: Path = typer.Option(None, help="Also write each figure as PNG here (needs kaleido and chromium; skipped with a note when absent)."),
) -> None:
    """Draw a sweep's results: TPOT vs DRAM, hit rate vs cache size, BlES effects, Pareto fronts, breakdowns.

    Example: cosmosim report results/wearable --out report.html
    """
    from cosmosim.sweep.report import static_export_available, write_pngs, write_report  # plotly: only here

    check_outputs({"--out": out})
    for flag, path in (("--out", out), ("--png-dir", png_dir)):
        if path is not None:
            check_outside(path, results, flag)
    write_report(results, out)
    typer.echo(f"wrote {out}")
    if png_dir is not None:
        if not static_export_available():
            typer.echo("note: PNG export skipped: kaleido is not installed (pip install kaleido; apt-get install chromium)")
            return
        for path in write_pngs(read_results(results), png_dir):
            typer.echo(f"wrote {path}")
