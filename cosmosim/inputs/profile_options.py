"""The optional sections of a device profile: sustained-load throttling, the kernel's page cache, and
compute throughputs by operation class.

A profile without them describes a device that never slows down, a Linux page cache with the
kernel's defaults, and one compute unit running every operation at the `[compute]` section's rates;
the schema is in docs/device-profiles.md. Every number given cites its source in the section's
`sources` table, like the required sections'.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cosmosim.errors import InputError
from cosmosim.inputs.profile_fields import GIGA, Field, check_keys, check_sources, parse_number, table
from cosmosim.units import GIB, KIB

THROTTLE, PAGE_CACHE, COMPUTE_CLASSES = "throttle", "page_cache", "compute_classes"
OPTIONAL_SECTIONS = (THROTTLE, PAGE_CACHE, COMPUTE_CLASSES)

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


@dataclass(frozen=True)
class OpClassCompute:
    """The compute ceilings one class of operations runs at, where the profile gives them; None: the
    `[compute]` section's figure (`cosmosim.device.costs.Rates` resolves them)."""

    gemv_flops_per_s: float | None = None  # batch-1 decode
    gemm_flops_per_s: float | None = None  # prefill
    unit: str | None = None  # a label for what runs the class ("npu", "cpu"), for docs and output only


@dataclass(frozen=True)
class ComputeClasses:
    """Separate compute ceilings for the non-expert work (attention, norms, router, shared experts, dense
    FFN layers), the routed experts and the LM head: a device whose NPU or GPU runs the dense work while
    its CPU runs the experts. A decode pass's operations depend on one another in order (attention ->
    router -> experts -> the next layer), so the units take turns, with one exception: a MoE layer's
    shared experts need only what its router needs. With `concurrent` (two differently named units
    that compute at once) they run on the attention unit while the routed experts run on theirs."""

    attention: OpClassCompute = OpClassCompute()
    expert: OpClassCompute = OpClassCompute()
    lm_head: OpClassCompute = OpClassCompute()
    concurrent: bool = False


OP_CLASSES = ("attention", "expert", "lm_head")
_CURVES = ("compute_curve", "flash_curve")
_POINT_KEYS = ("load_s", "fraction")
_COOL_RATE = Field("cool_rate", Fraction(1), (1e-6, 1e3))
_PAGE_FIELDS = {
    "page_kib": Field("page_bytes", Fraction(KIB), (1, 1024), integer=True),
    "read_ahead_kib": Field("read_ahead_bytes", Fraction(KIB), (1, 2**20), integer=True),
    "size_gib": Field("size_bytes", Fraction(GIB), (2**-20, 2**16), integer=True),
}


# <class>_gemv_gflops and <class>_gemm_gflops, in the [compute] section's unit and range. The LM head has
# no GEMM rate: it runs on one token per pass, the prompt's last after a prefill, so always as a GEMV.
_CLASS_FIELDS = {
    f"{name}_{kind}_gflops": (name, Field(f"{kind}_flops_per_s", GIGA, (1e-6, 1e8)))
    for name in OP_CLASSES for kind in ("gemv", "gemm") if (name, kind) != ("lm_head", "gemm")
}
_CLASS_UNITS = {f"{name}_unit": name for name in OP_CLASSES}
CONCURRENT = "concurrent"  # the attention and expert units compute at once (shared experts beside routed ones)
MAX_UNIT_CHARS = 32


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


def _unit(source: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_UNIT_CHARS or not value.isprintable():
        raise InputError(f"{source}: {field} must be a short label of the unit that runs the class (1 to "
                         f"{MAX_UNIT_CHARS} printable characters, e.g. \"npu\" or \"cpu\"), got {value!r}")
    return value.strip()


def _compute_classes(source: str, raw: Any) -> ComputeClasses:
    values = table(source, COMPUTE_CLASSES, raw)
    keys = [*_CLASS_FIELDS, *_CLASS_UNITS]
    if "lm_head_gemm_gflops" in values:
        raise InputError(f"{source}: {COMPUTE_CLASSES}.lm_head_gemm_gflops is not a known key: the LM head runs on one "
                         "token per pass (the prompt's last after a prefill), always as a GEMV, so only "
                         "lm_head_gemv_gflops applies")
    check_keys(source, f"{COMPUTE_CLASSES}.", values, [*keys, CONCURRENT, "sources"], optional=(*keys, CONCURRENT))
    check_sources(source, COMPUTE_CLASSES, values, [key for key in _CLASS_FIELDS if key in values])
    given: dict[str, dict[str, float | str]] = {name: {} for name in OP_CLASSES}
    for key, (name, spec) in _CLASS_FIELDS.items():
        if key in values:
            given[name][spec.attr] = parse_number(source, f"{COMPUTE_CLASSES}.{key}", values[key], spec)
    for key, name in _CLASS_UNITS.items():
        if key in values:
            given[name]["unit"] = _unit(source, f"{COMPUTE_CLASSES}.{key}", values[key])
    return ComputeClasses(**{name: OpClassCompute(**fields) for name, fields in given.items()},
                          concurrent=_concurrent(source, values, given))


def _concurrent(source: str, values: dict, given: dict[str, dict[str, float | str]]) -> bool:
    """`concurrent`: the attention and expert units compute at the same time, so they must be two units."""
    concurrent = values.get(CONCURRENT, False)
    field = f"{COMPUTE_CLASSES}.{CONCURRENT}"
    if not isinstance(concurrent, bool):
        raise InputError(f"{source}: {field} must be true or false (a TOML boolean), got {concurrent!r}")
    units = given["attention"].get("unit"), given["expert"].get("unit")
    if concurrent and (None in units or units[0] == units[1]):
        raise InputError(f"{source}: {field} = true needs attention_unit and expert_unit naming two different units "
                         f"(one unit cannot compute twice at once), got {units[0]!r} and {units[1]!r}")
    return concurrent


def parse_optional_sections(source: str, data: dict) -> tuple[ThrottleSpec | None, PageCacheSpec, ComputeClasses | None]:
    """The profile's throttle (None: it never slows down), page cache (the Linux defaults where not given) and
    compute classes (None: every operation at the [compute] section's rates)."""
    throttle = _throttle(source, data[THROTTLE]) if THROTTLE in data else None
    page_cache = _page_cache(source, data[PAGE_CACHE]) if PAGE_CACHE in data else PageCacheSpec()
    classes = _compute_classes(source, data[COMPUTE_CLASSES]) if COMPUTE_CLASSES in data else None
    return throttle, page_cache, classes
