"""The kernel's side of `cosmosim.host.pagecache_check`, run as its own process so that it alone is in
the memory cgroup that limits the page cache:

    python -m cosmosim.host.pagecache_child FILE PLAN.npz ADVICE CACHE_BYTES CGROUP_DIR|- OUT.json

It joins the cgroup (its earlier allocations stay charged where they were), sets the limit to what
the cgroup holds now plus CACHE_BYTES, maps FILE read-only with the advice, touches one byte of every
page of each access of the plan in order (what a kernel computing on the weights faults on), and
writes the major faults (getrusage), the bytes read from storage (/proc/self/io read_bytes) and the
file's pages resident at the end (mincore) as JSON.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import sys
from pathlib import Path

import numpy as np

ADVICE = {"normal": mmap.MADV_NORMAL, "random": mmap.MADV_RANDOM, "willneed": mmap.MADV_NORMAL}


def read_bytes_so_far() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise OSError("/proc/self/io has no read_bytes")


def resident_pages(address: int, length: int, page_bytes: int) -> int:
    """Pages of the mapping at `address` in the page cache (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = -(-length // page_bytes)
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vector) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return int(np.count_nonzero(np.frombuffer(vector, dtype=np.uint8) & 1))


def join_and_limit(cgroup: Path, cache_bytes: int) -> None:
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    v2 = (cgroup / "memory.max").exists()
    usage = int((cgroup / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
    (cgroup / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(usage + cache_bytes))


def main(file: str, plan_path: str, advice: str, cache_bytes: str, cgroup: str, out: str) -> None:
    plan = np.load(plan_path, allow_pickle=False)
    pages_PN, bounds = plan["page_offsets"], plan["bounds"]  # each access: page offsets [bounds[i], bounds[i+1])
    extents = plan["extents"]  # [n, 3]: access index, start, end (for MADV_WILLNEED)
    extent_bounds = np.searchsorted(extents[:, 0], np.arange(len(bounds)))
    page_bytes = int(plan["page_bytes"])
    with open(file, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    mapping.madvise(ADVICE[advice])
    weights = np.frombuffer(mapping, dtype=np.uint8)
    if cgroup != "-":
        join_and_limit(Path(cgroup), int(cache_bytes))
    faults, read = resource.getrusage(resource.RUSAGE_SELF).ru_majflt, read_bytes_so_far()
    checksum = 0
    for i in range(len(bounds) - 1):
        if advice == "willneed":
            for _, start, end in extents[extent_bounds[i]:extent_bounds[i + 1]]:
                first = start // page_bytes * page_bytes
                mapping.madvise(mmap.MADV_WILLNEED, int(first), int(end - first))
        checksum += int(weights[pages_PN[bounds[i]:bounds[i + 1]]].sum())  # one byte a page: every page faults in
    result = {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults,
              "pages_read": (read_bytes_so_far() - read) // page_bytes,
              "resident_pages": resident_pages(weights.ctypes.data, len(weights), page_bytes), "checksum": checksum}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
