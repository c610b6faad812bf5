"""Routing trace format v1: what a model's router chose, token by token and layer by layer.

One compressed `.npz` (the full schema is in docs/trace-format.md):

    experts      int16   [tokens, layers, top_k]    expert ids, by descending gate
    gates        float16 [tokens, layers, top_k]    gates as the model weighs them (meta.gates says how)
    positions    int32   [tokens]                   position in its sequence; 0 starts a sequence
    tokens       int32   [tokens]                   optional: token ids
    domains      int8    [tokens]                   optional: index into meta["domain_names"]
    router_probs float16 [tokens, layers, experts]  optional: full router softmax
    meta         0-d str                            JSON: schema version, model config, provenance

Loading never unpickles (`allow_pickle=False`) and validates everything a simulator relies on, so a
user's own trace either loads clean or fails with one line naming the file, the field and what was
expected.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes

SCHEMA_VERSION = 1
REQUIRED_MODEL_KEYS = ("n_layers", "n_experts", "top_k")
_OPTIONAL_ARRAYS = {"tokens": np.int32, "domains": np.int8, "router_probs": np.float16}
# The most experts per layer a trace may declare: Switch-C, the largest published MoE, routes among
# 2048. The bound keeps what engines allocate per expert pair (co-occurrence counts) within memory.
MAX_EXPERTS = 2048
MAX_ARRAY_BYTES = 8 << 30  # no trace array is larger: a header that claims more is refused before reading


@dataclass
class Trace:
    experts: np.ndarray  # int16 [T, L, K]
    gates: np.ndarray  # float16 [T, L, K]
    positions: np.ndarray  # int32 [T]
    meta: dict = field(default_factory=dict)
    tokens: np.ndarray | None = None  # int32 [T]
    domains: np.ndarray | None = None  # int8 [T]
    router_probs: np.ndarray | None = None  # float16 [T, L, E]
    path: Path | None = None  # where it was loaded from, for messages and provenance

    @property
    def n_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def n_experts(self) -> int:
        return int(self.meta["model"]["n_experts"])

    def sequence_starts(self) -> np.ndarray:
        """Indices of the tokens that start a sequence (position 0), ascending; ends at n_tokens."""
        return np.flatnonzero(self.positions == 0)

    def sequences(self) -> list[tuple[int, int]]:
        """[start, stop) token ranges, one per sequence, in trace order."""
        starts = self.sequence_starts()
        stops = np.append(starts[1:], self.n_tokens)
        return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _fail(source: str, field_name: str, expected: str) -> InputError:
    return InputError(f"{source}: {field_name}: {expected}")


def validate(trace: Trace, source: str = "trace") -> None:
    """Raise InputError at the first thing a simulator could not trust."""
    meta = trace.meta
    if not isinstance(meta, dict):
        raise _fail(source, "meta", "expected a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise _fail(source, "meta.schema_version", f"expected {SCHEMA_VERSION}, got {meta.get('schema_version')!r}")
    model = meta.get("model")
    if not isinstance(model, dict):
        raise _fail(source, "meta.model", "expected an object with the model config")
    for key in REQUIRED_MODEL_KEYS:
        if not isinstance(model.get(key), int) or isinstance(model.get(key), bool) or model[key] < 1:
            raise _fail(source, f"meta.model.{key}", f"expected a positive integer, got {model.get(key)!r}")
    if meta.get("target_arch") is not None and not isinstance(meta["target_arch"], str):
        raise _fail(source, "meta.target_arch", f"expected an architecture name or null, got {meta['target_arch']!r}")
    if model["n_experts"] > MAX_EXPERTS:
        raise _fail(source, "meta.model.n_experts", f"expected <= {MAX_EXPERTS} (the most any published MoE has), got {model['n_experts']}")

    experts, gates, positions = trace.experts, trace.gates, trace.positions
    if experts.ndim != 3:
        raise _fail(source, "experts", f"expected 3 dims [tokens, layers, top_k], got shape {experts.shape}")
    if not np.issubdtype(experts.dtype, np.integer):
        raise _fail(source, "experts", f"expected an integer dtype (int16), got {experts.dtype}")
    n_tokens, n_layers, top_k = experts.shape
    if n_tokens == 0:
        raise _fail(source, "experts", "expected at least one token, got 0")
    if (n_layers, top_k) != (model["n_layers"], model["top_k"]):
        raise _fail(source, "experts", f"shape {experts.shape} disagrees with meta.model "
                    f"(n_layers={model['n_layers']}, top_k={model['top_k']})")
    n_experts = model["n_experts"]
    if top_k > n_experts:
        raise _fail(source, "meta.model.top_k", f"expected <= n_experts={n_experts}, got {top_k}")
    if experts.min() < 0 or experts.max() >= n_experts:
        raise _fail(source, "experts", f"expected ids in [0, {n_experts}), got [{experts.min()}, {experts.max()}]")
    if top_k > 1:
        ordered = np.sort(experts, axis=2)
        repeats = np.flatnonzero((ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=(1, 2)))
        if repeats.size:
            raise _fail(source, "experts", f"expected distinct experts within a token's top-k, token {repeats[0]} repeats one")

    if gates.shape != experts.shape:
        raise _fail(source, "gates", f"expected shape {experts.shape} like experts, got {gates.shape}")
    if not np.issubdtype(gates.dtype, np.floating):
        raise _fail(source, "gates", f"expected a float dtype (float16), got {gates.dtype}")
    if not np.isfinite(gates).all() or (gates < 0).any():
        raise _fail(source, "gates", "expected finite values >= 0")

    if positions.shape != (n_tokens,):
        raise _fail(source, "positions", f"expected shape ({n_tokens},), got {positions.shape}")
    if not np.issubdtype(positions.dtype, np.integer):
        raise _fail(source, "positions", f"expected an integer dtype (int32), got {positions.dtype}")
    if positions[0] != 0:
        raise _fail(source, "positions", f"expected the first token at position 0, got {positions[0]}")
    steps = np.diff(positions.astype(np.int64))
    bad = np.flatnonzero((steps != 1) & (positions[1:] != 0))
    if bad.size:
        t = int(bad[0]) + 1
        raise _fail(source, "positions", f"expected 0 or previous+1 at token {t}, got {positions[t]} after {positions[t - 1]}")

    for name, dtype in _OPTIONAL_ARRAYS.items():
        array = getattr(trace, name)
        if array is None:
            continue
        kind = np.floating if np.dtype(dtype).kind == "f" else np.integer
        if not np.issubdtype(array.dtype, kind):
            raise _fail(source, name, f"expected {'a float' if kind is np.floating else 'an integer'} dtype "
                                      f"({np.dtype(dtype).name}), got {array.dtype}")
        expected_shape = (n_tokens, n_layers, n_experts) if name == "router_probs" else (n_tokens,)
        if array.shape != expected_shape:
            raise _fail(source, name, f"expected shape {expected_shape}, got {array.shape}")
    if trace.domains is not None:
        names = meta.get("domain_names")
        if not isinstance(names, list) or not names:
            raise _fail(source, "meta.domain_names", "expected a non-empty list when `domains` is present")
        if trace.domains.min() < 0 or trace.domains.max() >= len(names):
            raise _fail(source, "domains", f"expected indices in [0, {len(names)})")


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Validate, then write a compressed .npz atomically (temp file + rename)."""
    path = Path(path)
    validate(trace, str(path))
    arrays = {
        "experts": trace.experts.astype(np.int16),
        "gates": trace.gates.astype(np.float16),
        "positions": trace.positions.astype(np.int32),
        "meta": np.array(json.dumps(trace.meta, sort_keys=True)),
    }
    for name, dtype in _OPTIONAL_ARRAYS.items():
        if getattr(trace, name) is not None:
            arrays[name] = getattr(trace, name).astype(dtype)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _check_declared_sizes(path: Path, source: str) -> None:
    """Refuse an array whose header declares more bytes than a trace can hold, before numpy allocates it."""
    if not zipfile.is_zipfile(path):
        return  # np.load says what it is
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    continue  # a newer header version: np.load checks it
                shape, _, dtype = read_header(handle, max_header_size=10_000)  # the header only, no data
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES:
                raise _fail(source, member.filename[:-4], f"declares shape {shape} of {dtype} ({nbytes:.3g} bytes), "
                            f"more than a trace array can hold ({MAX_ARRAY_BYTES >> 30} GiB)")


def load_trace(path: str | Path) -> Trace:
    """Load and validate a v1 trace; any problem is an InputError naming the file and field."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError(f"{source}: no such trace file")
    try:
        _check_declared_sizes(path, source)
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InputError(f"{source}: a single array (.npy), not a .npz trace archive")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise InputError(f"{source}: not a readable .npz trace ({error.__class__.__name__}: {error})") from None
    for name in ("experts", "gates", "positions", "meta"):
        if name not in arrays:
            raise _fail(source, name, "missing array")
    meta_array = arrays.pop("meta")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise _fail(source, "meta", f"expected a 0-d string array holding JSON, got {meta_array.dtype} {meta_array.shape}")
    try:
        meta = json.loads(str(meta_array))
    except json.JSONDecodeError as error:
        raise _fail(source, "meta", f"expected JSON ({error.msg} at char {error.pos})") from None
    unknown = set(arrays) - {"experts", "gates", "positions", *_OPTIONAL_ARRAYS}
    if unknown:
        raise _fail(source, sorted(unknown)[0], "unknown array (trace format v1)")
    trace = Trace(meta=meta, path=path, **arrays)
    validate(trace, source)
    return trace


def trace_info(trace: Trace) -> dict:
    """A JSON-ready summary of what a trace holds and how it was made."""
    model = trace.meta.get("model", {})
    lengths = np.diff(np.append(trace.sequence_starts(), trace.n_tokens))
    return {
        "path": str(trace.path) if trace.path else None,
        "schema_version": trace.meta.get("schema_version"),
        "tokens": trace.n_tokens,
        "sequences": int(lengths.size),
        "sequence_length": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())},
        "layers": trace.n_layers,
        "n_experts": trace.n_experts,
        "top_k": trace.top_k,
        "optional_arrays": [name for name in _OPTIONAL_ARRAYS if getattr(trace, name) is not None],
        "model": model,
        "training": trace.meta.get("training"),
        "target_arch": trace.meta.get("target_arch"),
        "domain_names": trace.meta.get("domain_names"),
        "commit": trace.meta.get("commit"),
        "date": trace.meta.get("date"),
    }
