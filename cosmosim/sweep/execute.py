"""Run a sweep: the points not yet in the results folder, in parts, here or on many workers.

Three ways to compute parts, one loop that writes them: in this process (`workers=1`), on a local
process pool (`workers=N`), or on a Dask distributed cluster (`scheduler=ADDRESS`). Workers only
compute rows; this process writes every part (workers need not share its disk, only the trace
and profile paths, whose checksums they verify), so the folder has a single writer.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cosmosim.errors import InputError
from cosmosim.files import exclusive_folder
from cosmosim.runner import ENGINES
from cosmosim.sweep.dataset import done_point_ids, open_results, write_part
from cosmosim.sweep.evaluate import evaluate_part
from cosmosim.sweep.grid import Point, grid
from cosmosim.sweep.spec import SweepSpec, load_spec

DEFAULT_ENGINE = "des"
PARTS_PER_WORKER = 8  # enough parts to balance the load and to lose little to a kill
MAX_POINTS_PER_PART = 50
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SweepSummary:
    out_dir: Path
    fingerprint: str
    engine: str
    n_points: int
    n_already_done: int  # found in the folder when this run started
    n_computed: int  # by this run
    n_errors: int  # of the points this run computed: rows with an `error` (infeasible combinations)
    parts_written: int
    elapsed_s: float


def _chunks(points: list[Point], size: int) -> list[list[Point]]:
    return [points[i:i + size] for i in range(0, len(points), size)]


def _in_process(parts: list[list[Point]], engine: str) -> Iterator[pd.DataFrame]:
    for part in parts:
        yield evaluate_part(part, engine)


def _exit_with(sweep_pid: int) -> None:
    """Pool initializer: end this worker once the sweep process is gone (a SIGKILL skips its
    clean-up), instead of idling forever on a queue nobody will fill."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(sweep_pid, 0)
            except ProcessLookupError:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _process_pool(parts: list[list[Point]], engine: str, workers: int) -> Iterator[pd.DataFrame]:
    # forkserver: workers start from a clean interpreter, not a fork of this (possibly threaded) one.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                             initializer=_exit_with, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(evaluate_part, part, engine) for part in parts]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(cancel_futures=True)


def connect_scheduler(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A Dask client of the scheduler at `address`, or an InputError after `timeout_s`."""
    try:
        from distributed import Client  # deferred: only a Dask sweep needs it
    except ImportError:
        raise InputError("--scheduler: needs Dask's distributed package (pip install 'dask[distributed]')") from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise InputError(f"--scheduler {address}: no Dask scheduler answered within {timeout_s:g} s ({reason})") from None


def _dask(parts: list[list[Point]], engine: str, client) -> Iterator[pd.DataFrame]:
    from distributed import as_completed as dask_completed

    futures = client.map(evaluate_part, parts, engine=engine, pure=False)
    try:
        for future in dask_completed(futures, loop=client.loop):
            yield future.result()
    finally:
        client.cancel(futures)


def run_sweep(spec: SweepSpec | str | Path, out_dir: str | Path, *, engine: str | None = None, workers: int = 1,
              scheduler: str | None = None, points_per_part: int | None = None, progress: bool = True,
              connect_timeout_s: float = CONNECT_TIMEOUT_S,
              on_part_written: Callable[[Path], None] | None = None) -> SweepSummary:
    """Compute every point of `spec` not yet in `out_dir` and write them as Parquet parts.

    `engine`: None takes the spec's, else "des". `workers` > 1 uses local processes; `scheduler`
    (a Dask address such as tcp://127.0.0.1:8786) uses that cluster instead. `points_per_part`
    None sizes parts from the work left. `on_part_written(path)` is called after each part is on
    disk (progress reporting; the tests stop a sweep there to check resuming).
    """
    started = time.perf_counter()
    spec = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    engine = engine or spec.engine or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if not (isinstance(connect_timeout_s, (int, float)) and math.isfinite(connect_timeout_s) and connect_timeout_s > 0):
        raise InputError(f"--connect-timeout: expected a finite number of seconds > 0, got {connect_timeout_s!r}")
    if workers < 1:
        raise InputError(f"--workers: expected >= 1, got {workers}")
    if points_per_part is not None and points_per_part < 1:
        raise InputError(f"--points-per-part: expected >= 1, got {points_per_part}")
    if scheduler is not None and workers > 1:
        raise InputError("--workers and --scheduler: give one; the Dask cluster has its own workers")

    out_dir = Path(out_dir)
    points = grid(spec)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file, not a results folder; choose another --out")
    client = connect_scheduler(scheduler, connect_timeout_s) if scheduler is not None else None
    try:
        with exclusive_folder(out_dir, "--out"):
            return _run_locked(spec, out_dir, points, engine, workers, client, points_per_part, progress,
                               on_part_written, started)
    finally:
        if client is not None:
            client.close()


def _run_locked(spec: SweepSpec, out_dir: Path, points: list[Point], engine: str, workers: int, client,
                points_per_part: int | None, progress: bool, on_part_written: Callable[[Path], None] | None,
                started: float) -> SweepSummary:
    """The sweep itself, run while this process holds `out_dir`."""
    manifest = open_results(out_dir, spec, engine, len(points))
    done = done_point_ids(out_dir)
    todo = [point for point in points if point.point_id not in done]
    n_workers = sum(client.nthreads().values()) if client is not None else workers
    size = points_per_part or max(1, min(MAX_POINTS_PER_PART, math.ceil(len(todo) / (PARTS_PER_WORKER * n_workers))))
    parts = _chunks(todo, size)
    if client is not None:
        frames = _dask(parts, engine, client)
    elif workers > 1 and len(parts) > 1:
        frames = _process_pool(parts, engine, workers)
    else:
        frames = _in_process(parts, engine)
    n_computed = n_errors = n_parts = 0
    with tqdm(total=len(points), initial=len(points) - len(todo), unit="point", desc=f"sweep {spec.name}",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for rows in frames:
                path = write_part(out_dir, rows)
                n_parts += 1
                n_computed += len(rows)
                n_errors += int(rows["error"].notna().sum())
                bar.update(len(rows))
                if on_part_written is not None:
                    on_part_written(path)
        finally:
            frames.close()  # an interrupted sweep cancels the parts not yet started
    return SweepSummary(out_dir=out_dir, fingerprint=manifest["fingerprint"], engine=engine, n_points=len(points),
                        n_already_done=len(points) - len(todo), n_computed=n_computed, n_errors=n_errors,
                        parts_written=n_parts, elapsed_s=time.perf_counter() - started)
