"""Sweep specs: a TOML file that names axes; the sweep runs their product.

    name = "wearable design space"          # optional
    engine = "des"                          # optional; `cosmosim sweep --engine` overrides
    [axes]                                  # each axis a non-empty array, swept in the order written
    profile = ["wearable", "my_watch.toml"] # shipped names or .toml paths
    arch = ["wearable-moe", "my_moe.toml"]  # names or architecture files (relative to this file); omit: each
                                            # trace's meta.target_arch
    wd_rank = ["full", 100, 200]            # omit: the architecture's own
    trace = ["../traces/*.npz"]             # paths or globs, relative to this file
    weight_bits = [16, 8, 4]                # bits per weight, or formats: ["bf16", "q8_0", "q4_K"]
    expert_bits = ["q4_K", 3]               # the routed experts' own (also shared_bits); omit: weight_bits
    hot_expert_bits = [8]                   # the warm-up's most used experts at these bits, the rest at
    hot_experts = [16, 38]                  # expert_bits: how many (or hot_mb; default a quarter)
    cache_mb = [50, 100, 200]               # or cache_experts, or cache_fraction (of all experts)
    policy = ["lru", "belady", "kactive"]
    exrep = ["recorded", 0.1, 0.3, 0.5]     # each trace as recorded, or synthesised like it at that ExRep
    synth_seed = [0, 1]                     # seeds of the synthesised traces (default 0)
    n_experts = [8, 16]                     # override axes: variants of each point's architecture
    top_k = [1, 2]                          # (also ffn_hidden, n_layers, d_model, n_shared_experts)

Every value is checked when the spec loads (profiles and traces are read, checksummed and their
training metadata kept), so a typo fails at once with one line naming the file, the axis and the
value, never at point 437 of 500. The full schema is in docs/sweeps.md.
"""

from __future__ import annotations

import glob
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cosmosim.errors import InputError
from cosmosim.inputs.arch import FULL_RANK, catalog_groups, get_arch
from cosmosim.inputs.arch_variants import OVERRIDES
from cosmosim.inputs.arch_files import looks_like_path
from cosmosim.inputs.locality import exrep
from cosmosim.inputs.precision import FORMATS, MAX_BITS, MIN_BITS, parse_bits
from cosmosim.inputs.profiles import load_profile
from cosmosim.inputs.synthetic import highest_exrep_like
from cosmosim.inputs.trace import load_trace
from cosmosim.provenance import sha256_file
from cosmosim.runner import ENGINES
from cosmosim.scenario.settings import FIELD_CHECKS, BadValue, positive_number

TOP_LEVEL_KEYS = ("name", "description", "engine", "axes")
CACHE_AXES = ("cache_mb", "cache_experts", "cache_fraction")
RECORDED = "recorded"  # an `exrep` axis value: the trace itself, not one synthesised like it


@dataclass(frozen=True)
class ProfileFacts:
    path: str  # absolute, so worker processes find it whatever their working directory
    name: str
    sha256: str


@dataclass(frozen=True)
class TraceFacts:
    """What a sweep needs to know about one trace file, read once when the spec loads."""

    path: str  # absolute
    sha256: str
    n_tokens: int
    n_experts: int
    top_k: int
    target_arch: str | None
    exrep: float  # the trace's expert replacement rate (cosmosim.inputs.locality.exrep)
    training: dict  # meta.training: val_loss, bles_lambda, bles_tau, steps, config_name... ({} if none)
    model_wd_rank: int | None  # the recorded mini's own WD rank (meta.model.wd_rank)
    highest_exrep: float  # the most a trace synthesised like this one can switch (an `exrep` axis value's bound)


@dataclass(frozen=True)
class SweepSpec:
    source: str  # the spec file, for messages
    name: str
    description: str
    engine: str | None
    axes: tuple[tuple[str, tuple], ...]  # (axis, values) in the order written; trace globs expanded
    profiles: dict[str, ProfileFacts]  # by the profile value as written
    traces: dict[str, TraceFacts]  # by the trace path as written (relative to the spec file)

    def axis(self, name: str) -> tuple | None:
        return dict(self.axes).get(name)

    @property
    def n_combinations(self) -> int:
        """The product's size, before combinations that mean the same point are merged."""
        return math.prod(len(values) for _, values in self.axes)


# ---------------------------------------------------------------------------- value checks
# A run setting's axis takes what `cosmosim run` takes (scenario.settings.FIELD_CHECKS); the rest
# are the sweep's own. Each returns the value to keep, or raises BadValue with what was expected.


def _fraction(value):
    if positive_number(value) > 1:
        raise BadValue("expected a fraction in (0, 1]")
    return float(value)


def _wd_rank(value):
    if value == FULL_RANK or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise BadValue(f"expected an integer >= 1 or {FULL_RANK!r} (experts not decomposed)")


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise BadValue("expected a non-empty string")
    return value


def _exrep(value):
    if value == RECORDED:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # NaN fails too
        raise BadValue(f"expected an ExRep in [0, 1] or {RECORDED!r} (the trace as recorded)")
    return float(value)


def _seed(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadValue("expected an integer seed >= 0")
    return value


def _size(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadValue("expected an integer >= 1")
    return value


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadValue("expected an integer >= 0")
    return value


def _arch(value):
    """A name is checked here; a path once the spec's folder is known (`_arch_values`)."""
    if not isinstance(value, str) or not value.strip():
        raise BadValue("expected an architecture name or the path of a .toml architecture file or a config.json")
    if not looks_like_path(value) and value not in catalog_groups():
        raise BadValue(f"expected one of {', '.join(catalog_groups())}, or the path of a .toml architecture file "
                       "or a Hugging Face config.json")
    return value


def _bits(value):
    """Bits per weight: a number, or a format name kept as its number (q4_K: 4.5)."""
    try:
        return parse_bits(value, "bits", numbers_as_text=False)
    except InputError:
        raise BadValue(f"expected bits per weight in [{MIN_BITS}, {MAX_BITS}] or a format ({', '.join(FORMATS)})") from None


BITS_AXES = ("weight_bits", "expert_bits", "shared_bits", "hot_expert_bits")
SWEEP_SETTINGS = ("policy", "prefetch", *BITS_AXES, "hot_experts", "hot_mb", "cache_mb", "cache_experts", "per_layer_cache",
                  "cache_shared_experts", "tokens", "prompt_tokens", "context_len", "loader", "madvise", "idle_gap_s")
AXES: dict[str, Callable[[Any], Any]] = {
    "profile": _text,
    "arch": _arch,
    "wd_rank": _wd_rank,
    "trace": _text,
    **{name: _bits if name in BITS_AXES else FIELD_CHECKS[name] for name in SWEEP_SETTINGS},
    "cache_fraction": _fraction,
    "exrep": _exrep,
    "synth_seed": _seed,
    # Override axes: each point's architecture with that size replaced (cosmosim.inputs.arch_variants).
    **{name: _count if name == "n_shared_experts" else _size for name in OVERRIDES},
}
SHAPE_AXES = ("n_experts", "top_k")  # overrides that change what a trace must route


# ---------------------------------------------------------------------------- files named by the spec


def _path_under(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _profile_facts(source: str, base_dir: Path, value: str) -> ProfileFacts:
    is_path = value.endswith(".toml") or "/" in value
    try:
        profile = load_profile(_path_under(base_dir, value) if is_path else value)
    except InputError as error:
        raise InputError(f"{source}: axes.profile: {value!r}: {error}") from None
    return ProfileFacts(path=str(profile.path.resolve()), name=profile.name, sha256=profile.sha256)


def _arch_values(source: str, base_dir: Path, values: tuple[str, ...]) -> tuple[str, ...]:
    """Each arch value as every process finds it: a name, or the absolute path of its file (relative paths
    start at the spec's folder); each loaded once here, so a bad file fails now. Names must differ, since
    results name the architecture."""
    resolved, named = [], {}
    for value in values:
        path = str(_path_under(base_dir, value).resolve()) if looks_like_path(value) else value
        try:
            name = get_arch(path).name
        except InputError as error:
            raise InputError(f"{source}: axes.arch: {value!r}: {error}") from None
        if name in named:
            raise InputError(f"{source}: axes.arch: {named[name]!r} and {value!r} are both named {name!r}; "
                             "results name the architecture, so give each file its own name")
        named[name] = value
        resolved.append(path)
    return tuple(resolved)


def _expand_traces(source: str, base_dir: Path, values: tuple[str, ...]) -> tuple[str, ...]:
    """Globs become the files they match (sorted), named relative to the spec like the pattern."""
    expanded: list[str] = []
    for value in values:
        if glob.has_magic(value):
            base = str(base_dir) + "/"
            matches = sorted(glob.glob(str(_path_under(base_dir, value))))
            if not matches:
                raise InputError(f"{source}: axes.trace: {value!r} matches no file (relative to {base_dir})")
            expanded += [m[len(base):] if m.startswith(base) else m for m in matches]
        else:
            expanded.append(value)
    repeated = sorted({v for v in expanded if expanded.count(v) > 1})
    if repeated:
        raise InputError(f"{source}: axes.trace: {repeated[0]!r} is listed twice (after expanding globs)")
    return tuple(expanded)


def _trace_facts(source: str, base_dir: Path, value: str) -> TraceFacts:
    path = _path_under(base_dir, value)
    try:
        trace = load_trace(path)
    except InputError as error:
        raise InputError(f"{source}: axes.trace: {error}") from None
    training = trace.meta.get("training") or {}
    return TraceFacts(
        path=str(path.resolve()), sha256=sha256_file(path), n_tokens=trace.n_tokens, n_experts=trace.n_experts,
        top_k=trace.top_k, target_arch=trace.meta.get("target_arch"), exrep=exrep(trace.experts, trace.positions)[0],
        training=training if isinstance(training, dict) else {}, model_wd_rank=trace.meta["model"].get("wd_rank"),
        highest_exrep=highest_exrep_like(trace),
    )


# ---------------------------------------------------------------------------- combinations


def _check_exrep_axis(source: str, axes: dict[str, tuple], traces: dict[str, TraceFacts]) -> None:
    """An ExRep is synthesised like each trace, so it needs traces. A value one trace's popularity cannot
    reach (a skewed BlES trace tops out lower than a flat one) makes that trace's points infeasible rows."""
    if "synth_seed" in axes and "exrep" not in axes:
        raise InputError(f"{source}: axes.synth_seed: seeds synthesised traces; add an exrep axis or drop it")
    if "exrep" in axes and not traces:
        raise InputError(f"{source}: axes.exrep: needs a trace axis (each ExRep is synthesised like each trace)")


def _check_combinations(source: str, axes: dict[str, tuple], traces: dict[str, TraceFacts]) -> None:
    given_cache_axes = [name for name in CACHE_AXES if name in axes]
    if len(given_cache_axes) > 1:
        raise InputError(f"{source}: axes.{given_cache_axes[1]}: give one cache-size axis of "
                         f"{', '.join(CACHE_AXES)}, not {' and '.join(given_cache_axes)}")
    if "arch" not in axes and not traces:
        raise InputError(f"{source}: axes: give an arch axis, or a trace axis whose traces name their architecture")
    _check_exrep_axis(source, axes, traces)
    archs = [get_arch(name) for name in axes.get("arch", ())]
    if "arch" not in axes:
        for value, facts in traces.items():
            if facts.target_arch not in catalog_groups():
                raise InputError(f"{source}: axes.trace: {value!r} names no target architecture in its "
                                 f"meta.target_arch ({facts.target_arch!r}); add an arch axis")
        archs = [get_arch(name) for name in sorted({facts.target_arch for facts in traces.values()})]
    moe_archs = [arch for arch in archs if arch.is_moe]
    if moe_archs and not traces:
        raise InputError(f"{source}: axes.trace: required: {moe_archs[0].name} is a MoE and replays a routing trace")
    if not traces and any(n > 1 for n in axes.get("n_experts", ())):
        raise InputError(f"{source}: axes.trace: required: an n_experts variant is a MoE and replays a routing trace "
                         "(one like it is synthesised where the trace's shape does not fit)")
    # With shape axes each point pairs its variant with a trace that fits it (evaluate.py), or refuses it;
    # a size axis changes what a WD rank may be, so a rank that does not fit a variant is that point's error.
    shapes_vary = any(name in axes for name in SHAPE_AXES)
    ranks_vary = any(name in axes for name in ("d_model", "ffn_hidden"))
    for arch in moe_archs:
        for value, facts in traces.items():
            if not shapes_vary:
                arch.check_routing(f"{source}: axes.trace: {value!r}", facts.n_experts, facts.top_k)
        for rank in () if ranks_vary else axes.get("wd_rank", ()):
            try:
                arch.with_wd_rank(None if rank == FULL_RANK else rank)
            except InputError as error:
                raise InputError(f"{source}: axes.wd_rank: {rank!r}: {error}") from None


def spec_from_dict(data: dict, *, base_dir: str | Path, source: str = "spec") -> SweepSpec:
    """Validate a parsed spec (the TOML layout) whose relative paths start at `base_dir`."""
    base_dir = Path(base_dir)
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a table with an [axes] section")
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise InputError(f"{source}: {unknown[0]!r} is not a known key (expected: {', '.join(TOP_LEVEL_KEYS)})")
    for key in ("name", "description", "engine"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise InputError(f"{source}: {key}: expected a non-empty string, got {data[key]!r}")
    if "engine" in data and data["engine"] not in ENGINES:
        raise InputError(f"{source}: engine: expected one of {', '.join(ENGINES)}, got {data['engine']!r}")
    raw_axes = data.get("axes")
    if not isinstance(raw_axes, dict) or not raw_axes:
        raise InputError(f"{source}: axes: expected a non-empty [axes] table (axes: {', '.join(AXES)})")

    axes: dict[str, tuple] = {}
    for name, values in raw_axes.items():
        if name not in AXES:
            raise InputError(f"{source}: axes.{name}: not a known axis (expected one of {', '.join(AXES)})")
        if not isinstance(values, list):
            raise InputError(f"{source}: axes.{name}: expected an array of values, got {values!r}")
        if not values:
            raise InputError(f"{source}: axes.{name}: empty; give at least one value or drop the axis")
        checked = []
        for value in values:
            try:
                checked.append(AXES[name](value))
            except BadValue as bad:
                raise InputError(f"{source}: axes.{name}: {value!r}: {bad}") from None
        if len(set(map(repr, checked))) < len(checked):
            raise InputError(f"{source}: axes.{name}: a value is listed twice")
        axes[name] = tuple(checked)

    if "profile" not in axes:
        raise InputError(f"{source}: axes.profile: required (shipped names such as \"wearable\", or .toml paths)")
    if "trace" in axes:
        axes["trace"] = _expand_traces(source, base_dir, axes["trace"])
    if "arch" in axes:
        axes["arch"] = _arch_values(source, base_dir, axes["arch"])
    profiles = {value: _profile_facts(source, base_dir, value) for value in axes["profile"]}
    traces = {value: _trace_facts(source, base_dir, value) for value in axes.get("trace", ())}
    _check_combinations(source, axes, traces)
    return SweepSpec(source=source, name=data.get("name", Path(source).stem), description=data.get("description", ""),
                     engine=data.get("engine"), axes=tuple(axes.items()), profiles=profiles, traces=traces)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; anything wrong is one InputError naming file, axis and value."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError(f"{source}: no such sweep spec file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"{source}: not a valid UTF-8 TOML file: {error}") from None
    except OSError as error:
        raise InputError(f"{source}: cannot read: {error.strerror}") from None
    return spec_from_dict(data, base_dir=path.resolve().parent, source=source)
