"""`cosmosim replay`: a real MoE decode that streams experts from disk into a RAM cache.

    with HostModel(arch) as model:            # experts written to a scratch file, the rest in RAM
        result = model.replay(scenario)       # one real execution of the scenario's workload

`replay(...)` does both for one run. The scenario is the simulator's (`cosmosim.runner.prepare`),
so a replay and a simulation of the same arguments walk the same accesses and make the same cache
decisions; only the time is measured instead of modelled. Modules: `storage` (cold reads, scratch
space), `weights` (random weights of real sizes), `compute` (the torch arithmetic), `engine` (the
replay loop), `profile` (the calibrated host profile).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from cosmosim.engines.replay.compute import default_threads, torch_threads
from cosmosim.engines.replay.engine import ReplayEngine, ReplayRecords
from cosmosim.engines.replay.storage import ColdReader, check_memory, scratch_folder, warm_storage
from cosmosim.engines.replay.weights import DTYPE_NAME, ExpertLayout, ResidentWeights, scaled_arch, write_expert_file
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profiles import DeviceProfile
from cosmosim.inputs.trace import Trace, load_trace
from cosmosim.results.catalog import TIME_GROUP, nest
from cosmosim.results.summary import percentiles_ms, verdict_of  # the simulator's TPOT statistics, same formula
from cosmosim.scenario.build import Scenario, prepare, resolve_arch
from cosmosim.scenario.settings import RunConfig
from cosmosim.units import MB

Progress = Callable[[str], None]  # receives one line per stage, for the command line to show


class HostModel:
    """A model of `arch` ready to replay: resident weights in RAM, every expert in a file in a fresh
    scratch folder under `directory` (default: the user cache folder). Leaving the `with` block
    removes the folder and everything in it."""

    def __init__(self, arch: Architecture, directory: Path | None = None, *, seed: int = 0,
                 prefer_direct: bool = True, progress: Progress | None = None) -> None:
        self.arch, self.layout = arch, ExpertLayout.of(arch)
        self._directory, self._seed, self._prefer_direct = directory, seed, prefer_direct
        self._progress = progress or (lambda message: None)
        self._cleanup = ExitStack()

    def __enter__(self) -> HostModel:
        check_memory(ResidentWeights.nbytes_of(self.arch), f"{self.arch.name}'s resident weights")
        with ExitStack() as stack:  # on any failure, what was made so far is undone
            folder = stack.enter_context(scratch_folder(self._directory, self.layout.file_bytes,
                                                        f"{self.arch.name}'s expert file (--scale makes it smaller)"))
            path = folder / "experts.bin"
            self._progress(f"writing {self.layout.n_keys} experts of {self.layout.nbytes / MB:.2f} MB "
                           f"({self.layout.file_bytes / MB:.0f} MB) to {path}")
            write_expert_file(path, self.arch, self._seed)
            self.reader = stack.enter_context(ColdReader(path, self._prefer_direct))
            warm_storage(self.reader, self.layout.file_bytes)  # as calibrate warms its test file
            self.weights = ResidentWeights.random(self.arch, self._seed)
            self._cleanup = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup.close()  # closes the reader, then removes the scratch folder

    def run(self, scenario: Scenario) -> ReplayRecords:
        """Execute the scenario's workload once, from an empty cache; the raw records."""
        if scenario.arch != self.arch:
            raise ValueError(f"scenario is for {scenario.arch.name}, this model is {self.arch.name}")
        return ReplayEngine(scenario, self.weights, self.layout, self.reader).run()

    def replay(self, scenario: Scenario) -> dict:
        """Execute the scenario's workload once and summarise it (`summarize_replay`)."""
        return summarize_replay(scenario, self.run(scenario), self.layout, self.reader.mode)


def summarize_replay(scenario: Scenario, records: ReplayRecords, layout: ExpertLayout, read_mode: str) -> dict:
    """The measured run, with the simulator's key names where they mean the same: keyed by the
    metric catalogue (`cosmosim.results.catalog`, docs/metrics.md), in the order of the JSON output."""
    outcomes = records.outcomes
    decode_accesses = outcomes["hit"] + outcomes["miss"]
    prefill_accesses = outcomes["prefill_hit"] + outcomes["prefill_miss"]
    tpot = percentiles_ms(np.asarray(records.decode_latency_s))
    n_decode = max(len(records.decode_latency_s), 1)
    metrics = {
        "ttft_ms": float(np.mean(records.ttft_s) * 1e3) if records.ttft_s else None,
        **{f"tpot_ms.{stat}": value for stat, value in tpot.items()},
        "tpot_ms_per_token": [s * 1e3 for s in records.decode_latency_s],
        "tokens_per_s": 1e3 / tpot["mean"],
        **{f"{TIME_GROUP}.{part}": s / n_decode * 1e3 for part, s in records.decode_parts_s.items()},
        "hit_rate": outcomes["hit"] / decode_accesses if decode_accesses else None,
        "prefill_hit_rate": outcomes["prefill_hit"] / prefill_accesses if prefill_accesses else None,
        "accesses.decode": decode_accesses, "accesses.hit": outcomes["hit"], "accesses.miss": outcomes["miss"],
        "accesses.prefill": prefill_accesses, "accesses.prefill_miss": outcomes["prefill_miss"],
        "flash_mb_per_token": float(np.mean(records.decode_read_bytes) / MB) if records.decode_read_bytes else 0.0,
        "read_mb": records.read_bytes / MB,
        "wall_s": records.wall_s,
        "read_mode": read_mode,
        "dtype": DTYPE_NAME,
        "threads": torch.get_num_threads(),
        "expert_mb": layout.nbytes / MB,
    }
    result = {"engine": "replay", **nest(metrics, "replay"), "inputs": scenario.inputs(), "warnings": list(scenario.warnings)}
    return {**result, "verdict": verdict_of(scenario, result)}


def replay(profile: str | Path | DeviceProfile, trace: str | Path | Trace, arch: str | Architecture | None = None,
           config: RunConfig | None = None, *, scale: int = 1, directory: Path | None = None, seed: int = 0,
           threads: int | None = None, progress: Progress | None = None,
           before: Callable[[HostModel, Scenario], None] | None = None) -> dict:
    """Run `trace` for real on this host and return the measured summary.

    `profile` ("host" is the calibrated one) sets how reads are issued (request size, reads in flight)
    and, as in the simulator, the default cache size; `scale` divides the experts' FFN width;
    `threads` is torch's intra-op thread count (default: all cores but one). `before` runs once the
    expert file is written, before the decode (the host layer probes the profile for drift there).
    """
    trace = trace if isinstance(trace, Trace) else load_trace(trace)
    target = scaled_arch(resolve_arch(arch, trace), scale)
    scenario = prepare(profile, trace, target, config or RunConfig())
    threads = default_threads() if threads is None else threads
    with torch_threads(threads), HostModel(target, directory, seed=seed, progress=progress) as model:
        if before is not None:
            before(model, scenario)
        if progress:
            progress(f"replaying {scenario.workload.n_decode_tokens} decode tokens ({model.reader.mode} reads)")
        return model.replay(scenario)
