"""`cosmosim calibrate`: measure this host and write its device profile.

The profile has exactly the schema of the shipped ones (docs/device-profiles.md); where a shipped
profile cites a spec sheet or a paper, the host's cites the measurement that produced the number.
Beside it, `host.json` keeps the calibration record: every raw figure, and the settings replay
must share with it (architecture shapes, dtype, torch threads, read mode).

What is measured, in order:

1. flash: a scratch file is read cold (`replay.storage.ColdReader`) from a pool of threads:
   throughput of REQUEST_BYTES reads at each queue depth (the smallest depth within KNEE of the
   best is the profile's queue depth), throughput by read size from 4 KiB to 8 MiB at that depth,
   and the latency of one 4 KiB read at depth 1, less its transfer time;
2. DRAM: torch copy bandwidth, counting bytes read plus bytes written (STREAM's convention);
3. compute: `F.linear` at every matrix shape of one decoded token (GEMV) and of a prompt (GEMM),
   in bfloat16, over enough distinct weights to defeat the CPU caches, net of the per-call cost
   of a tiny matrix (that cost is part of the per-layer overhead instead);
4. the per-layer overhead of a Python/torch decode step: replay itself, on a twin of the
   architecture with every matrix tiny, whose decode time is therefore all overhead.

Energy cannot be measured without a power meter: that section carries cited estimates.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cosmosim.arch import Architecture, get_arch
from cosmosim.errors import InputError
from cosmosim.io import atomic_write_json, atomic_write_text
from cosmosim.locality import random_routing
from cosmosim.profiles import DeviceProfile, load_profile, profile_from_dict
from cosmosim.replay import HostModel, Progress, host_profile_path, scaled_arch
from cosmosim.replay.compute import default_threads, torch_threads
from cosmosim.replay.storage import ColdReader, aligned_buffer, available_memory_bytes, scratch_folder, write_durably
from cosmosim.replay.weights import DTYPE, DTYPE_NAME, expert_shapes
from cosmosim.runner import prepare
from cosmosim.scenario import RunConfig
from cosmosim.trace import SCHEMA_VERSION, Trace

KIB, MIB, GIB = 1024, 1024**2, 1024**3
CURVE_SIZES = tuple(4 * KIB * 2**i for i in range(12))  # 4 KiB .. 8 MiB
QUEUE_DEPTHS = (1, 2, 4, 8, 16, 32)
REQUEST_BYTES = MIB  # replay splits an expert read into requests of this size: the profile's max_request_kib
KNEE = 0.9  # a queue depth "reaches" the device when it gives this share of the best throughput
TINY = 8  # matrix side whose F.linear costs only the call


@dataclass(frozen=True)
class Effort:
    """How big and how long each measurement is."""

    name: str
    file_bytes: int  # the flash test file
    seconds_per_point: float  # each throughput figure
    dram_bytes: int  # the copied buffer
    working_set_bytes: int  # distinct weights per matrix shape: more than the CPU's last-level cache
    overhead_tokens: int  # decoded tokens of the overhead twin


FULL = Effort("full", 1 * GIB, 0.5, 256 * MIB, 128 * MIB, 64)
QUICK = Effort("quick", 16 * MIB, 0.02, 8 * MIB, 2 * MIB, 12)


# ----------------------------------------------------------------------------- flash
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


def measure_flash(directory: Path | None, effort: Effort, progress: Progress, prefer_direct: bool = True) -> dict:
    sizes = [size for size in CURVE_SIZES if size <= effort.file_bytes // 8]
    request = min(REQUEST_BYTES, sizes[-1])
    with scratch_folder(directory, effort.file_bytes, "calibrate's flash test file") as folder:
        path = folder / "flash-test.bin"
        rng = np.random.default_rng(0)  # random bytes: storage that compresses or dedupes zeros would flatter us
        progress(f"flash: writing a {effort.file_bytes / MIB:.0f} MiB test file in {folder}")
        write_durably(path, (rng.bytes(MIB) for _ in range(effort.file_bytes // MIB)))
        with ColdReader(path, prefer_direct) as reader:
            by_depth = {}
            for depth in QUEUE_DEPTHS:
                progress(f"flash: {request // KIB} KiB reads, {depth} in flight")
                by_depth[depth] = _read_rate(reader, effort.file_bytes, request, depth, effort.seconds_per_point, depth)
            best = max(by_depth.values())
            depth = min(d for d, rate in by_depth.items() if rate >= KNEE * best)
            curve = []
            for size in sizes:
                progress(f"flash: {size // KIB} KiB reads, {depth} in flight")
                curve.append((size, _read_rate(reader, effort.file_bytes, size, depth, effort.seconds_per_point, size)))
            progress("flash: one 4 KiB read at a time")
            single_read_s = sizes[0] / _read_rate(reader, effort.file_bytes, sizes[0], 1, effort.seconds_per_point, 7)
            mode, filesystem = reader.mode, reader.filesystem
    transfer_s = sizes[0] / curve[0][1]
    return {"read_mode": mode, "filesystem": filesystem, "queue_depth": depth, "request_bytes": request,
            "throughput_by_depth": by_depth, "curve": curve, "single_read_s": single_read_s,
            "latency_s": max(single_read_s - transfer_s, 1e-6)}


# ----------------------------------------------------------------------------- DRAM and compute
def measure_dram(effort: Effort) -> float:
    """Copy bandwidth in bytes/s, counting the bytes read and the bytes written."""
    source = torch.ones(effort.dram_bytes // DTYPE.itemsize, dtype=DTYPE)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults are not bandwidth
    copies, start = 0, time.perf_counter()
    while copies < 2 or time.perf_counter() - start < effort.seconds_per_point:
        target.copy_(source)
        copies += 1
    return 2 * effort.dram_bytes * copies / (time.perf_counter() - start)


def matmul_shapes(arch: Architecture) -> dict[tuple[int, int], int]:
    """Every weight matrix [out, in] one decoded token multiplies, with how many times it does."""
    d, kv, layers = arch.d_model, arch.n_kv_heads * arch.head_dim, arch.n_layers
    uses: dict[tuple[int, int], int] = {}
    matrices = [((d, d), layers), ((kv, d), layers), ((kv, d), layers), ((d, d), layers),
                ((arch.n_experts, d), layers), ((arch.vocab_size, d), 1)]
    matrices += [(shape, layers * arch.top_k) for shape in expert_shapes(arch)]
    for shape, count in matrices:
        uses[shape] = uses.get(shape, 0) + count
    return uses


def _seconds_per_linear(rows: int, shape: tuple[int, int], effort: Effort) -> float:
    n_copies = max(1, math.ceil(effort.working_set_bytes / (shape[0] * shape[1] * DTYPE.itemsize)))
    base = torch.randn(shape, dtype=DTYPE)
    weights = [base.clone() for _ in range(n_copies)]  # distinct memory is what the caches see
    x = torch.randn(rows, shape[1], dtype=DTYPE)
    for weight in weights:  # first touch
        F.linear(x, weight)
    calls, start = 0, time.perf_counter()
    while calls < n_copies or time.perf_counter() - start < effort.seconds_per_point:
        F.linear(x, weights[calls % n_copies])
        calls += 1
    return (time.perf_counter() - start) / calls


def measure_matmul(arch: Architecture, rows: int, effort: Effort, progress: Progress) -> tuple[float, list[dict]]:
    """FLOP/s of `rows`-row products at the architecture's shapes, weighted by use per token."""
    call_s = _seconds_per_linear(rows, (TINY, TINY), effort)
    flops = seconds = 0.0
    per_shape = []
    for (out, inp), uses in matmul_shapes(arch).items():
        progress(f"compute: {rows} x {inp} by {inp} x {out} ({DTYPE_NAME})")
        net_s = max(_seconds_per_linear(rows, (out, inp), effort) - call_s, 1e-9)
        flops += uses * 2 * rows * out * inp
        seconds += uses * net_s
        per_shape.append({"out": out, "in": inp, "uses_per_token": uses, "flops_per_s": 2 * rows * out * inp / net_s})
    return flops / seconds, per_shape


# ----------------------------------------------------------------------------- per-layer overhead
def tiny_twin(arch: Architecture) -> Architecture:
    """`arch` with every matrix tiny but the same layers, heads, experts and top-k: the same
    sequence of torch calls per token at almost no arithmetic."""
    return replace(arch, name=f"{arch.name}-twin", d_model=2 * arch.n_heads, vocab_size=TINY, ffn_hidden=2,
                   wd_rank=None if arch.wd_rank is None else 1, paper_active_params=None, paper_total_params=None)


def measure_layer_overhead(arch: Architecture, draft: DeviceProfile, directory: Path | None, effort: Effort,
                           prompt_tokens: int) -> float:
    """Seconds per layer of replay's decode step when the arithmetic is negligible: the median
    decode time of the twin's tokens that read nothing, over its layers."""
    twin = tiny_twin(arch)
    sequence = prompt_tokens + effort.overhead_tokens
    experts = random_routing((10 * sequence, twin.n_layers, twin.top_k), twin.n_experts, seed=0)
    positions = np.tile(np.arange(sequence, dtype=np.int32), 10)
    meta = {"schema_version": SCHEMA_VERSION, "source": "calibrate: random routing",
            "model": {"n_layers": twin.n_layers, "n_experts": twin.n_experts, "top_k": twin.top_k}}
    trace = Trace(experts.astype(np.int16), np.full(experts.shape, 1 / twin.top_k, dtype=np.float16), positions, meta)
    config = RunConfig(cache_experts=twin.n_layers * twin.n_experts, tokens=sequence, prompt_tokens=prompt_tokens)
    with HostModel(twin, directory) as model:
        records = model.run(prepare(draft, trace, twin, config))
    quiet = [s for s, nbytes in zip(records.decode_latency_s, records.decode_read_bytes) if nbytes == 0]
    return float(np.median(quiet or records.decode_latency_s)) / twin.n_layers  # all tokens read: still mostly overhead


# ----------------------------------------------------------------------------- the profile
def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def profile_data(record: dict) -> dict:
    """The profile in its TOML layout (human units), each number citing how it was measured."""
    flash, when = record["flash"], f"cosmosim calibrate, {record['date']}"
    on = f"{flash['filesystem']}, {flash['read_mode']} reads from {flash['queue_depth']} threads"
    shapes = f"{record['arch']} shapes in {record['dtype']}, torch threads: {record['threads']}"
    return {
        "name": "host",
        "description": f"this host, measured by cosmosim calibrate ({record['effort']}): {record['cpu']}; {on}; {shapes}",
        "flash": {
            "bandwidth_curve": [{"read_kib": size // KIB, "mb_per_s": _sig(rate / 1e6)} for size, rate in flash["curve"]],
            "latency_us": _sig(flash["latency_s"] * 1e6),
            "queue_depth": flash["queue_depth"],
            "max_request_kib": flash["request_bytes"] // KIB,
            "sources": {
                "bandwidth_curve": f"{when}: random reads of each size at the measured queue depth, {on}",
                "latency_us": f"{when}: one 4 KiB read at a time took {flash['single_read_s'] * 1e6:.1f} us, "
                              "less its transfer time at the curve's 4 KiB rate",
                "queue_depth": f"{when}: the fewest reads in flight reaching {KNEE:.0%} of the best "
                               f"{flash['request_bytes'] // KIB} KiB throughput over depths {list(QUEUE_DEPTHS)}",
                "max_request_kib": "cosmosim replay issues expert reads in requests of this size (its I/O engine's choice)",
            },
        },
        "dram": {
            "capacity_gib": _sig(record["memory_bytes"] / GIB, 6),
            "app_budget_gib": math.floor(record["available_bytes"] / GIB * 1000) / 1000,
            "bandwidth_gb_per_s": _sig(record["dram_bytes_per_s"] / 1e9),
            "sources": {
                "capacity_gib": f"{when}: physical pages x page size (sysconf)",
                "app_budget_gib": f"{when}: MemAvailable of /proc/meminfo at calibration time",
                "bandwidth_gb_per_s": f"{when}: torch copy of a {record['dram_test_mib']} MiB {record['dtype']} buffer, "
                                      "bytes read + bytes written per second (STREAM's convention)",
            },
        },
        "compute": {
            "gemv_gflops": _sig(record["gemv_flops_per_s"] / 1e9),
            "gemm_gflops": _sig(record["gemm_flops_per_s"] / 1e9),
            "layer_overhead_us": _sig(record["layer_overhead_s"] * 1e6),
            "sources": {
                "gemv_gflops": f"{when}: F.linear of one row at every matrix shape of a decoded token, weighted by "
                               f"use, distinct weights beyond the CPU caches, net of a {TINY}x{TINY} call; {shapes}",
                "gemm_gflops": f"{when}: the same with {record['prompt_tokens']} rows (a prompt); {shapes}",
                "layer_overhead_us": f"{when}: replay's decode step on a twin of {record['arch']} with tiny matrices "
                                     "(median over tokens that read nothing, per layer); Python and torch dispatch",
            },
        },
        "energy": {
            "flash_pj_per_byte": 1500, "dram_pj_per_bit": 20, "pj_per_flop": 0.75, "idle_mw": 10000,
            "sources": {
                "flash_pj_per_byte": "estimate, not measured (no power meter): an NVMe SSD reading draws ~5 W at "
                                     "~3.5 GB/s, ~1.4 nJ/byte",
                "dram_pj_per_bit": "estimate, not measured: Horowitz, ISSCC 2014 (45 nm), DRAM 20-41 pJ/bit, low end",
                "pj_per_flop": "estimate, not measured: Horowitz, ISSCC 2014 (45 nm), fp16 multiply-add 1.5 pJ = 2 FLOP",
                "idle_mw": "estimate, not measured: a desktop or server CPU package idles at ~10 W",
            },
        },
    }


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string, ASCII-escaped, is a valid TOML basic string
    if isinstance(value, list):
        return "[\n" + "".join(f"    {_toml_value(item)},\n" for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    return repr(value)


def to_toml(data: dict) -> str:
    lines = ["# Written by `cosmosim calibrate`: every number was measured on this host (energy excepted).",
             f"name = {_toml_value(data['name'])}", f"description = {_toml_value(data['description'])}"]
    for section in ("flash", "dram", "compute", "energy"):
        table = data[section]
        lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(v)}" for key, v in table.items() if key != "sources"]
        lines += ["", f"[{section}.sources]"] + [f"{key} = {_toml_value(v)}" for key, v in table["sources"].items()]
    return "\n".join(lines) + "\n"


def record_path(profile_path: Path) -> Path:
    """The calibration record kept beside a calibrated profile."""
    return profile_path.with_suffix(".json")


def load_record(profile_path: Path) -> dict | None:
    path = record_path(profile_path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(arch: str | Architecture = "wearable-moe", *, scale: int = 1, threads: int | None = None,
              out: Path | None = None, directory: Path | None = None, quick: bool = False,
              progress: Progress | None = None) -> tuple[DeviceProfile, Path]:
    """Measure this host, write its profile (default: the user cache folder's profiles/host.toml)
    and calibration record beside it; return the loaded profile and its path."""
    say = progress or (lambda message: None)
    effort = QUICK if quick else FULL
    target = scaled_arch(arch if isinstance(arch, Architecture) else get_arch(arch), scale)
    threads = default_threads() if threads is None else threads
    out = Path(out) if out is not None else host_profile_path()
    if out.suffix != ".toml":
        raise InputError(f"--out {out}: expected a .toml path")
    started = time.perf_counter()
    with torch_threads(threads):
        record = {"arch": target.name, "scale": scale, "dtype": DTYPE_NAME, "threads": threads,
                  "effort": effort.name, "cpu": _cpu_name(), "prompt_tokens": RunConfig().prompt_tokens,
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                  "dram_test_mib": effort.dram_bytes // MIB}
        record["available_bytes"] = min(available_memory_bytes() or record["memory_bytes"], record["memory_bytes"])
        record["flash"] = measure_flash(directory, effort, say)
        say("dram: copy bandwidth")
        record["dram_bytes_per_s"] = measure_dram(effort)
        record["gemv_flops_per_s"], record["gemv_shapes"] = measure_matmul(target, 1, effort, say)
        record["gemm_flops_per_s"], record["gemm_shapes"] = measure_matmul(target, record["prompt_tokens"], effort, say)
        say("overhead: replay of a tiny twin")
        record["layer_overhead_s"] = 1e-6  # placeholder: the draft profile only sets how the twin's reads go
        draft = profile_from_dict(profile_data(record), source="calibration draft")
        record["layer_overhead_s"] = measure_layer_overhead(target, draft, directory, effort, record["prompt_tokens"])
    record["wall_s"] = time.perf_counter() - started
    text = to_toml(profile_data(record))
    profile_from_dict(tomllib.loads(text), source=str(out))  # never write what would not load
    atomic_write_text(out, text)
    atomic_write_json(record_path(out), record)
    say(f"wrote {out} ({record['wall_s']:.0f} s)")
    return load_profile(out), out
