"""Synthetic routing traces: `synthesize`, routing with a locality dial (`cosmosim trace synth`), and
small fixtures with known patterns for tests, benchmarks, and as a clearly labelled fallback in
notebooks and `cosmosim validate` when no recorded trace exists.

Never written under traces/, which holds only traces recorded from trained models.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import cosmosim
from cosmosim.errors import InputError
from cosmosim.files import cache_dir
from cosmosim.inputs import switching
from cosmosim.inputs.locality import exrep, expert_usage
from cosmosim.inputs.switching import reachable_exrep, row_chain, slot_chain
from cosmosim.inputs.trace import MAX_EXPERTS, SCHEMA_VERSION, Trace, load_trace, save_trace
from cosmosim.provenance import repository_commit, sha256_file

WEARABLE_SHAPE = (19, 8, 2)  # the wearable MoE's layers, experts per layer, top_k (CoSMoEs Table 1)
DEFAULT_TOKENS, DEFAULT_SEQ_LEN = 32768, 128  # the shipped traces' size and sequence length
DEFAULT_SKEW = 1.0  # Zipf exponent: popularity ∝ 1 / (e + 1)
MAX_TOKENS, MAX_LAYERS = 1 << 20, 1024  # bounds that keep a build within seconds and memory


def trace_meta(n_layers: int, n_experts: int, top_k: int, **model) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"n_layers": n_layers, "n_experts": n_experts, "top_k": top_k, **model},
        "training": None,
        "target_arch": None,
        "source": "synthetic test fixture",
    }


def trace_from_experts(experts, seq_len: int | None = None, n_experts: int = 8) -> Trace:
    """A trace from an explicit [tokens, layers, top_k] expert array; one sequence unless seq_len."""
    experts = np.asarray(experts, dtype=np.int16)
    if experts.ndim == 2:
        experts = experts[:, :, None]
    n_tokens, n_layers, top_k = experts.shape
    seq_len = seq_len or n_tokens
    positions = (np.arange(n_tokens) % seq_len).astype(np.int32)
    gates = np.full(experts.shape, 1.0 / top_k, dtype=np.float16)
    return Trace(experts, gates, positions, trace_meta(n_layers, n_experts, top_k))


def sticky_trace(n_tokens: int = 32768, n_layers: int = 19, n_experts: int = 8, top_k: int = 2,
                 seq_len: int = 256, stay: float = 0.6, seed: int = 0) -> Trace:
    """Markov routing: each token keeps the previous token's expert set with probability `stay`,
    else draws a fresh set (Gumbel top-k) skewed towards low ids, so usage is uneven."""
    rng = np.random.default_rng(seed)
    log_popularity = -np.log(np.arange(1, n_experts + 1))
    gumbel = rng.gumbel(size=(n_tokens, n_layers, n_experts))
    fresh = np.argsort(-(log_popularity + gumbel), axis=2)[:, :, :top_k]
    positions = (np.arange(n_tokens) % seq_len).astype(np.int32)
    switch = (rng.random((n_tokens, n_layers)) >= stay) | (positions == 0)[:, None]
    # Forward-fill: each token uses the fresh set of the last token that switched.
    source = np.maximum.accumulate(np.where(switch, np.arange(n_tokens)[:, None], 0), axis=0)
    experts = np.take_along_axis(fresh, source[:, :, None], axis=0).astype(np.int16)
    gates = np.sort(rng.random((n_tokens, n_layers, top_k)), axis=2)[:, :, ::-1]
    gates = (gates / gates.sum(axis=2, keepdims=True)).astype(np.float16)
    return Trace(experts, gates, positions, trace_meta(n_layers, n_experts, top_k))


def _count(flag: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InputError(f"{flag}: expected an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _fraction(flag: str, value, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:  # NaN fails too
        raise InputError(f"{flag}: expected a fraction in [0, {high:g}], got {value!r}")
    return float(value)


def _positions(n_tokens: int, seq_len: int) -> np.ndarray:
    return (np.arange(n_tokens) % seq_len).astype(np.int32)


def synthesize(*, like: Trace | None = None, exrep_target: float | None = None, n_layers: int | None = None,
               n_experts: int | None = None, top_k: int | None = None, n_tokens: int | None = None,
               seq_len: int | None = None, skew: float | None = None, seed: int = 0) -> Trace:
    """A synthetic trace whose ExRep is `exrep_target`, deterministic per seed.

    With `like`: the source's per-layer expert popularity, layer-to-layer co-occurrence, gates, shape,
    `target_arch` and (unless `n_tokens` or `seq_len` is given) sequence layout; `exrep_target`
    defaults to the source's own. Without: `n_layers`, `n_experts`, `top_k` (default the wearable
    MoE's), popularity ∝ (e + 1)^-skew in every layer, layers independent; `exrep_target` required.
    How it was made is in `meta["synthetic"]`; the models: docs/trace-format.md, "Synthetic traces".
    """
    seed = _count("--seed", seed, 0, 2**63 - 1)
    if n_tokens is not None:
        n_tokens = _count("--tokens", n_tokens, 2, MAX_TOKENS)
    if seq_len is not None:
        seq_len = _count("--seq-len", seq_len, 2, MAX_TOKENS)
    if like is not None:
        given = [flag for flag, value in (("--layers", n_layers), ("--experts", n_experts), ("--top-k", top_k),
                                          ("--skew", skew)) if value is not None]
        if given:
            raise InputError(f"{given[0]}: comes from the --like trace; drop it or drop --like")
        return _imitate(like, exrep_target, n_tokens, seq_len, seed)
    if exrep_target is None:
        raise InputError("--exrep: required without --like (there is no source ExRep to keep)")
    default_layers, default_experts, default_top_k = WEARABLE_SHAPE
    n_layers = _count("--layers", default_layers if n_layers is None else n_layers, 1, MAX_LAYERS)
    n_experts = _count("--experts", default_experts if n_experts is None else n_experts, 2, MAX_EXPERTS)
    top_k = _count("--top-k", default_top_k if top_k is None else top_k, 1, n_experts)
    skew = DEFAULT_SKEW if skew is None else skew
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew <= 10:
        raise InputError(f"--skew: expected a Zipf exponent in [0, 10], got {skew!r}")
    target = _fraction("--exrep", exrep_target, 1)
    positions_N = _positions(n_tokens or DEFAULT_TOKENS, seq_len or DEFAULT_SEQ_LEN)
    experts_NLK = slot_chain(n_layers, n_experts, top_k, positions_N, target, float(skew), seed)
    # Uniform gates: no engine reads them, and a random ordering would claim a preference never modelled.
    gates_NLK = np.full(experts_NLK.shape, 1 / top_k, dtype=np.float16)
    model = {"n_layers": n_layers, "n_experts": n_experts, "top_k": top_k}
    how = {"method": "slot chain: each (layer, slot) replaced with probability ExRep by an unused expert",
           "like": None, "reachable_exrep": [0.0, 1.0], "skew": float(skew)}
    return _trace(experts_NLK, gates_NLK, positions_N, model, None, target, seed, how)


def _imitate(like: Trace, exrep_target: float | None, n_tokens: int | None, seq_len: int | None, seed: int) -> Trace:
    """`synthesize` with a source: its rows, re-chained at the asked ExRep."""
    own_exrep = exrep(like.experts, like.positions)[0] if like.n_tokens > 1 and (like.positions != 0).any() else None
    if exrep_target is None and own_exrep is None:
        raise InputError(f"--exrep: required, the --like trace {like.path or ''} has no transition to measure its own")
    target = _fraction("--exrep", own_exrep if exrep_target is None else exrep_target, 1)
    if n_tokens is None and seq_len is None:
        positions_N = like.positions.astype(np.int32)
    else:
        longest = int(np.diff(np.append(like.sequence_starts(), like.n_tokens)).max())
        positions_N = _positions(n_tokens or like.n_tokens, seq_len or max(longest, 2))
    experts_NLK, gates_NLK, highest = row_chain(like.experts, like.gates, like.n_experts, positions_N, target, seed)
    source = {"path": str(like.path) if like.path else None,
              "sha256": sha256_file(like.path) if like.path else None, "exrep": own_exrep}
    how = {"method": "row chain: each token keeps the previous token's row (every layer's set) or switches to a "
                     "herded source row", "like": source, "reachable_exrep": [0.0, highest]}
    return _trace(experts_NLK, gates_NLK, positions_N, dict(like.meta["model"]), like.meta.get("target_arch"),
                  target, seed, how)


def _trace(experts_NLK: np.ndarray, gates_NLK: np.ndarray, positions_N: np.ndarray, model: dict,
           target_arch: str | None, target: float, seed: int, how: dict) -> Trace:
    measured = exrep(experts_NLK, positions_N)[0]
    synthetic = {**how, "target_exrep": target, "measured_exrep": measured, "seed": seed,
                 "tokens": int(positions_N.size), "sequences": int((positions_N == 0).sum()),
                 "cosmosim_version": cosmosim.__version__, "commit": repository_commit()}
    meta = {"schema_version": SCHEMA_VERSION, "model": model, "training": None, "target_arch": target_arch,
            "source": f"synthetic ({how['method'].split(':')[0]}): ExRep {measured:.4f} for a target of {target:g}, "
                      f"seed {seed}", "synthetic": synthetic}
    return Trace(experts_NLK.astype(np.int16), gates_NLK.astype(np.float16), positions_N, meta)


def highest_exrep_like(like: Trace) -> float:
    """The largest ExRep `synthesize(like=like, ...)` reaches: its popularity's independent-redraw rate."""
    return reachable_exrep(expert_usage(like.experts, like.n_experts), like.top_k)


def _synthesis_version() -> str:
    """A digest of the code that makes a synthetic trace: a cached trace is reused only while it is unchanged."""
    digest = hashlib.sha256()
    for module in (__file__, switching.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:16]


def synthesized_like(like_path: str | Path, like_sha256: str, exrep_target: float, seed: int = 0) -> Path:
    """The file of `synthesize(like=<like_path>, exrep_target=..., seed=...)`, made once per user and
    kept in the cache folder (`cosmosim.files.cache_dir()/synthetic`), so sweeps and searches that ask
    for the same point again, in any process, load it instead of re-synthesising. The name carries the
    source's sha256, the target, the seed and the synthesis code's digest; writes are atomic, so two
    processes making the same file at once both leave a whole one."""
    name = f"{like_sha256[:16]}-exrep{exrep_target:.6f}-seed{seed}-{_synthesis_version()}.npz"
    path = cache_dir() / "synthetic" / name
    if not path.is_file():
        save_trace(synthesize(like=load_trace(like_path), exrep_target=exrep_target, seed=seed), path)
    return path
