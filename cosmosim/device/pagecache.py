"""The Linux page cache as an expert cache: which pages of an mmapped weights file must come from flash.

llama.cpp-style engines mmap the GGUF file (src/llama-mmap.cpp) and let the kernel's page cache hold
the weights: an expert is "cached" when its pages are resident, and touching a missing page faults
and reads it, with readahead, from flash. This module is pure bookkeeping, deterministic and without
timing: `PageCache.access(extents)` touches every page of some byte ranges, in order, and returns the
runs of pages each fault (or MADV_WILLNEED) reads; an engine prices them on its Flash model
(cosmosim/device/hardware.py). The model, with its kernel references (docs/page-cache.md):

- Pages. The file is `n_file_pages` pages of `page_bytes`; DRAM left to the page cache holds
  `capacity_pages` of them.
- Faults (mm/filemap.c filemap_fault -> do_sync_mmap_readahead). Touching a missing page reads:
  advice "normal": the mmap read-around window, ra_pages pages from pgoff - ra_pages / 2, clipped
  to the file (do_page_cache_ra clips at the last page); ra_pages defaults to VM_READAHEAD_PAGES =
  128 KiB / page size (include/linux/pagemap.h, formerly mm.h). llama.cpp doubles it: on Linux it
  calls posix_fadvise(POSIX_FADV_SEQUENTIAL) on the file it maps (src/llama-mmap.cpp), and
  generic_fadvise (mm/fadvise.c) sets f_ra.ra_pages = 2 * bdi->ra_pages, which the mmap read-around
  uses: pass readahead_pages=64 to model it at 4 KiB pages. advice "random" (MADV_RANDOM ->
  VM_RAND_READ): the faulting page only, as does ra_pages 0. Pages already resident are skipped and
  split the read (page_cache_ra_unbounded: "Page already present? Kick off the current batch of
  contiguous pages"), so one fault may return several runs.
- "willneed": before touching, MADV_WILLNEED on each extent (madvise_willneed -> vfs_fadvise
  POSIX_FADV_WILLNEED -> force_page_cache_readahead) reads its missing pages. The kernel caps one
  call at max(bdi->io_pages, ra_pages) pages (force_page_cache_ra); `willneed_max_pages` models a
  single call with that cap, None an engine that advises the extent in chunks under it (the whole
  extent read). Pages the advice did not cover fault as under "normal" (it sets no VMA flag).
- Two lists (mm/swap.c folio_mark_accessed, mm/vmscan.c). New pages enter the inactive list's head.
  Each access marks each of its pages once: inactive,unreferenced -> inactive,referenced ->
  active,unreferenced -> active,referenced; a page is activated by its second access. Eviction takes
  the inactive tail. Before each eviction, while inactive_is_low (inactive * ratio < active, ratio =
  int_sqrt(10 * GiB on the two lists), 1 under 1 GiB), the active tail is demoted to the inactive
  head keeping its referenced mark (shrink_active_list deactivates every non-executable file page it
  scans, accessed or not; folio_check_references: "recently deactivated but used folios are quickly
  recovered"), so one more access re-activates it.
- Pinning. No page of the current access is evicted while it runs (the engine computes with the whole
  expert resident), so an access needs capacity_pages >= its pages: else ValueError. Readahead pages
  outside the access never evict pages this access brought in (the kernel reads them under lock); if
  nothing else can go, the window is cut there, as page_cache_ra_unbounded stops when it cannot
  allocate, and the faulting page is then read by itself.
Not modelled: asynchronous readahead (PG_readahead marks, do_async_mmap_readahead); mmap_miss /
MMAP_LOTSAMISS, which turns read-around off after 100 net misses (its hits come from fault-around and
the page tables, not tracked here); that mapped pages are referenced through PTE young bits seen at
reclaim, not at access (folio_check_references); refault activation (mm/workingset.c shadow
entries); large folios; MGLRU; dirty pages (the file is read-only).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

ADVICES = ("normal", "random", "willneed")
READ_AHEAD_BYTES = 128 * 1024  # VM_READAHEAD_PAGES = SZ_128K / PAGE_SIZE: the default read_ahead_kb

# A page's state, one byte per page of the file (mm/swap.c folio_mark_accessed's four states, and absent).
ABSENT, INACTIVE, INACTIVE_REF, ACTIVE, ACTIVE_REF = range(5)
_MARK = bytes.maketrans(bytes([INACTIVE, ACTIVE]), bytes([INACTIVE_REF, ACTIVE_REF]))  # an access that moves nothing

Run = tuple[int, int]  # (first page, number of pages) read in one go


@dataclass
class PageCacheStats:
    accesses: int = 0
    pages_touched: int = 0  # the accesses' pages (each access's distinct pages)
    hits: int = 0  # of those, resident when their access began
    faults: int = 0  # touches of a missing page (major faults); none under willneed unless capped
    reads: int = 0  # runs read from flash
    pages_read: int = 0  # >= pages_touched - hits: readahead brings in pages outside the extents too
    evictions: int = 0

    @property
    def misses(self) -> int:
        return self.pages_touched - self.hits


def _minus(piece: tuple[int, int], other: tuple[int, int]) -> list[tuple[int, int]]:
    """The page range `piece` less the pages of `other`: zero, one or two ranges, in order."""
    (first, last), (other_first, other_last) = piece, other
    if last <= other_first or first >= other_last:
        return [piece]
    return [part for part in ((first, other_first), (other_last, last)) if part[0] < part[1]]


class PageCache:
    """Page residency of one mmapped file under a two-list LRU, with the kernel's readahead.

    The lists are OrderedDicts from the tail (oldest: next to be evicted or demoted) to the head.
    """

    def __init__(self, n_file_pages: int, capacity_pages: int, page_bytes: int = 4096,
                 readahead_pages: int | None = None, advice: str = "normal",
                 willneed_max_pages: int | None = None) -> None:
        for name, value in (("n_file_pages", n_file_pages), ("capacity_pages", capacity_pages),
                            ("page_bytes", page_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if readahead_pages is None:
            readahead_pages = READ_AHEAD_BYTES // page_bytes
        if not isinstance(readahead_pages, int) or readahead_pages < 0:
            raise ValueError(f"readahead_pages must be an integer >= 0, got {readahead_pages!r}")
        if advice not in ADVICES:
            raise ValueError(f"advice must be one of {ADVICES}, got {advice!r}")
        if willneed_max_pages is not None and (not isinstance(willneed_max_pages, int) or willneed_max_pages < 1):
            raise ValueError(f"willneed_max_pages must be a positive integer or None, got {willneed_max_pages!r}")
        self.n_file_pages, self.capacity_pages, self.page_bytes = n_file_pages, capacity_pages, page_bytes
        self.readahead_pages, self.advice, self.willneed_max_pages = readahead_pages, advice, willneed_max_pages
        self.stats = PageCacheStats()
        self._state = bytearray(n_file_pages)
        self._inactive: OrderedDict[int, None] = OrderedDict()
        self._active: OrderedDict[int, None] = OrderedDict()
        self._n_resident = 0
        # Only while an access runs: its pages (1 = pinned), the pages it read, and the inactive pages taken
        # off the tail because they could not be evicted (logically still in place there).
        self._pin = bytearray(n_file_pages)
        self._ranges: list[tuple[int, int]] = []
        self._fresh: set[int] = set()
        self._held: OrderedDict[int, None] = OrderedDict()

    # ------------------------------------------------------------------ inspection

    @property
    def bytes_read(self) -> int:
        return self.stats.pages_read * self.page_bytes

    @property
    def n_resident(self) -> int:
        return self._n_resident

    def state(self, page: int) -> int:
        """ABSENT, INACTIVE, INACTIVE_REF, ACTIVE or ACTIVE_REF."""
        return self._state[page]

    @property
    def inactive(self) -> tuple[int, ...]:
        """The inactive list, tail (next evicted) first."""
        return tuple(self._inactive)

    @property
    def active(self) -> tuple[int, ...]:
        """The active list, tail (next demoted) first."""
        return tuple(self._active)

    # ------------------------------------------------------------------ the access

    def access(self, extents: Iterable[tuple[int, int]]) -> list[Run]:
        """Touch every page of the byte ranges [start, end), in order; return the runs read from flash,
        in the order they were read. Pages already resident are not re-read."""
        advised, faulted = self.access_split(extents)
        return advised + faulted

    def access_split(self, extents: Iterable[tuple[int, int]]) -> tuple[list[Run], list[Run]]:
        """`access`, its reads in two lists: those MADV_WILLNEED started before any page was touched
        (asynchronous: they overlap in the device's queue), then those the faults read, in order (each
        blocks the touching thread until it completes)."""
        ranges = self._page_ranges(extents)
        needed = sum(end - start for start, end in ranges)
        if needed > self.capacity_pages:
            raise ValueError(f"one access touches {needed} pages ({needed * self.page_bytes} bytes) that must be "
                             f"resident together, but the page cache holds {self.capacity_pages} pages "
                             f"({self.capacity_pages * self.page_bytes} bytes): give it at least {needed} pages")
        self._ranges = ranges
        for start, end in ranges:
            self._pin[start:end] = b"\x01" * (end - start)
        state = self._state
        self.stats.accesses += 1
        self.stats.pages_touched += needed
        self.stats.hits += sum(end - start - state[start:end].count(ABSENT) for start, end in ranges)
        advised: list[Run] = []
        if self.advice == "willneed":
            for start, end in ranges:
                cap = end - start if self.willneed_max_pages is None else min(end - start, self.willneed_max_pages)
                advised += self._read(start, start + cap)
        faulted: list[Run] = []
        for start, end in ranges:
            view = state[start:end]
            if not view.count(ABSENT) and not view.count(INACTIVE_REF):
                state[start:end] = view.translate(_MARK)  # nothing to read, nothing moves between lists
                continue
            for page in range(start, end):
                if state[page] == ABSENT:
                    faulted += self._fault(page)
                self._mark_accessed(page)
        self._end_access()
        self.stats.reads += len(advised) + len(faulted)
        self.stats.pages_read += sum(n for _, n in advised) + sum(n for _, n in faulted)
        return advised, faulted

    def _page_ranges(self, extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The extents as page ranges [first, last + 1), in order, each page once (a page two extents
        share belongs to the first)."""
        ranges: list[tuple[int, int]] = []
        file_bytes = self.n_file_pages * self.page_bytes
        for start, end in extents:
            if not 0 <= start < end <= file_bytes:
                raise ValueError(f"extent ({start}, {end}) is not a non-empty byte range inside the "
                                 f"{file_bytes}-byte file")
            pieces = [(start // self.page_bytes, (end - 1) // self.page_bytes + 1)]
            for seen in ranges:
                pieces = [piece for whole in pieces for piece in _minus(whole, seen)]
            ranges += pieces
        return ranges

    def _fault(self, page: int) -> list[Run]:
        """do_sync_mmap_readahead: the read-around window (or the page alone under "random"), then the
        page itself if the window was cut before it."""
        self.stats.faults += 1
        if self.advice == "random" or not self.readahead_pages:
            return self._read(page, page + 1)
        start = max(0, page - self.readahead_pages // 2)
        runs = self._read(start, min(self.n_file_pages, start + self.readahead_pages))
        if self._state[page] == ABSENT:
            runs += self._read(page, page + 1)
        return runs

    def _read(self, start: int, end: int) -> list[Run]:
        """Read the missing pages of [start, end) in order, each contiguous stretch one run; stop at the
        first page that cannot be given room."""
        read: list[int] = []
        for page in range(start, end):
            if self._state[page] != ABSENT:
                continue
            if self._n_resident >= self.capacity_pages and not self._evict(for_pinned=bool(self._pin[page])):
                break
            self._state[page] = INACTIVE
            self._inactive[page] = None
            self._n_resident += 1
            self._fresh.add(page)
            read.append(page)
        runs: list[Run] = []
        for page in read:
            if runs and runs[-1][0] + runs[-1][1] == page:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((page, 1))
        return runs

    def _mark_accessed(self, page: int) -> None:
        """folio_mark_accessed: inactive -> inactive,referenced -> active -> active,referenced."""
        state = self._state[page]
        if state == INACTIVE_REF:
            if page in self._inactive:
                del self._inactive[page]
            else:
                del self._held[page]
            self._active[page] = None
            self._state[page] = ACTIVE
        elif state in (INACTIVE, ACTIVE):
            self._state[page] = state + 1

    def _end_access(self) -> None:
        """Put the held pages back at the inactive tail, in their order."""
        for page in reversed(self._held):
            self._inactive[page] = None
            self._inactive.move_to_end(page, last=False)
        for start, end in self._ranges:
            self._pin[start:end] = bytes(end - start)
        self._held.clear()
        self._fresh.clear()
        self._ranges = []

    # ------------------------------------------------------------------ reclaim

    def _inactive_is_low(self) -> bool:
        """mm/vmscan.c inactive_is_low: inactive * int_sqrt(10 * gb) < active, gb the two lists' GiB."""
        inactive, active = len(self._inactive) + len(self._held), len(self._active)
        gb = (inactive + active) * self.page_bytes >> 30
        return inactive * (math.isqrt(10 * gb) if gb else 1) < active

    def _demote(self) -> None:
        page, _ = self._active.popitem(last=False)
        self._state[page] = INACTIVE_REF if self._state[page] == ACTIVE_REF else INACTIVE
        self._inactive[page] = None

    def _evict(self, for_pinned: bool) -> bool:
        """Evict one page to make room: the oldest inactive page that is not pinned (nor, for a readahead
        page, read by this access), demoting from the active list while the inactive one is low or holds
        no candidate. For a page of the access there is always one: it may take a page this access read
        ahead, as a last resort (the access's pages fit, so some resident page is not one of them)."""
        while True:
            if self._active and (not self._inactive or self._inactive_is_low()):
                self._demote()
                continue
            if not self._inactive:
                if not for_pinned:
                    return False
                page = next(page for page in self._held if not self._pin[page])
                del self._held[page]
                break
            page, _ = self._inactive.popitem(last=False)
            if self._pin[page] or (not for_pinned and page in self._fresh):
                self._held[page] = None
                continue
            break
        self._state[page] = ABSENT
        self._n_resident -= 1
        self.stats.evictions += 1
        return True
