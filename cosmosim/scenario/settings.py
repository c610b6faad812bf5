"""Run settings: the knobs of one run and the one validator every entry point uses.

`cosmosim run`, sweep specs and the analytic frame all build a `RunConfig` and call
`check_settings`; the choices it accepts come from the registries (policies, prefetchers, page-cache
advice), so a new one is accepted everywhere by itself. Bits per weight are numbers here; format names
(q4_K, mxfp4) are read into numbers where a user writes them (`cosmosim.inputs.precision.parse_bits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cosmosim.device.pagecache import ADVICES
from cosmosim.device.policies import POLICIES
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.errors import InputError
from cosmosim.inputs.precision import Precision, check_bits


def choices(options) -> str:
    """"16, 8 or 4": the accepted values, for messages and --help."""
    names = [str(option) for option in options]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class RunConfig:
    """The knobs of one run; None means "derive a default" (stated in --help and echoed)."""

    policy: str = "lru"
    prefetch: str = "none"
    cache_mb: float | None = None
    cache_experts: int | None = None
    per_layer_cache: bool = False
    weight_bits: float = 16  # bits per weight (a real number: block formats count their scales); see precision
    expert_bits: float | None = None  # the routed experts' bits, the cold ones' with hot_expert_bits (None: weight_bits)
    hot_expert_bits: float | None = None  # the warm-up's most used routed experts at these bits (None: one size)
    hot_experts: int | None = None  # how many are hot, over all layers (None: hot_mb, else HOT_SHARE of them)
    hot_mb: float | None = None  # or: the hot experts' bytes at their bits
    shared_bits: float | None = None  # the shared experts' bits (None: weight_bits)
    tokens: int | None = None
    prompt_tokens: int = 16
    context_len: int = 1024
    warmup_fraction: float = 0.1
    dense_tokens: int = 4096  # tokens simulated for a dense architecture, which has no trace
    dense_sequence_len: int = 256
    cache_shared_experts: bool = False  # shared experts live in the expert cache like routed ones (default: resident)
    loader: str = "app-cache"  # how experts reach DRAM: the app's own cache, or the kernel's page cache (mmap)
    madvise: str = "normal"  # --loader mmap: the advice on the mapping (normal read-around, random, willneed)
    idle_gap_s: float = 0.0  # idle time between requests, in which a throttled device cools


    @property
    def precision(self) -> Precision:
        """Bits per weight of each class, the unset ones taking weight_bits."""
        return Precision(weights=self.weight_bits, routed=self.weight_bits if self.expert_bits is None else self.expert_bits,
                         shared=self.weight_bits if self.shared_bits is None else self.shared_bits,
                         hot=self.hot_expert_bits)


APP_CACHE, MMAP = "app-cache", "mmap"
LOADERS = (APP_CACHE, MMAP)


class BadValue(ValueError):
    """What a setting expected instead of the value given; the caller says where the value came from."""


def _choice(options) -> Callable[[Any], Any]:
    def check(value):
        if not any(value == option and type(value) is type(option) for option in options):
            raise BadValue(f"expected one of {', '.join(map(str, options))}")
        return value
    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value):
    if not _is_int(value) or value < 1:
        raise BadValue("expected an integer >= 1")
    return value


def positive_number(value):
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value) or value <= 0:
        raise BadValue("expected a finite number > 0")
    return value


def boolean(value):
    if not isinstance(value, bool):
        raise BadValue("expected true or false")
    return value


def non_negative_number(value):
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value) or value < 0:
        raise BadValue("expected a finite number >= 0")
    return value


def bits_per_weight(value):
    try:
        check_bits(value)
    except ValueError as bad:
        raise BadValue(f"{bad} (a format name such as q4_K is read by the command line and sweep specs)") from None
    return value


def _warmup_fraction(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise BadValue("expected a fraction in [0, 1)")
    return value


# Each setting a user can give, with the check of its value on its own; None (derive a default) passes.
FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "policy": _choice(tuple(POLICIES)),
    "prefetch": _choice(tuple(PREFETCHERS)),
    "weight_bits": bits_per_weight,
    "expert_bits": bits_per_weight,
    "shared_bits": bits_per_weight,
    "hot_expert_bits": bits_per_weight,
    "hot_experts": positive_int,
    "hot_mb": positive_number,
    "cache_mb": positive_number,
    "cache_experts": positive_int,
    "per_layer_cache": boolean,
    "tokens": positive_int,
    "prompt_tokens": positive_int,
    "context_len": positive_int,
    "warmup_fraction": _warmup_fraction,
    "cache_shared_experts": boolean,
    "loader": _choice(LOADERS),
    "madvise": _choice(ADVICES),
    "idle_gap_s": non_negative_number,
}


_IN_EXPERT_BITS = {"hot_expert_bits": "hot", "hot_experts": "count", "hot_mb": "mb"}  # parts of --expert-bits


def flag(name: str) -> str:
    """How `cosmosim run` spells a setting: --cache-mb; the hot experts' settings are parts of one flag
    (--expert-bits hot=8,cold=4,count=16)."""
    if name in _IN_EXPERT_BITS:
        return f"--expert-bits {_IN_EXPERT_BITS[name]}="
    return "--" + name.replace("_", "-")


def check_settings(config: RunConfig, name_of: Callable[[str], str] = flag) -> None:
    """Every setting on its own, then against the others; the same checks for MoE and dense runs.
    `name_of` says where a setting came from in messages (a flag, a spec key, a frame column)."""
    for name, check in FIELD_CHECKS.items():
        value = getattr(config, name)
        if value is None:
            continue
        try:
            check(value)
        except BadValue as bad:
            raise InputError(f"{name_of(name)}: {bad}, got {value!r}") from None
    if config.prompt_tokens > config.context_len:
        raise InputError(f"{name_of('prompt_tokens')}: expected <= {name_of('context_len')} ({config.context_len}), "
                         f"got {config.prompt_tokens}")
    if config.cache_mb is not None and config.cache_experts is not None:
        raise InputError(f"{name_of('cache_mb')} and {name_of('cache_experts')}: give one cache size, not both")
    sized = config.cache_mb is not None or config.cache_experts is not None
    if not POLICIES[config.policy].needs_cache_size and (sized or config.per_layer_cache):
        raise InputError(f"{name_of('policy')} {config.policy}: it fixes the cache itself (top_k experts per layer); "
                         f"drop {'/'.join(name_of(name) for name in CACHE_SIZE_SETTINGS)}")
    _check_loader(config, name_of)
    _check_hot_experts(config, name_of)


def _check_hot_experts(config: RunConfig, name_of: Callable[[str], str]) -> None:
    """Experts in two sizes: a byte-based cache, so the settings that count experts of one size do not apply."""
    if config.hot_expert_bits is None:
        given = [name for name in ("hot_experts", "hot_mb") if getattr(config, name) is not None]
        if given:
            raise InputError(f"{name_of(given[0])}: says how many experts are hot, but {name_of('hot_expert_bits')} "
                             "is not given (--expert-bits hot=BITS,cold=BITS)")
        return
    if config.hot_experts is not None and config.hot_mb is not None:
        raise InputError(f"{name_of('hot_experts')} and {name_of('hot_mb')}: give the hot experts as a count or a "
                         "budget, not both")
    clashes = {"cache_experts": f"counts experts of one size; give the cache in bytes ({name_of('cache_mb')})",
               "cache_shared_experts": "caches the shared experts as routed ones of one size"}
    for name, why in clashes.items():
        if getattr(config, name) not in (None, False):
            raise InputError(f"{name_of(name)}: {why}, but {name_of('hot_expert_bits')} makes experts of two sizes")


def _check_loader(config: RunConfig, name_of: Callable[[str], str]) -> None:
    """Under mmap the kernel's page cache is the cache: the app cache's own knobs mean nothing there."""
    if config.loader == MMAP:
        given = [name for name in ROUTING_SETTINGS if getattr(config, name) != getattr(RunConfig, name)]
        if given:
            raise InputError(f"{name_of('loader')} {MMAP}: the kernel's page cache is the expert cache (sized by the "
                             f"profile's page_cache section), so drop {', '.join(name_of(name) for name in given)}")
    elif config.madvise != RunConfig.madvise:
        raise InputError(f"{name_of('madvise')} {config.madvise}: advice on a mapping needs {name_of('loader')} {MMAP}")


CACHE_SIZE_SETTINGS = ("cache_mb", "cache_experts", "per_layer_cache")
# The app cache's own settings: meaningless without experts to cache, or when the page cache is the cache.
# (--loader mmap maps GGUF tensors, each of one type for all of a layer's experts: no hot experts either.)
ROUTING_SETTINGS = ("policy", "prefetch", *CACHE_SIZE_SETTINGS, "cache_shared_experts", "hot_expert_bits",
                    "hot_experts", "hot_mb")


def check_dense_settings(config: RunConfig, arch_name: str) -> None:
    """A dense architecture has no expert cache: a cache setting given for it is a mistake, not a no-op."""
    given = [name for name in ROUTING_SETTINGS if getattr(config, name) != getattr(RunConfig, name)]
    if given:
        flags = ", ".join(flag(name) for name in given)
        raise InputError(f"--arch {arch_name} is dense: it has no experts to cache or prefetch, so drop {flags}")

