"""Calibrate's flash measurements: cold reads of a scratch file (`replay.storage.ColdReader`).

Throughput of REQUEST_BYTES reads at each queue depth (the smallest depth within KNEE of the best is
the profile's queue depth), throughput by read size from 4 KiB to 8 MiB at that depth, and the
median time of an all-miss step's reads (top-k experts issued together, as replay issues them), to
which the model's per-request latency is fitted.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import numpy as np

from cosmosim.device.hardware import idle_flash_read_times
from cosmosim.engines.replay.run import Progress
from cosmosim.engines.replay.storage import (
    ALIGN,
    ColdReader,
    aligned_buffer,
    scratch_folder,
    submit_read,
    warm_storage,
    write_durably,
)
from cosmosim.host.effort import Effort
from cosmosim.inputs.profiles import FlashSpec
from cosmosim.units import KIB, MIB

CURVE_SIZES = tuple(4 * KIB * 2**i for i in range(12))  # 4 KiB .. 8 MiB
QUEUE_DEPTHS = (1, 2, 4, 8, 16, 32)
REQUEST_BYTES = MIB  # replay splits an expert read into requests of this size: the profile's max_request_kib
KNEE = 0.9  # a queue depth "reaches" the device when it gives this share of the best throughput
MIN_LATENCY_S = 1e-6  # the floor of the fitted flash latency (a profile's figures must be > 0)
STEP_GAP_S = 0.002  # between steps' reads: the CPU computes (a busy wait, not a sleep) and the device drains


def _read_rate(reader: ColdReader, file_bytes: int, read_bytes: int, depth: int, seconds: float, seed: int) -> float:
    """Bytes/s of random aligned reads of `read_bytes`, kept `depth` in flight the way replay issues
    them: submitted to a pool of I/O threads and collected as they complete, so the thread
    hand-offs a replayed miss pays are in the figure too."""
    n_positions, rng = file_bytes // read_bytes, np.random.default_rng(seed)
    buffers = [memoryview(aligned_buffer(read_bytes)) for _ in range(depth)]
    in_flight: dict[Future, memoryview] = {}
    reads, start = 0, time.perf_counter()
    with ThreadPoolExecutor(depth) as pool:
        while reads < 2 * depth or time.perf_counter() - start < seconds:
            while buffers:
                buffer = buffers.pop()
                in_flight[pool.submit(reader.read_into, buffer, int(rng.integers(n_positions)) * read_bytes)] = buffer
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for read in done:
                read.result()
                buffers.append(in_flight.pop(read))
                reads += 1
        wait(in_flight)
    return (reads + len(in_flight)) * read_bytes / (time.perf_counter() - start)


def _step_read_s(reader: ColdReader, file_bytes: int, nbytes: int, n_reads: int, request: int, depth: int,
                 n_steps: int, seed: int) -> float:
    """Median seconds to read `n_reads` experts of `nbytes` at random aligned offsets, all issued at
    once in requests of `request` bytes with up to `depth` in flight, then a busy STEP_GAP_S: how
    replay reads an all-miss decode step's experts and then computes (measured on a 2-vCPU VM, reads
    spaced by sleeps took up to 2 ms longer each than reads spaced by work, so the gap is work)."""
    buffers = [memoryview(aligned_buffer(nbytes)) for _ in range(n_reads)]
    positions, rng, times = (file_bytes - nbytes) // ALIGN, np.random.default_rng(seed), []
    clock = time.perf_counter
    with ThreadPoolExecutor(depth) as pool:
        for _ in range(n_steps):
            offsets = [int(position) * ALIGN for position in rng.integers(positions, size=n_reads)]
            start = clock()
            reads = [read for buffer, offset in zip(buffers, offsets) for read in submit_read(pool, reader, buffer, offset, request)]
            for read in reads:
                read.result()
            done = clock()
            times.append(done - start)
            while clock() - done < STEP_GAP_S:
                pass
    return float(np.median(times))


def measure_flash(directory: Path | None, effort: Effort, progress: Progress, expert_bytes: int,
                  expert_file_bytes: int, top_k: int, prefer_direct: bool = True,
                  queue_depth: int | None = None) -> dict:
    """The read curve, queue depth and single-read time, and the median time of an all-miss step's
    reads (`top_k` experts of `expert_bytes`, 4 KiB aligned, issued together), from which calibrate
    fits the latency; all on a test file the size of replay's expert file (`Effort.flash_file_bytes`),
    warmed as replay warms it. A given `queue_depth` is kept instead of measured (validate calibrates
    again between its passes with the depth its replays use)."""
    file_bytes = effort.flash_file_bytes(expert_file_bytes)
    sizes = [size for size in CURVE_SIZES if size <= file_bytes // 8]
    request = min(REQUEST_BYTES, sizes[-1])
    with scratch_folder(directory, file_bytes, "calibrate's flash test file") as folder:
        path = folder / "flash-test.bin"
        rng = np.random.default_rng(0)  # random bytes: storage that compresses or dedupes zeros would flatter us
        progress(f"flash: writing a {file_bytes / MIB:.0f} MiB test file in {folder}")
        write_durably(path, (rng.bytes(MIB) for _ in range(file_bytes // MIB)))
        with ColdReader(path, prefer_direct) as reader:
            warm_storage(reader, file_bytes)
            by_depth = {}
            for depth in QUEUE_DEPTHS if queue_depth is None else (queue_depth,):
                progress(f"flash: {request // KIB} KiB reads, {depth} in flight")
                by_depth[depth] = _read_rate(reader, file_bytes, request, depth, effort.seconds_per_point, depth)
            best = max(by_depth.values())
            depth = min(d for d, rate in by_depth.items() if rate >= KNEE * best)
            curve = []
            for size in sizes:
                progress(f"flash: {size // KIB} KiB reads, {depth} in flight")
                curve.append((size, _read_rate(reader, file_bytes, size, depth, effort.seconds_per_point, size)))
            progress("flash: one 4 KiB read at a time")
            single_read_s = sizes[0] / _read_rate(reader, file_bytes, sizes[0], 1, effort.seconds_per_point, 7)
            expert_bytes = min(expert_bytes, file_bytes // (2 * top_k))
            progress(f"flash: an all-miss step's reads, {top_k} experts of {expert_bytes / MIB:.2f} MiB at once")
            step_read_s = _step_read_s(reader, file_bytes, expert_bytes, top_k, request, depth, effort.step_reads, 11)
            mode, filesystem = reader.mode, reader.filesystem
    return {"read_mode": mode, "filesystem": filesystem, "test_file_bytes": file_bytes, "queue_depth": depth,
            "queue_depth_given": queue_depth is not None, "request_bytes": request,
            "throughput_by_depth": by_depth, "curve": curve, "single_read_s": single_read_s,
            "expert_read_bytes": expert_bytes, "step_reads": top_k, "step_read_s": step_read_s,
            "latency_s": MIN_LATENCY_S}


def fit_latency(spec: FlashSpec, nbytes: int, n_reads: int, measured_s: float) -> float:
    """The per-request latency at which the flash model reads `n_reads` reads of `nbytes` issued
    together on an idle device in `measured_s` (bisection: the model's read time grows with the
    latency). The curve is measured with requests always in flight, so it hides the wait a step's
    first requests pay; this puts it back. MIN_LATENCY_S when even that is too slow."""
    def model_s(latency_s: float) -> float:
        return idle_flash_read_times(replace(spec, latency_s=latency_s), nbytes, n_reads)[-1]

    low, high = MIN_LATENCY_S, measured_s
    if model_s(low) >= measured_s:
        return MIN_LATENCY_S
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if model_s(middle) < measured_s else (low, middle)
    return high
