"""Device profiles: what one phone or wearable can read, hold, compute and spend, in SI units.

A profile is a TOML file in human units (KiB, MB/s, µs, GiB, GFLOP/s, pJ) whose every number
cites its source; `profile_from_dict` converts it to frozen dataclasses in bytes, seconds,
bytes/s, FLOP/s and joules, and rejects anything malformed with an `InputError` that names the
file, the field and what was expected. The schema is documented in docs/device-profiles.md.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from cosmosim.errors import InputError
from cosmosim.files import cache_dir
from cosmosim.inputs.profile_fields import (
    GIGA,
    MICRO,
    PICO,
    Field,
    check_keys,
    check_sources,
    parse_number,
    positive_number,
    table,
    to_si,
)
from cosmosim.inputs.profile_options import (
    OPTIONAL_SECTIONS,
    ComputeClasses,
    PageCacheSpec,
    ThrottleSpec,
    parse_optional_sections,
)
from cosmosim.provenance import REPOSITORY
from cosmosim.units import GIB, KIB

PROFILES_DIR_ENV = "COSMOSIM_PROFILES_DIR"
EXTENDS = "extends"  # a profile's optional top-level key: the profile it changes
HOST = "host"  # the profile name of this machine, as `cosmosim calibrate` measured it


@dataclass(frozen=True)
class FlashSpec:
    """Flash storage as a read-only device.

    A read of n bytes is split into requests of at most `max_request_bytes`. Each request waits
    `latency_s` before its data starts to move (up to `queue_depth` requests wait at once, so
    their latencies overlap), then moves at `bandwidth_bytes_per_s(request size)`.
    """

    bandwidth_curve: tuple[tuple[int, float], ...]  # (request bytes, bytes/s), sizes ascending
    latency_s: float
    queue_depth: int
    max_request_bytes: int

    def bandwidth_bytes_per_s(self, request_bytes: int) -> float:
        """Device read bandwidth for requests of this size.

        Linear in log2(size) between measured points, because flash throughput grows with
        request size roughly per doubling; flat beyond the first and last points.
        """
        if request_bytes <= 0:
            raise ValueError(f"request_bytes must be > 0, got {request_bytes}")
        sizes = [size for size, _ in self.bandwidth_curve]
        if request_bytes <= sizes[0]:
            return self.bandwidth_curve[0][1]
        if request_bytes >= sizes[-1]:
            return self.bandwidth_curve[-1][1]
        upper = bisect.bisect_right(sizes, request_bytes)
        (size_lo, bw_lo), (size_hi, bw_hi) = self.bandwidth_curve[upper - 1], self.bandwidth_curve[upper]
        fraction = math.log2(request_bytes / size_lo) / math.log2(size_hi / size_lo)
        return bw_lo + fraction * (bw_hi - bw_lo)


@dataclass(frozen=True)
class DramSpec:
    capacity_bytes: int
    app_budget_bytes: int  # what one app may keep resident: the model's weight cache lives here
    bandwidth_bytes_per_s: float  # peak interface bandwidth


@dataclass(frozen=True)
class ComputeSpec:
    """Compute ceilings; memory traffic is costed separately (roofline: the slower one wins)."""

    gemv_flops_per_s: float  # batch-1 decode, matrix-vector
    gemm_flops_per_s: float  # prefill, matrix-matrix
    layer_overhead_s: float  # fixed per-layer dispatch and synchronisation cost
    miss_overhead_s: float = 0.0  # CPU time a decode miss adds to its expert's compute (0: not modelled)


@dataclass(frozen=True)
class EnergySpec:
    flash_j_per_byte: float
    dram_j_per_byte: float
    j_per_flop: float
    idle_w: float  # platform power drawn for as long as the work takes, busy or waiting


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    flash: FlashSpec
    dram: DramSpec
    compute: ComputeSpec
    energy: EnergySpec
    path: Path
    sha256: str  # of the TOML file (of the canonical JSON for a profile built from a dict)
    throttle: ThrottleSpec | None = None  # None: the device never slows down under sustained load
    page_cache: PageCacheSpec = PageCacheSpec()  # what --loader mmap maps the weights into
    compute_classes: ComputeClasses | None = None  # None: every operation at the [compute] rates


# ----------------------------------------------------------------------------- schema
# Each section maps its TOML key (in a human unit) to the dataclass field it fills.
_CURVE_KEY = "bandwidth_curve"
_CURVE_POINT_KEYS = ("read_kib", "mb_per_s")
_SECTIONS: dict[str, dict[str, Field]] = {
    "flash": {
        "latency_us": Field("latency_s", MICRO, (1e-3, 1e6)),  # 1 ns .. 1 s
        "queue_depth": Field("queue_depth", Fraction(1), (1, 65536), integer=True, toml_integer=True),  # NVMe's most
        "max_request_kib": Field("max_request_bytes", Fraction(KIB), (0.5, 2**20), integer=True),  # 512 B .. 1 GiB
    },
    "dram": {
        "capacity_gib": Field("capacity_bytes", Fraction(GIB), (2**-20, 2**16), integer=True),  # 1 KiB .. 64 TiB
        "app_budget_gib": Field("app_budget_bytes", Fraction(GIB), (2**-20, 2**16), integer=True),
        "bandwidth_gb_per_s": Field("bandwidth_bytes_per_s", GIGA, (1e-6, 1e5)),  # 1 kB/s .. 100 TB/s
    },
    "compute": {
        "gemv_gflops": Field("gemv_flops_per_s", GIGA, (1e-6, 1e8)),  # 1 kFLOP/s .. 100 PFLOP/s
        "gemm_gflops": Field("gemm_flops_per_s", GIGA, (1e-6, 1e8)),
        "layer_overhead_us": Field("layer_overhead_s", MICRO, (1e-6, 1e6)),
        "miss_overhead_us": Field("miss_overhead_s", MICRO, (1e-6, 1e6)),
    },
    "energy": {
        "flash_pj_per_byte": Field("flash_j_per_byte", PICO, (1e-6, 1e9)),
        "dram_pj_per_bit": Field("dram_j_per_byte", 8 * PICO, (1e-6, 1e9)),
        "pj_per_flop": Field("j_per_flop", PICO, (1e-6, 1e9)),
        "idle_mw": Field("idle_w", Fraction(1, 1000), (1e-6, 1e7)),  # 1 nW .. 10 kW
    },
}
# Keys a section may leave out, and the SI value an absent one means (the effect is not modelled).
_OPTIONAL_KEYS: dict[str, dict[str, float]] = {"compute": {"miss_overhead_us": 0.0}}
_CURVE_READ_SIZE = Field("read_bytes", Fraction(KIB), (0.5, 2**20), integer=True)
_CURVE_BANDWIDTH = Field("bytes_per_s", Fraction(10**6), (1e-3, 1e8))
_TOP_LEVEL_KEYS = ("name", "description", *_SECTIONS, *OPTIONAL_SECTIONS)


def _numeric_keys(section: str) -> list[str]:
    keys = list(_SECTIONS[section])
    return [_CURVE_KEY, *keys] if section == "flash" else keys


def _parse_curve(source: str, points: Any) -> tuple[tuple[int, float], ...]:
    field = f"flash.{_CURVE_KEY}"
    if not isinstance(points, list) or not points:
        raise InputError(
            f"{source}: {field} must be a non-empty array of {{read_kib, mb_per_s}} tables, got {points!r}"
        )
    curve: list[tuple[int, float]] = []
    previous_kib = None
    for index, point in enumerate(points):
        where = f"{field}[{index}]."
        check_keys(source, where, table(source, f"{field}[{index}]", point), _CURVE_POINT_KEYS)
        read_kib = positive_number(source, where + "read_kib", point["read_kib"])
        mb_per_s = positive_number(source, where + "mb_per_s", point["mb_per_s"])
        size_bytes = to_si(source, where + "read_kib", read_kib, _CURVE_READ_SIZE)
        if curve and size_bytes <= curve[-1][0]:
            raise InputError(
                f"{source}: {field} must be sorted by strictly increasing read_kib, "
                f"got {read_kib!r} after {previous_kib!r}"
            )
        curve.append((size_bytes, to_si(source, where + "mb_per_s", mb_per_s, _CURVE_BANDWIDTH)))
        previous_kib = read_kib
    return tuple(curve)


def _parse_section(source: str, section: str, raw: Any) -> dict[str, int | float | tuple]:
    values_in, optional = table(source, section, raw), _OPTIONAL_KEYS.get(section, {})
    check_keys(source, f"{section}.", values_in, [*_numeric_keys(section), "sources"], optional=tuple(optional))
    check_sources(source, section, values_in, [key for key in _numeric_keys(section) if key in values_in])
    values: dict[str, int | float | tuple] = {}
    for key, spec in _SECTIONS[section].items():
        values[spec.attr] = (parse_number(source, f"{section}.{key}", values_in[key], spec) if key in values_in
                             else optional[key])
    if section == "flash":
        values["bandwidth_curve"] = _parse_curve(source, values_in[_CURVE_KEY])
    return values


def _text(source: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{source}: {field} must be a non-empty string, got {value!r}")
    return value


def profile_from_dict(data: dict, *, source: str) -> DeviceProfile:
    """Validate a parsed profile (TOML layout, human units) and convert it to SI dataclasses.

    `source` names the origin in error messages and becomes the profile's path; the hash is
    of the canonical JSON of `data` (load_profile replaces both with the file's own).
    """
    check_keys(source, "", table(source, "the profile", data), _TOP_LEVEL_KEYS, optional=OPTIONAL_SECTIONS)
    sections = {name: _parse_section(source, name, data[name]) for name in _SECTIONS}
    dram = DramSpec(**sections["dram"])
    if dram.app_budget_bytes > dram.capacity_bytes:
        raise InputError(
            f"{source}: dram.app_budget_gib must be <= dram.capacity_gib "
            f"({data['dram']['capacity_gib']!r}), got {data['dram']['app_budget_gib']!r}"
        )
    throttle, page_cache, compute_classes = parse_optional_sections(source, data)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return DeviceProfile(
        name=_text(source, "name", data["name"]),
        description=_text(source, "description", data["description"]),
        flash=FlashSpec(**sections["flash"]),
        dram=dram,
        compute=ComputeSpec(**sections["compute"]),
        energy=EnergySpec(**sections["energy"]),
        path=Path(source),
        sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        throttle=throttle,
        page_cache=page_cache,
        compute_classes=compute_classes,
    )


# ----------------------------------------------------------------------------- files


def profiles_dir() -> Path:
    """Where shipped profiles live: $COSMOSIM_PROFILES_DIR, else the repo's device_profiles/."""
    override = os.environ.get(PROFILES_DIR_ENV)
    if override:
        return Path(override)
    return REPOSITORY / "device_profiles"


def host_profile_path() -> Path:
    """Where `cosmosim calibrate` writes this host's profile: a measurement of this machine, so in
    the user's cache folder, not among the shipped, cited profiles of the repository."""
    return cache_dir() / "profiles" / f"{HOST}.toml"


def shipped_profiles() -> list[str]:
    """Names of the shipped profiles (the stems of device_profiles/*.toml), sorted."""
    return sorted(path.stem for path in profiles_dir().glob("*.toml"))


def _display(path: Path) -> str:
    """A short path for messages: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _profile_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """The file of a shipped name, "host", or a .toml path (relative to `relative_to`'s folder if given)."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(name_or_path)
        path = relative_to.parent / path if relative_to is not None and not path.is_absolute() else path
        if not path.is_file():
            raise InputError(f"{text}: profile file does not exist")
    elif text == HOST:
        path = host_profile_path()
        if not path.is_file():
            raise InputError(f"device profile {HOST!r}: not calibrated yet (no {path}); run `cosmosim calibrate` first")
    else:
        path = profiles_dir() / f"{text}.toml"
        if not path.is_file():
            names = ", ".join(shipped_profiles()) or "none"
            raise InputError(
                f"unknown device profile {text!r}: expected a shipped name ({names}), {HOST!r} (this machine, "
                "once `cosmosim calibrate` has run) or a path to a .toml file"
            )
    return path


def _read(path: Path) -> tuple[bytes, dict]:
    raw = path.read_bytes()
    try:
        return raw, tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"{_display(path)}: not a valid UTF-8 TOML file: {error}") from None


def _override(source: str, base: dict, data: dict) -> dict:
    """`data` over `base`, section by section and key by key; a number changed cites its own source."""
    merged = {**base}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sources = table(source, f"{key}.sources", value.get("sources", {}))
            uncited = [name for name in value if name != "sources" and name not in sources]
            if uncited:
                raise InputError(f"{source}: {key}.sources.{uncited[0]} is missing: a value that overrides the "
                                 f"extended profile's cites its own source")
            merged[key] = {**base[key], **value, "sources": {**base[key].get("sources", {}), **sources}}
        else:
            merged[key] = value
    return merged


def _with_base(path: Path, raw: bytes, data: dict, chain: tuple[Path, ...] = ()) -> tuple[bytes, dict]:
    """`extends = "<profile>"`: the named profile (a shipped name or a path relative to this file) with this
    file's keys over it; the bytes of every file of the chain, for the hash."""
    source = _display(path)
    if EXTENDS not in data:
        return raw, data
    base_name = data[EXTENDS]
    if not isinstance(base_name, str) or not base_name.strip():
        raise InputError(f"{source}: {EXTENDS} must be a profile name or a .toml path, got {base_name!r}")
    base_path = _profile_path(base_name, relative_to=path)
    if base_path.resolve() in {*chain, path.resolve()}:
        raise InputError(f"{source}: {EXTENDS} = {base_name!r} extends itself (a cycle of profiles)")
    base_raw, base_data = _with_base(base_path, *_read(base_path), (*chain, path.resolve()))
    own = {key: value for key, value in data.items() if key != EXTENDS}
    return raw + base_raw, _override(source, base_data, own)


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a shipped profile by name ("phone"), this host's calibrated one ("host") or any profile
    by its .toml path; a profile that `extends` another is that one with its own keys over it."""
    path = _profile_path(name_or_path)
    raw, data = _with_base(path, *_read(path))
    profile = profile_from_dict(data, source=_display(path))
    return replace(profile, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())
