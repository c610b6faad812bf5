"""One simulated situation: a trace replayed by an architecture on a device under a cache policy.

`build_scenario` checks the combination (flags, layer mapping, cache size) and resolves every
default once, so the simulator and the analytical model answer exactly the same question. The
resolved inputs are echoed in every result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from cosmosim.device.cache import ExpertCache
from cosmosim.device.costs import StepCosts
from cosmosim.device.gguf_layout import GgufLayout
from cosmosim.device.hardware import Flash
from cosmosim.device.mapped import MappedWeights, largest_access_bytes
from cosmosim.device.policies import POLICIES, PolicyContext
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.arch_files import notes_of
from cosmosim.inputs.precision import Precision
from cosmosim.inputs.profiles import DeviceProfile, load_profile
from cosmosim.inputs.trace import Trace, load_trace
from cosmosim.scenario.expert_sizes import ExpertSizes, resolve_expert_sizes
from cosmosim.scenario.settings import MMAP, ROUTING_SETTINGS, RunConfig, check_dense_settings, check_settings
from cosmosim.units import MB
from cosmosim.workload.dense import dense_workload
from cosmosim.workload.stream import Workload, build_workload


@dataclass(frozen=True)
class Memory:
    """DRAM use in bytes; peak = resident weights + expert cache + KV cache + activations."""

    resident_weights: int
    expert_cache: int
    kv_cache: int
    activations: int

    @property
    def peak(self) -> int:
        return self.resident_weights + self.expert_cache + self.kv_cache + self.activations


MEMORY_PARTS = tuple(part.name for part in fields(Memory))


@dataclass(frozen=True)
class CacheSetup:
    """The DRAM expert cache a run gets, resolved once from the settings for every engine."""

    capacity: int  # experts in all (0 for a dense architecture)
    per_layer: bool  # split into equal per-layer partitions (the policy's own rule, or --per-layer-cache)
    offloading_idle: bool  # the cache holds every expert: flash is read once per expert at most
    warnings: tuple[str, ...] = ()
    page_cache_bytes: int = 0  # --loader mmap: the page cache every weight shares (capacity: the experts it holds beside the rest)
    capacity_bytes: int | None = None  # experts of two sizes: the cache counts bytes (capacity: the most entries it holds)

    def partition_capacity(self, n_layers: int) -> int:
        return self.capacity // n_layers if self.per_layer else self.capacity


NO_CACHE = CacheSetup(capacity=0, per_layer=False, offloading_idle=True)


@dataclass
class Scenario:
    arch: Architecture
    profile: DeviceProfile
    config: RunConfig
    workload: Workload
    costs: StepCosts
    cache: CacheSetup
    trace: Trace | None
    warnings: list[str] = field(default_factory=list)
    expert_sizes: ExpertSizes | None = None  # routed experts in two sizes (--expert-bits hot=,cold=)
    hot_costs: StepCosts | None = None  # then: the costs with every routed expert at the hot bits

    @property
    def cache_capacity(self) -> int:
        return self.cache.capacity

    @property
    def offloading_idle(self) -> bool:
        return self.cache.offloading_idle

    def expert_cache(self) -> ExpertCache:
        """A fresh, empty DRAM expert cache as this scenario has it: what every engine that keeps one uses."""
        workload, by_bytes = self.workload, self.cache.capacity_bytes is not None
        capacity = self.cache.capacity_bytes if by_bytes else self.cache.capacity
        key_bytes = self.expert_sizes.key_bytes if by_bytes else None
        context = PolicyContext(capacity=capacity, n_experts=workload.n_experts, top_k=workload.top_k,
                                next_use=workload.next_use, warmup_usage=workload.warmup_usage,
                                access_key=workload.access_key, key_bytes=key_bytes)
        return ExpertCache(POLICIES[self.config.policy], capacity, workload.n_layers, context,
                           per_layer=self.cache.per_layer, key_bytes=None if key_bytes is None else key_bytes.tolist())

    def mapped_weights(self, flash: Flash) -> MappedWeights:
        """A fresh, empty page cache over the weights file, as this scenario maps it (--loader mmap)."""
        return MappedWeights(self.arch, self.config.precision, self.profile.page_cache, self.cache.page_cache_bytes,
                             self.config.madvise, flash)

    def memory(self, cache_entries: int | None = None, page_cache_bytes: int | None = None) -> Memory:
        """Memory with the cache at `cache_entries` (default: its capacity); under --loader mmap, with the page
        cache holding `page_cache_bytes` (default: its size), the resident weights first."""
        resident = self.arch.resident_bytes(self.config.precision)
        if self.cache.page_cache_bytes:
            held = self.cache.page_cache_bytes if page_cache_bytes is None else page_cache_bytes
            resident, expert_cache = min(held, resident), max(held - resident, 0)
        elif self.expert_sizes is not None:  # two sizes: what the cache reserves, whichever experts it holds
            expert_cache = self.cache.capacity_bytes or self.cache.capacity * self.expert_sizes.largest
        else:
            entries = self.cache_capacity if cache_entries is None else cache_entries
            expert_cache = entries * self.costs.expert_bytes
        return Memory(
            resident_weights=resident,
            expert_cache=expert_cache,
            kv_cache=self.costs.kv_cache_bytes(self.config.context_len),
            activations=self.costs.activation_bytes(self.config.prompt_tokens),
        )

    def inputs(self) -> dict:
        """The resolved inputs, for the output's `inputs` block."""
        config = asdict(self.config)
        if not self.arch.is_moe:  # nothing of these was used: say so rather than echo the defaults
            config.update(dict.fromkeys(ROUTING_SETTINGS))
        sizes = self.expert_sizes
        if sizes is not None:
            config.update(hot_experts=sizes.n_hot, hot_mb=sizes.n_hot * sizes.hot_bytes / MB)
        cache_bytes = self.cache.capacity_bytes
        return {
            **config,
            "arch": self.arch.name,
            "profile": self.profile.name,
            "trace": str(self.trace.path) if self.trace is not None and self.trace.path else None,
            "cache_experts": self.cache_capacity,
            "cache_mb": (self.cache_capacity * self.costs.expert_bytes if cache_bytes is None else cache_bytes) / MB,
            "page_cache_mb": self.cache.page_cache_bytes / MB if self.cache.page_cache_bytes else None,
            "expert_mb": self.costs.expert_bytes / MB,
            "hot_expert_mb": None if sizes is None else sizes.hot_bytes / MB,
            "total_experts": self.arch.total_experts,
            "offloading_idle": self.offloading_idle,
            "requests": self.workload.n_requests,
            "decode_tokens": self.workload.n_decode_tokens,
            "warmup_sequences": self.workload.warmup_sequences,
        }


def _requested_capacity(arch: Architecture, profile: DeviceProfile, config: RunConfig, costs: StepCosts,
                        warnings: list[str]) -> int:
    if not POLICIES[config.policy].needs_cache_size:
        return arch.n_moe_layers * arch.top_k
    if config.cache_experts is not None:
        return config.cache_experts
    if config.cache_mb is not None:
        return int(config.cache_mb * MB // costs.expert_bytes)
    fixed = _fixed_bytes(arch, config, costs)
    left = profile.dram.app_budget_bytes - fixed
    capacity = max(int(left // costs.expert_bytes), 0)
    if capacity < arch.top_k:
        raise InputError(f"{profile.name}: the app budget of {profile.dram.app_budget_bytes / MB:.0f} MB leaves "
                         f"{max(left, 0) / MB:.0f} MB for experts, less than top_k={arch.top_k} experts of "
                         f"{costs.expert_bytes / MB:.1f} MB; give --cache-mb or fewer --weight-bits")
    warnings.append(f"cache: {capacity} experts from the {profile.name} app budget "
                    f"({profile.dram.app_budget_bytes / MB:.0f} MB minus {fixed / MB:.0f} MB resident)")
    return capacity


def _fixed_bytes(arch: Architecture, config: RunConfig, costs: StepCosts) -> int:
    """What must stay in DRAM beside the expert cache: the default cache is what the app budget leaves."""
    return (arch.resident_bytes(config.precision) + costs.kv_cache_bytes(config.context_len)
            + costs.activation_bytes(config.prompt_tokens))


def resolve_byte_cache(arch: Architecture, profile: DeviceProfile, config: RunConfig, costs: StepCosts,
                       sizes: ExpertSizes) -> CacheSetup:
    """The cache of experts in two sizes, in bytes: asked for, or what the app budget leaves; per-layer partitions
    of equal bytes; capped at what holds every expert. `capacity` is then the most entries it can hold."""
    warnings: list[str] = []
    if config.cache_mb is not None:
        capacity = int(config.cache_mb * MB)
    else:
        fixed = _fixed_bytes(arch, config, costs)
        capacity = max(profile.dram.app_budget_bytes - fixed, 0)
        warnings.append(f"cache: {capacity / MB:.0f} MB from the {profile.name} app budget "
                        f"({profile.dram.app_budget_bytes / MB:.0f} MB minus {fixed / MB:.0f} MB resident)")
    layers, per_layer = arch.n_moe_layers, config.per_layer_cache
    whole = int(sizes.key_bytes.reshape(layers, -1).sum(axis=1).max()) * layers if per_layer else sizes.total_bytes
    offloading_idle = capacity >= whole
    if offloading_idle:
        warnings.append(f"cache: {capacity / MB:.1f} MB holds all {arch.total_experts} experts "
                        f"({whole / MB:.1f} MB), so offloading is idle (each expert is read from flash once, then stays)")
        capacity = whole
    per_partition, needed = capacity // layers if per_layer else capacity, arch.top_k * sizes.largest
    if per_partition < needed:
        where = "per layer" if per_layer else "in all"
        raise InputError(f"cache: {per_partition / MB:.2f} MB {where} is smaller than top_k={arch.top_k} of the "
                         f"largest experts ({needed / MB:.2f} MB); a step's experts must fit at once: give a larger "
                         "--cache-mb or fewer bits")
    entries = min(capacity // min(sizes.hot_bytes, sizes.cold_bytes), arch.total_experts)
    return CacheSetup(entries, per_layer, offloading_idle, tuple(warnings), capacity_bytes=capacity)


def resolve_cache(arch: Architecture, profile: DeviceProfile, config: RunConfig, costs: StepCosts,
                  sizes: ExpertSizes | None = None) -> CacheSetup:
    """The cache of a MoE run: its size (asked for, or what the app budget leaves), its partitions,
    rounded to whole per-layer partitions and to the number of experts there are; counted in bytes when
    `sizes` makes experts of two sizes and the policy sizes its cache by the settings."""
    if not arch.is_moe:
        return NO_CACHE
    if sizes is not None and POLICIES[config.policy].needs_cache_size:
        return resolve_byte_cache(arch, profile, config, costs, sizes)
    warnings: list[str] = []
    capacity = _requested_capacity(arch, profile, config, costs, warnings)
    per_layer = POLICIES[config.policy].per_layer_partitions or config.per_layer_cache
    layers = arch.n_moe_layers
    if per_layer and capacity % layers:
        floored = capacity - capacity % layers
        warnings.append(f"cache: {capacity} experts split into {layers} equal per-layer partitions "
                        f"hold {floored} ({floored // layers} per layer)")
        capacity = floored
    total = arch.total_experts
    offloading_idle = capacity >= total
    if offloading_idle:
        warnings.append(f"cache: {capacity} entries hold all {total} experts, so offloading is idle "
                        "(each expert is read from flash once, then stays)")
        capacity = total
    setup = CacheSetup(capacity, per_layer, offloading_idle, tuple(warnings))
    per_partition = setup.partition_capacity(layers)
    if per_partition < arch.top_k:
        where = "per layer" if per_layer else "in all"
        raise InputError(f"cache: capacity {capacity} experts ({per_partition} {where}) is smaller than "
                         f"top_k={arch.top_k}; a step's experts must fit at once")
    return setup


def resolve_page_cache(arch: Architecture, profile: DeviceProfile, config: RunConfig, costs: StepCosts) -> CacheSetup:
    """--loader mmap: the page cache the weights file is mapped into, its size the profile's page_cache.size_gib or
    else what an app cache would get (the app budget less KV cache and activations); `capacity` is then the
    experts it holds beside the resident weights, for the verdict and the echo."""
    fixed = costs.kv_cache_bytes(config.context_len) + costs.activation_bytes(config.prompt_tokens)
    size = profile.page_cache.size_bytes
    warnings = []
    if size is None:
        size = profile.dram.app_budget_bytes - fixed
        warnings.append(f"page cache: {size / MB:.0f} MB, the {profile.name} app budget less KV cache and activations "
                        "(no page_cache.size_gib in the profile)")
    layout = GgufLayout(arch, config.precision)
    needed = largest_access_bytes(layout, profile.page_cache.page_bytes)
    if size < needed:
        raise InputError(f"{profile.name}: a page cache of {max(size, 0) / MB:.0f} MB cannot hold one use of the weights "
                         f"at once ({needed / MB:.0f} MB: a layer, an expert or the LM head); give fewer --weight-bits "
                         "or a profile with a larger page_cache.size_gib")
    resident = arch.resident_bytes(config.precision)
    experts = min(max(size - resident, 0) // costs.expert_bytes, arch.total_experts) if arch.is_moe else 0
    return CacheSetup(experts, per_layer=False, offloading_idle=size >= layout.file_bytes, warnings=tuple(warnings),
                      page_cache_bytes=size)


def shared_as_routed(arch: Architecture, precision: Precision) -> Architecture:
    """--cache-shared-experts: the architecture whose routed experts include the shared ones, ids E..E+S-1 of
    every MoE layer, chosen by every token ahead of its top-k, so they are read, cached and evicted like
    the others (a policy keeps them as it keeps any expert reused every token). Their router rows (S x d
    per layer) are the only weights this adds to the counts. The cache holds experts of one size, so
    they must be the routed experts' size."""
    shared = arch.n_shared_experts
    if not shared:
        raise InputError(f"--cache-shared-experts: --arch {arch.name} has no shared experts")
    if arch.shared_ffn_hidden != arch.ffn_hidden or arch.wd_rank is not None:
        raise InputError(f"--cache-shared-experts: {arch.name}'s shared experts ({arch.shared_expert_params()} weights) "
                         f"differ in size from its routed ones ({arch.expert_params()}); the expert cache holds one "
                         "size of expert, so keep them resident")
    if precision.shared != precision.routed:
        raise InputError(f"--cache-shared-experts: --shared-bits {precision.shared:g} differs from --expert-bits "
                         f"{precision.routed:g}; the expert cache holds one size of expert, so give them one bit-width")
    return replace(arch, n_experts=arch.n_experts + shared, top_k=arch.top_k + shared, n_shared_experts=0)


def _with_shared_chosen(trace: Trace, n_experts: int, shared: int) -> Trace:
    """The trace with experts n_experts..n_experts+shared-1 chosen by every token at every layer, first."""
    ids_TLS = np.broadcast_to(np.arange(n_experts, n_experts + shared, dtype=trace.experts.dtype),
                              (*trace.experts.shape[:2], shared))
    gates_TLS = np.ones(ids_TLS.shape, dtype=trace.gates.dtype)  # every token takes them whole
    model = {**trace.meta["model"], "n_experts": n_experts + shared, "top_k": trace.top_k + shared}
    return Trace(np.concatenate([ids_TLS, trace.experts], axis=2), np.concatenate([gates_TLS, trace.gates], axis=2),
                 trace.positions, {**trace.meta, "model": model}, path=trace.path)


def build_scenario(profile: DeviceProfile, arch: Architecture, trace: Trace | None, config: RunConfig) -> Scenario:
    check_settings(config)
    costs = StepCosts.build(arch, profile, config.precision)
    if not arch.is_moe:
        if trace is not None:
            raise InputError(f"--arch {arch.name} is dense: it routes nothing, so drop --trace")
        check_dense_settings(config, arch.name)
        tokens = config.dense_tokens if config.tokens is None else config.tokens
        workload = dense_workload(arch.n_layers, tokens=tokens, prompt_tokens=config.prompt_tokens,
                                  context_len=config.context_len, sequence_len=config.dense_sequence_len)
        cache = resolve_page_cache(arch, profile, config, costs) if config.loader == MMAP else NO_CACHE
        return Scenario(arch, profile, config, workload, costs, cache, None, list(cache.warnings))
    if trace is None:
        raise InputError(f"--arch {arch.name} is a MoE: give a routing --trace")
    arch.check_routing(str(trace.path or 'trace'), trace.n_experts, trace.top_k)
    if config.cache_shared_experts:
        trace = _with_shared_chosen(trace, arch.n_experts, arch.n_shared_experts)
        arch = shared_as_routed(arch, config.precision)
        costs = StepCosts.build(arch, profile, config.precision)
    warnings: list[str] = []
    layers = arch.n_moe_layers
    if trace.n_layers != layers:
        warnings.append(f"layers: the trace has {trace.n_layers}, {arch.name} has {layers} MoE layers; "
                        f"its i-th MoE layer replays trace layer floor(i * {trace.n_layers} / {layers})")
    workload = build_workload(trace, layers, prompt_tokens=config.prompt_tokens, context_len=config.context_len,
                              max_tokens=config.tokens, warmup_fraction=config.warmup_fraction)
    hot_costs, sizes = None, None
    if config.hot_expert_bits is not None:
        hot_costs = StepCosts.build(arch, profile, replace(config.precision, routed=config.hot_expert_bits, hot=None))
        sizes = resolve_expert_sizes(config, workload, hot_costs.expert_bytes, costs.expert_bytes)
    if config.loader == MMAP:
        cache = resolve_page_cache(arch, profile, config, costs)
    else:
        cache = resolve_cache(arch, profile, config, costs, sizes)
    return Scenario(arch, profile, config, workload, costs, cache, trace, [*warnings, *cache.warnings], sizes, hot_costs)


def resolve_arch(arch: str | Path | Architecture | None, trace: Trace | None) -> Architecture:
    """The architecture named (`cosmosim arch` lists them), or at a path (a .toml architecture file or a
    Hugging Face config.json), or else the one the trace was recorded for (its meta.target_arch)."""
    if isinstance(arch, Architecture):
        return arch
    if arch is not None:
        return get_arch(arch)
    target = trace.meta.get("target_arch") if trace is not None else None
    if not target:
        raise InputError("--arch: not given, and the trace's meta.target_arch names none; give --arch NAME or "
                         "--arch PATH (see `cosmosim arch`)")
    try:
        return get_arch(target)
    except InputError as error:
        raise InputError(f"{trace.path or 'trace'}: meta.target_arch: {error}; or give --arch NAME or PATH") from None


def prepare(profile: str | Path | DeviceProfile, trace: str | Path | Trace | None = None,
            arch: str | Architecture | None = None, config: RunConfig | None = None) -> Scenario:
    """A scenario from names, paths or loaded objects: what every engine is given."""
    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    trace = trace if isinstance(trace, Trace) or trace is None else load_trace(trace)
    architecture = resolve_arch(arch, trace)
    scenario = build_scenario(profile, architecture, trace, config or RunConfig())
    scenario.warnings.extend(f"arch: {note}" for note in notes_of(architecture))  # what a config.json mapping approximated
    return scenario
