"""The optional sections of a device profile: sustained-load throttling and the kernel's page cache.

A profile without them describes a device that never slows down and a Linux page cache with the
kernel's defaults; the schema is in docs/device-profiles.md. Every number given cites its source in
the section's `sources` table, like the required sections'.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cosmosim.errors import InputError
from cosmosim.inputs.profile_fields import Field, check_keys, check_sources, parse_number, table
from cosmosim.units import GIB, KIB

THROTTLE, PAGE_CACHE = "throttle", "page_cache"
OPTIONAL_SECTIONS = (THROTTLE, PAGE_CACHE)

# Linux defaults (torvalds/linux): 4 KiB pages (PAGE_SHIFT 12, the arm64 and x86-64 default
# configuration) and VM_READAHEAD_PAGES = SZ_128K / PAGE_SIZE (include/linux/pagemap.h), a block
# device's read_ahead_kb unless its driver or udev sets another.
LINUX_PAGE_BYTES = 4 * KIB
LINUX_READ_AHEAD_BYTES = 128 * KIB
MAX_CURVE_POINTS = 64


@dataclass(frozen=True)
class ThrottleSpec:
    """Throughput under sustained load, as fractions of peak, against seconds of load.

    The device's load grows by one second per second while it serves requests and falls by
    `cool_rate` seconds per second of idle between them (never below 0). Between points a curve is
    linear in load; past its last point it stays at that point's fraction: the steady state.
    """

    compute_curve: tuple[tuple[float, float], ...]  # (load seconds, fraction of peak), load from 0 ascending
    flash_curve: tuple[tuple[float, float], ...]  # ((0.0, 1.0),) where the profile gives none
    cool_rate: float  # load seconds shed per idle second

    @staticmethod
    def _at(curve: tuple[tuple[float, float], ...], load_s: float) -> float:
        upper = bisect.bisect_right(curve, (load_s, float("inf")))
        if upper == len(curve):
            return curve[-1][1]
        (load_lo, lo), (load_hi, hi) = curve[upper - 1], curve[upper]
        return lo + (hi - lo) * (load_s - load_lo) / (load_hi - load_lo)

    def compute_fraction(self, load_s: float) -> float:
        return self._at(self.compute_curve, load_s)

    def flash_fraction(self, load_s: float) -> float:
        return self._at(self.flash_curve, load_s)

    @property
    def steady_load_s(self) -> float:
        """The load from which both curves are flat: the steady state."""
        return max(self.compute_curve[-1][0], self.flash_curve[-1][0])


@dataclass(frozen=True)
class PageCacheSpec:
    """The Linux page cache an mmapped weights file lives in (`--loader mmap`)."""

    page_bytes: int = LINUX_PAGE_BYTES
    read_ahead_bytes: int = LINUX_READ_AHEAD_BYTES  # the mmap read-around window
    size_bytes: int | None = None  # DRAM left to the page cache; None: the app budget less KV cache and activations


_CURVES = ("compute_curve", "flash_curve")
_POINT_KEYS = ("load_s", "fraction")
_COOL_RATE = Field("cool_rate", Fraction(1), (1e-6, 1e3))
_PAGE_FIELDS = {
    "page_kib": Field("page_bytes", Fraction(KIB), (1, 1024), integer=True),
    "read_ahead_kib": Field("read_ahead_bytes", Fraction(KIB), (1, 2**20), integer=True),
    "size_gib": Field("size_bytes", Fraction(GIB), (2**-20, 2**16), integer=True),
}


def _curve(source: str, field: str, points: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_CURVE_POINTS:
        raise InputError(f"{source}: {field} must be an array of 1 to {MAX_CURVE_POINTS} {{load_s, fraction}} "
                         f"tables, got {points!r}")
    curve: list[tuple[float, float]] = []
    for index, point in enumerate(points):
        where = f"{field}[{index}]"
        check_keys(source, where + ".", table(source, where, point), _POINT_KEYS)
        load_s, fraction = point["load_s"], point["fraction"]
        for key, value in (("load_s", load_s), ("fraction", fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{source}: {where}.{key} must be a number, got {value!r}")
        if index == 0 and load_s != 0:
            raise InputError(f"{source}: {where}.load_s must be 0 (the curve starts at the first second of load), "
                             f"got {load_s!r}")
        if curve and not load_s > curve[-1][0]:
            raise InputError(f"{source}: {where}.load_s must be > the previous point's ({curve[-1][0]!r}), got {load_s!r}")
        if not load_s <= 1e7:
            raise InputError(f"{source}: {where}.load_s must be at most 1e7 seconds, got {load_s!r}")
        if not 0 < fraction <= 1:
            raise InputError(f"{source}: {where}.fraction must be in (0, 1] (a fraction of peak), got {fraction!r}")
        curve.append((float(load_s), float(fraction)))
    return tuple(curve)


def _throttle(source: str, raw: Any) -> ThrottleSpec:
    values = table(source, THROTTLE, raw)
    keys = [*_CURVES, "cool_rate"]
    check_keys(source, f"{THROTTLE}.", values, [*keys, "sources"], optional=("flash_curve",))
    check_sources(source, THROTTLE, values, [key for key in keys if key in values])
    curves = {name: _curve(source, f"{THROTTLE}.{name}", values[name]) for name in _CURVES if name in values}
    return ThrottleSpec(compute_curve=curves["compute_curve"], flash_curve=curves.get("flash_curve", ((0.0, 1.0),)),
                        cool_rate=parse_number(source, f"{THROTTLE}.cool_rate", values["cool_rate"], _COOL_RATE))


def _page_cache(source: str, raw: Any) -> PageCacheSpec:
    values = table(source, PAGE_CACHE, raw)
    check_keys(source, f"{PAGE_CACHE}.", values, [*_PAGE_FIELDS, "sources"], optional=tuple(_PAGE_FIELDS))
    check_sources(source, PAGE_CACHE, values, [key for key in _PAGE_FIELDS if key in values])
    given = {spec.attr: parse_number(source, f"{PAGE_CACHE}.{key}", values[key], spec)
             for key, spec in _PAGE_FIELDS.items() if key in values}
    spec = PageCacheSpec(**given)
    if spec.page_bytes & (spec.page_bytes - 1) or spec.page_bytes < LINUX_PAGE_BYTES:
        raise InputError(f"{source}: {PAGE_CACHE}.page_kib must be a power of two >= 4 (a kernel page size), "
                         f"got {values['page_kib']!r}")
    if spec.read_ahead_bytes % spec.page_bytes:
        raise InputError(f"{source}: {PAGE_CACHE}.read_ahead_kib must be a whole number of pages "
                         f"({spec.page_bytes // KIB} KiB), got {values['read_ahead_kib']!r}")
    return spec


def parse_optional_sections(source: str, data: dict) -> tuple[ThrottleSpec | None, PageCacheSpec]:
    """The profile's throttle (None: it never slows down) and page cache (the Linux defaults where not given)."""
    throttle = _throttle(source, data[THROTTLE]) if THROTTLE in data else None
    page_cache = _page_cache(source, data[PAGE_CACHE]) if PAGE_CACHE in data else PageCacheSpec()
    return throttle, page_cache
