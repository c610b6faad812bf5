"""Weights mmapped from flash (`--loader mmap`): the kernel's page cache is the expert cache.

`MappedWeights` joins the three device models an mmap run needs: where the bytes lie
(`gguf_layout.GgufLayout`), which pages are resident and what a touch reads (`pagecache.PageCache`),
and what those reads cost (`hardware.Flash`). An engine calls `touch(extents, issue_s)` where the
decoder's thread would first use some weights and gets when they are all in DRAM.

Timing (docs/simulator.md, "The page-cache loader"): MADV_WILLNEED's reads are started together at
`issue_s` and overlap in the device's queue; a fault blocks the thread that touched the page until
its read completes, so one thread's faults are read one after another, after the advised pages it
touches first. A page an earlier touch is still reading (another expert's read-around, say) is ready
only when that read ends, so every page's arrival time is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cosmosim.device.gguf_layout import Extent, GgufLayout
from cosmosim.device.hardware import Flash
from cosmosim.device.pagecache import PageCache
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.precision import Precision
from cosmosim.inputs.profiles import PageCacheSpec


def pages_spanned(extents: Sequence[Extent], page_bytes: int) -> int:
    """The pages the extents cover, counted per extent (a page two extents share counts twice: an upper bound)."""
    return sum((end - 1) // page_bytes - start // page_bytes + 1 for start, end in extents)


def largest_access_bytes(layout: GgufLayout, page_bytes: int) -> int:
    """The most bytes one touch needs resident at once: a layer's resident tensors, one expert, or the head."""
    arch = layout.arch
    accesses = [layout.nonexpert_extents(layer) for layer in range(arch.n_layers)] + [layout.head_extents()]
    accesses += [layout.expert_extents(layer, 0) for layer in arch.moe_layers[:1]]  # every expert is the same size
    return max(pages_spanned(extents, page_bytes) for extents in accesses) * page_bytes


class MappedWeights:
    """One weights file mapped from `flash` into a page cache of `capacity_bytes`."""

    def __init__(self, arch: Architecture, bits: Precision | float, spec: PageCacheSpec, capacity_bytes: int,
                 advice: str, flash: Flash) -> None:
        self.layout = GgufLayout(arch, bits)
        self.page_bytes = page = spec.page_bytes
        n_pages = -(-self.layout.file_bytes // page)
        self.cache = PageCache(n_pages, capacity_bytes // page, page, spec.read_ahead_bytes // page, advice)
        self.flash = flash
        self.peak_resident_pages = 0
        self._arrival_s = np.zeros(n_pages)  # when the last read of each page completes
        self._moe_layers = arch.moe_layers
        self._experts: dict[tuple[int, int], tuple[Extent, ...]] = {}

    def expert_extents(self, moe_layer: int, expert: int) -> tuple[Extent, ...]:
        """The byte ranges of `expert` of the `moe_layer`-th MoE layer (a workload's layer index)."""
        key = (moe_layer, expert)
        extents = self._experts.get(key)
        if extents is None:
            extents = self._experts[key] = self.layout.expert_extents(self._moe_layers[moe_layer], expert)
        return extents

    def touch(self, extents: Sequence[Extent], issue_s: float) -> tuple[float, int]:
        """Use every byte of `extents` from `issue_s`; return (when all their pages are in DRAM, bytes read)."""
        advised, faulted = self.cache.access_split(extents)
        page, arrival, flash = self.page_bytes, self._arrival_s, self.flash
        ready = issue_s
        for first, n in advised:
            end = arrival[first:first + n] = flash.read(n * page, issue_s)
            ready = max(ready, end)
        for first, n in faulted:
            ready = arrival[first:first + n] = flash.read(n * page, ready)
        for start, end in extents:  # pages an earlier touch is still reading
            ready = max(ready, float(arrival[start // page:(end - 1) // page + 1].max()))
        self.peak_resident_pages = max(self.peak_resident_pages, self.cache.n_resident)
        return ready, page * (sum(n for _, n in advised) + sum(n for _, n in faulted))

    @property
    def peak_resident_bytes(self) -> int:
        return self.peak_resident_pages * self.page_bytes
