"""The page-cache model (`cosmosim.device.pagecache`, what `--loader mmap` runs on) against this machine's
kernel, on the same touches of the same file.

A weights file in the simulator's GGUF-like layout (`cosmosim.device.gguf_layout`) is written with
real bytes and dropped from the page cache (POSIX_FADV_DONTNEED, checked with mincore). A child
process (`cosmosim.host.pagecache_child`) joins a memory cgroup that leaves the page cache
`cache_mb` (cgroup v2 memory.max, or v1 memory.limit_in_bytes; the limit also charges the child's
own new allocations, which is why it is set from what the cgroup holds once joined), maps the file
and touches, in the order `_step_mapped` of the DES does, every page of each step's resident tensors,
each expert of the trace and the LM head. The model replays the same touches with the device's own
read_ahead_kb. Compared: pages read from storage, major faults, pages resident at the end. Where no
cgroup can be made, the check runs with no limit and says so.

    cosmosim validate --json v.json          (its "pagecache" cases; or `check_page_cache(...)` from Python)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cosmosim.device.gguf_layout import Extent, GgufLayout
from cosmosim.device.pagecache import READ_AHEAD_BYTES, PageCache
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.trace import Trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.units import MB
from cosmosim.workload.stream import Workload

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/memory"))


@dataclass(frozen=True)
class PageCounts:
    pages_read: int
    faults: int
    resident_pages: int


@dataclass
class PageCacheCase:
    trace: str
    advice: str
    cache_mb: float  # the page cache the limit leaves (or the whole file, unlimited)
    limit: str  # how it was limited: "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes", or why not
    file_mb: float
    read_ahead_kib: int
    accesses: int
    model: PageCounts
    kernel: PageCounts

    def errors(self) -> dict[str, float | None]:
        """Model minus kernel, relative to the kernel, per count (None where the kernel counted 0)."""
        model, kernel = asdict(self.model), asdict(self.kernel)
        return {name: (model[name] - kernel[name]) / kernel[name] if kernel[name] else None for name in model}

    def to_dict(self) -> dict:
        return {**asdict(self), "errors": self.errors()}


def touch_plan(layout: GgufLayout, workload: Workload, step_layers: tuple[tuple[int, ...], ...]) -> list[tuple[Extent, ...]]:
    """Every touch of the weights, in the order the DES's `_step_mapped` makes them: per step its layers'
    resident tensors, then each expert it reads; after a pass's last layer, the LM head."""
    plan: list[tuple[Extent, ...]] = []
    layers, offsets, keys = workload.step_layer, workload.step_offsets, workload.access_key
    moe_layers, last_layer = layout.arch.moe_layers, int(layers.max(initial=0))
    for step, layer in enumerate(layers.tolist()):
        plan.extend(layout.nonexpert_extents(model_layer) for model_layer in step_layers[layer])
        plan.extend(layout.expert_extents(moe_layers[layer], int(key) - layer * workload.n_experts)
                    for key in keys[offsets[step]:offsets[step + 1]])
        if layer == last_layer:
            plan.append(layout.head_extents())
    return plan


def model_counts(layout: GgufLayout, plan: list[tuple[Extent, ...]], cache_bytes: int, read_ahead_bytes: int,
                 advice: str) -> PageCounts:
    cache = PageCache(-(-layout.file_bytes // PAGE_BYTES), cache_bytes // PAGE_BYTES, PAGE_BYTES,
                      read_ahead_bytes // PAGE_BYTES, advice)
    for extents in plan:
        cache.access(extents)
    return PageCounts(cache.stats.pages_read, cache.stats.faults, cache.n_resident)


def device_read_ahead_bytes(path: Path) -> tuple[int, str | None]:
    """read_ahead_kb of the block device under `path` (its partition's disk), or the kernel default and why."""
    device = os.stat(path).st_dev
    queue = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    for candidate in (queue / "queue" / "read_ahead_kb", queue / ".." / "queue" / "read_ahead_kb"):
        if candidate.exists():
            return int(candidate.read_text()) * 1024, None
    return READ_AHEAD_BYTES, f"no block queue for {path} (device {os.major(device)}:{os.minor(device)}): 128 KiB assumed"


class MemoryCgroup:
    """A fresh memory cgroup under the first hierarchy that lets this process make one, removed on exit."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.how, reasons = "", []
        for root in CGROUP_ROOTS:
            v2 = (root / "cgroup.controllers").exists()
            if v2 and "memory" not in (root / "cgroup.subtree_control").read_text().split():
                reasons.append(f"{root}: memory controller not enabled for children")
                continue
            if not v2 and not (root / "memory.limit_in_bytes").exists():
                continue
            try:
                path = Path(tempfile.mkdtemp(prefix="cosmosim-pagecache-", dir=root))
            except OSError as error:
                reasons.append(f"{root}: {error.strerror}")
                continue
            self.path, self.how = path, "cgroup v2 memory.max" if v2 else "cgroup v1 memory.limit_in_bytes"
            return
        self.how = "no limit (" + ("; ".join(reasons) or "no memory cgroup hierarchy") + ")"

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *_) -> None:
        if self.path is not None:
            self.path.rmdir()  # the child has exited, so the cgroup is empty


def write_weights_file(path: Path, n_bytes: int, seed: int = 0) -> None:
    """Real bytes (a sparse hole reads no storage), then out of the page cache."""
    block = np.random.default_rng(seed).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        for start in range(0, n_bytes, len(block)):
            handle.write(block[:min(len(block), n_bytes - start)])
        handle.flush()
        os.fsync(handle.fileno())
    drop_from_page_cache(path)


def drop_from_page_cache(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def kernel_counts(path: Path, plan: list[tuple[Extent, ...]], advice: str, cache_bytes: int, cgroup: MemoryCgroup,
                  folder: Path) -> PageCounts:
    pages, bounds, extents = [], [0], []
    for i, access in enumerate(plan):
        first_page = len(pages)
        for start, end in access:
            pages.append(np.arange(start // PAGE_BYTES, (end - 1) // PAGE_BYTES + 1) * PAGE_BYTES)
            extents.append((i, start, end))
        bounds.append(bounds[-1] + sum(len(run) for run in pages[first_page:]))
    plan_path, out = folder / "plan.npz", folder / "kernel.json"
    np.savez(plan_path, page_offsets=np.concatenate(pages), bounds=np.array(bounds), extents=np.array(extents),
             page_bytes=PAGE_BYTES)
    drop_from_page_cache(path)
    subprocess.run([sys.executable, "-m", "cosmosim.host.pagecache_child", str(path), str(plan_path), advice,
                    str(cache_bytes), str(cgroup.path or "-"), str(out)], check=True)
    counted = json.loads(out.read_text())
    return PageCounts(counted["pages_read"], counted["faults"], counted["resident_pages"])


def check_page_cache(trace: str | Path | Trace, *, arch: str | Architecture | None = None, weight_bits: float = 4,
                     tokens: int = 300, cache_mb: float | None = 120.0,
                     advices: tuple[str, ...] = ("normal", "random", "willneed"), label: str | None = None,
                     folder: Path | None = None) -> list[PageCacheCase]:
    """One case per advice: the model's and the kernel's counts over the same touches of the same file
    (written under `folder`, default the system's temporary folder). `cache_mb` None: no limit."""
    scenario = prepare("wearable", trace, arch, RunConfig(weight_bits=weight_bits, tokens=tokens))
    layout = GgufLayout(scenario.arch, weight_bits)
    plan = touch_plan(layout, scenario.workload, scenario.costs.step_layers)
    work = Path(tempfile.mkdtemp(prefix="cosmosim-pagecache-", dir=folder))
    try:
        path = work / "weights.gguf"
        write_weights_file(path, layout.file_bytes)
        read_ahead, note = device_read_ahead_bytes(path)
        cases = []
        with MemoryCgroup() as cgroup:
            limited = cgroup.path is not None and cache_mb is not None
            cache_bytes = int(cache_mb * MB) if limited else layout.file_bytes
            for advice in advices:
                kernel = kernel_counts(path, plan, advice, cache_bytes, cgroup, work)
                cases.append(PageCacheCase(label or str(trace), advice, cache_bytes / MB, cgroup.how + (f"; {note}" if note else ""),
                                           layout.file_bytes / MB, read_ahead // 1024, len(plan),
                                           model_counts(layout, plan, cache_bytes, read_ahead, advice), kernel))
        return cases
    finally:
        shutil.rmtree(work, ignore_errors=True)
