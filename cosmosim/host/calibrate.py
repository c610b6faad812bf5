"""`cosmosim calibrate`: measure this host and write its device profile.

The profile has exactly the schema of the shipped ones (docs/device-profiles.md); where a shipped
profile cites a spec sheet or a paper, the host's cites the measurement that produced the number.
Beside it, `host.json` keeps the calibration record: every raw figure, and the settings replay
must share with it (architecture shapes, dtype, torch threads, read mode).

What is measured, in order:

1. flash (`calibrate.flash`): a scratch file read cold from a pool of threads: the queue depth,
   the bandwidth curve, and the per-request latency fitted to an all-miss step's reads (top-k experts at once);
2. DRAM: torch copy bandwidth, counting bytes read plus bytes written (STREAM's convention);
3. compute (`calibrate.compute_measure`): `F.linear` at every matrix shape of one decoded token (GEMV)
   and of a prompt (GEMM), in bfloat16, over enough distinct weights to defeat the CPU caches, net of
   the per-call cost of a tiny matrix (that cost is part of the per-layer overhead instead): the
   rates over all shapes, and per operation class ([compute_classes]: attention, experts, LM head);
4. the per-layer and per-miss overheads of a Python/torch decode step (`calibrate.overhead_measure`):
   replays of the architecture with every expert cached and with none, what their tokens take
   beyond the arithmetic (and the reads) the engines price, per layer and per miss.

Energy cannot be measured without a power meter: that section carries cited estimates.

When and under what load the figures were measured (UTC time, 1-minute load average, CPUs, the
other processes' CPU share over a short window) goes into the profile's description and every
measured figure's citation, so a profile says whether it was taken on an idle machine; calibrate
warns, or refuses unless forced, when the load average exceeds BUSY_LOAD_PER_CPU per CPU.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path


from cosmosim.engines.replay.compute import default_threads, torch_threads
from cosmosim.engines.replay.run import Progress
from cosmosim.engines.replay.storage import available_memory_bytes
from cosmosim.engines.replay.weights import DTYPE_NAME, ExpertLayout, scaled_arch
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_json, atomic_write_text
from cosmosim.host.compute_measure import TINY, matmul_shapes, measure_dram, measure_matmul
from cosmosim.host.effort import FULL, QUICK
from cosmosim.host.flash_measure import KNEE, MIN_LATENCY_S, QUEUE_DEPTHS, STEP_GAP_S, fit_latency, measure_flash
from cosmosim.host.overhead_measure import DRAFT_OVERHEAD_S, measure_overheads
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profiles import DeviceProfile, host_profile_path, load_profile, profile_from_dict
from cosmosim.scenario.settings import RunConfig
from cosmosim.units import GIB, KIB, MIB

METHOD = 5  # how the figures are measured; a record of another method is calibrated again (validate)
MIN_MISS_OVERHEAD_S = 1e-6  # below this (or negative: faster than priced) no per-miss overhead is written
BUSY_LOAD_PER_CPU = 0.5  # a 1-minute load average above this per CPU: the machine is busy
LOAD_WINDOW_S = 0.25  # the window over which the other processes' CPU share is measured
__all__ = ["BUSY_LOAD_PER_CPU", "FULL", "METHOD", "MIN_LATENCY_S", "QUICK", "calibrate", "check_load", "fit_latency",
           "load_record", "machine_load", "matmul_shapes", "profile_data", "record_path",
           "to_toml"]


# ----------------------------------------------------------------------------- the machine's load
def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line; None where it cannot be read."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - fields[3] - (fields[4] if len(fields) > 4 else 0), total


def machine_load(window_s: float = LOAD_WINDOW_S) -> dict:
    """The 1-minute load average, the number of CPUs, and the share of all CPUs that other
    processes kept busy over `window_s` (this one sleeps meanwhile; None without /proc/stat)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    before, start = _cpu_ticks(), os.times()
    time.sleep(window_s)
    after, end = _cpu_ticks(), os.times()
    share = None
    if before is not None and after is not None and after[1] > before[1]:
        own = (end.user + end.system - start.user - start.system) * os.sysconf("SC_CLK_TCK")
        share = max(0.0, min(1.0, (after[0] - before[0] - own) / (after[1] - before[1])))
    return {"load_1min": load, "cpus": os.cpu_count() or 1, "others_cpu_share": share}


def load_text(load: dict) -> str:
    """`load` in a few words, for the profile's citations and the busy-machine warning."""
    parts = ["load average unknown" if load.get("load_1min") is None else f"load average {load['load_1min']:.2f}",
             f"{load['cpus']} CPUs"]
    if load.get("others_cpu_share") is not None:
        parts.append(f"other processes {load['others_cpu_share']:.0%} of the CPUs")
    return ", ".join(parts)


def check_load(load: dict, *, refuse: bool, warn: Progress) -> bool:
    """Whether the machine is busy (load average > BUSY_LOAD_PER_CPU per CPU); if so, refuse
    (InputError, one line) or warn in one line."""
    busy = load.get("load_1min") is not None and load["load_1min"] > BUSY_LOAD_PER_CPU * load["cpus"]
    if busy:
        what = (f"this machine is busy ({load_text(load)}: above {BUSY_LOAD_PER_CPU} per CPU), "
                "so its figures would be too slow")
        if refuse:
            raise InputError(f"calibrate: {what}; wait until it is idle, or pass --force to calibrate anyway")
        warn(f"warning: calibrate: {what}; the profile records the load")
    return busy


# ----------------------------------------------------------------------------- the profile
def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _overhead_source(record: dict, when: str) -> str:
    if "overhead_quiet_tokens" not in record:  # the draft that prices the overhead replay
        return f"{when}: draft, a negligible placeholder"
    return (f"{when}: replay of {record['arch']} with every expert cached: median over "
            f"{record['overhead_quiet_tokens']} tokens that read nothing of measured "
            f"({record['overhead_measured_token_s'] * 1e3:.2f} ms) less priced "
            f"({record['overhead_priced_token_s'] * 1e3:.2f} ms) time, per layer; "
            "Python and torch dispatch, element-wise operations")


def _add_miss_overhead(compute: dict, record: dict, when: str) -> dict:
    """`compute` with the per-miss overhead and its source, where one was measured above
    MIN_MISS_OVERHEAD_S (otherwise the key is left out and the engines price none)."""
    if record.get("miss_overhead_s", 0.0) > MIN_MISS_OVERHEAD_S:
        compute["miss_overhead_us"] = _sig(record["miss_overhead_s"] * 1e6)
        compute["sources"]["miss_overhead_us"] = (
            f"{when}: replay of {record['arch']} with random routing and a cache of top-k experts "
            f"({record['miss_replay_misses']} decode misses): measured decode time "
            f"({record['miss_measured_s'] * 1e3:.1f} ms) less the time blocked on reads "
            f"({record['miss_waited_s'] * 1e3:.1f} ms) less the same tokens' priced arithmetic "
            f"({record['miss_priced_compute_s'] * 1e3:.1f} ms), per miss")
    return compute


def _compute_classes(record: dict, when: str, shapes: str) -> dict:
    """The [compute_classes] section: each class's GEMV and GEMM rate over its own shapes (the LM head
    runs as a GEMV only); empty for a record from before calibrate measured them."""
    if "gemv_class_flops_per_s" not in record:
        return {}
    section, sources = {}, {}
    for kind, label in (("gemv", "one row"), ("gemm", f"{record['prompt_tokens']} rows")):
        for name, rate in record[f"{kind}_class_flops_per_s"].items():
            if (name, kind) == ("lm_head", "gemm"):
                continue
            matrices = ", ".join(f"{shape['out']}x{shape['in']}" for shape in record[f"{kind}_shapes"] if shape["class"] == name)
            section[f"{name}_{kind}_gflops"] = _sig(rate / 1e9)
            sources[f"{name}_{kind}_gflops"] = (f"{when}: F.linear of {label} at the {name} class's matrices of a "
                                                f"decoded token ({matrices}), weighted by use, as gemv_gflops; {shapes}")
    return {"compute_classes": {**section, "sources": sources}}


def profile_data(record: dict) -> dict:
    """The profile in its TOML layout (human units), each number citing how it was measured."""
    load = f", {load_text(record['load'])}" if "load" in record else ""
    flash, when = record["flash"], f"cosmosim calibrate, {record['date']}{load}"
    on = f"{flash['filesystem']}, {flash['read_mode']} reads from {flash['queue_depth']} threads"
    shapes = f"{record['arch']} shapes in {record['dtype']}, torch threads: {record['threads']}"
    return {
        "name": "host",
        "description": f"this host, measured by cosmosim calibrate ({record['effort']}) at {record['date']}{load}: "
                       f"{record['cpu']}; {on}; {shapes}",
        "flash": {
            "bandwidth_curve": [{"read_kib": size // KIB, "mb_per_s": _sig(rate / 1e6)} for size, rate in flash["curve"]],
            "latency_us": _sig(flash["latency_s"] * 1e6),
            "queue_depth": flash["queue_depth"],
            "max_request_kib": flash["request_bytes"] // KIB,
            "sources": {
                "bandwidth_curve": f"{when}: random reads of each size at the measured queue depth, {on}, "
                                   f"from a {flash['test_file_bytes'] // MIB} MiB test file (the expert file's "
                                   "size) read through twice first, as replay's expert file is",
                "latency_us": f"{when}: an all-miss decode step's reads, {flash['step_reads']} experts of "
                              f"{flash['expert_read_bytes'] / MIB:.2f} MiB issued at once in {flash['request_bytes'] // KIB} KiB "
                              f"requests, {flash['queue_depth']} in flight, {STEP_GAP_S * 1e3:.0f} ms of CPU work apart, "
                              f"took {flash['step_read_s'] * 1e3:.3f} ms (median); the latency at which the flash "
                              "model reads them as fast",
                "queue_depth": (f"{when}: kept from the calibration this one repeats (validate's passes)"
                                if flash.get("queue_depth_given") else
                                f"{when}: the fewest reads in flight reaching {KNEE:.0%} of the best "
                                f"{flash['request_bytes'] // KIB} KiB throughput over depths {list(QUEUE_DEPTHS)}"),
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
        "compute": _add_miss_overhead({
            "gemv_gflops": _sig(record["gemv_flops_per_s"] / 1e9),
            "gemm_gflops": _sig(record["gemm_flops_per_s"] / 1e9),
            "layer_overhead_us": _sig(record["layer_overhead_s"] * 1e6),
            "sources": {
                "gemv_gflops": f"{when}: F.linear of one row at every matrix shape of a decoded token, weighted by "
                               f"use, distinct weights beyond the CPU caches, net of a {TINY}x{TINY} call; {shapes}",
                "gemm_gflops": f"{when}: the same with {record['prompt_tokens']} rows (a prompt); {shapes}",
                "layer_overhead_us": _overhead_source(record, when),
            },
        }, record, when),
        **_compute_classes(record, when, shapes),
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
    for section in (name for name in ("flash", "dram", "compute", "compute_classes", "energy") if name in data):
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
              progress: Progress | None = None, refuse_busy: bool = False,
              warn: Progress | None = None, queue_depth: int | None = None) -> tuple[DeviceProfile, Path]:
    """Measure this host, write its profile (default: the user cache folder's profiles/host.toml)
    and calibration record beside it; return the loaded profile and its path.

    On a busy machine (`check_load`) it refuses with `refuse_busy`, else warns through `warn`
    (default: `progress`). A given `queue_depth` is kept rather than measured."""
    say = progress or (lambda message: None)
    effort = QUICK if quick else FULL
    target = scaled_arch(arch if isinstance(arch, Architecture) else get_arch(arch), scale)
    threads = default_threads() if threads is None else threads
    out = Path(out) if out is not None else host_profile_path()
    if out.suffix != ".toml":
        raise InputError(f"--out {out}: expected a .toml path")
    load = machine_load()
    busy = check_load(load, refuse=refuse_busy, warn=warn or say)
    started = time.perf_counter()
    with torch_threads(threads):
        record = {"arch": target.name, "scale": scale, "dtype": DTYPE_NAME, "threads": threads,
                  "effort": effort.name, "method": METHOD, "cpu": _cpu_name(), "prompt_tokens": RunConfig().prompt_tokens,
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "load": load, "busy": busy,
                  "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                  "dram_test_mib": effort.dram_bytes // MIB}
        record["available_bytes"] = min(available_memory_bytes() or record["memory_bytes"], record["memory_bytes"])
        layout = ExpertLayout.of(target)
        record["flash"] = measure_flash(directory, effort, say, layout.stride, layout.file_bytes, target.top_k,
                                        queue_depth=queue_depth)
        say("dram: copy bandwidth")
        record["dram_bytes_per_s"] = measure_dram(effort)
        for kind, rows in (("gemv", 1), ("gemm", record["prompt_tokens"])):
            record[f"{kind}_flops_per_s"], record[f"{kind}_shapes"], record[f"{kind}_class_flops_per_s"] = \
                measure_matmul(target, rows, effort, say)
        record["layer_overhead_s"] = DRAFT_OVERHEAD_S
        flash = profile_from_dict(profile_data(record), source="calibration draft").flash
        measured = record["flash"]
        measured["latency_s"] = fit_latency(flash, measured["expert_read_bytes"], measured["step_reads"], measured["step_read_s"])
        say(f"overhead: replays of {target.name} with every expert cached and with none")
        draft = profile_from_dict(profile_data(record), source="calibration draft")
        record.update(measure_overheads(target, draft, directory, effort, record["prompt_tokens"]))
    record["wall_s"] = time.perf_counter() - started
    text = to_toml(profile_data(record))
    profile_from_dict(tomllib.loads(text), source=str(out))  # never write what would not load
    atomic_write_text(out, text)
    atomic_write_json(record_path(out), record)
    say(f"wrote {out} ({record['wall_s']:.0f} s)")
    return load_profile(out), out
