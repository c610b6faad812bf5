"""The two Markov chains behind synthetic routing with a locality dial (docs/trace-format.md, "Synthetic traces").

Both walk the tokens of each sequence: every transition either keeps what the previous token
chose or switches, at a rate set so that ExRep (docs/metrics.md) lands on a target.

- `row_chain` (a source trace to imitate): the switching unit is a whole token row, all layers'
  expert sets at once, copied from the source. Copying rows keeps the source's layer-to-layer
  co-occurrence; switching every layer at the same token keeps it exact, where per-layer switches
  would pair a set of one source token with a set of another. Rows are chosen by herding, so the
  few thousand rows a low ExRep uses still carry the source's usage and co-occurrence.
- `slot_chain` (no source): each (layer, slot) is replaced, independently with probability ExRep,
  by an expert its layer did not use, drawn by popularity. With no co-occurrence to keep, switching
  slot by slot reaches any ExRep in [0, 1]; this is the CoSMoEs paper check's routing.
"""

from __future__ import annotations

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.locality import exrep, expert_usage

HERDING_CANDIDATES = 64  # rows scored per segment: enough for usage within ~0.005 at 2,500 segments
CALIBRATION_ROUNDS = 3  # builds tried, each re-aiming the switch count at the ExRep the last one missed


def reachable_exrep(usage_LE: np.ndarray, top_k: int) -> float:
    """ExRep when every token redraws a row independently: the most `row_chain` reaches.
    E|S ∩ S'| = Σ_e P(e ∈ S)² with P(e ∈ S) = K u_e, so ExRep_l = 1 − K Σ_e u_le² (uniform top-2 of 8: 0.75)."""
    return float(np.mean(1 - top_k * (usage_LE ** 2).sum(axis=1)))


def _row_features(experts_TLK: np.ndarray, n_experts: int) -> np.ndarray:
    """[T, F] ids of what each row adds to the statistics to keep: one id per (layer, expert) used and
    one per (layer pair, expert at l, expert at l + 1); renumbered densely (a large E stays small)."""
    n_tokens, n_layers, top_k = experts_TLK.shape
    experts_TLK = experts_TLK.astype(np.int64)
    usage_TLK = experts_TLK + n_experts * np.arange(n_layers)[None, :, None]
    pairs_TPKK = (experts_TLK[:, :-1, :, None] * n_experts + experts_TLK[:, 1:, None, :]
                  + n_experts * n_layers + n_experts ** 2 * np.arange(n_layers - 1)[None, :, None, None])
    ids_TF = np.concatenate([usage_TLK.reshape(n_tokens, -1), pairs_TPKK.reshape(n_tokens, -1)], axis=1)
    return np.unique(ids_TF, return_inverse=True)[1].reshape(ids_TF.shape)


def _herd_rows(features_PF: np.ndarray, lengths_S: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pool row for each segment such that the length-weighted features match the pool's mean:
    kernel herding, each segment taking the best of a few random candidates against the running
    deficit. Segments are visited in random order, so consecutive segments are not herding's
    consecutive (anti-correlated) picks and switches look like independent redraws."""
    n_pool = features_PF.shape[0]
    mean_D = np.bincount(features_PF.ravel(), minlength=features_PF.max() + 1) / n_pool
    deficit_D = np.zeros_like(mean_D)
    candidates_SC = rng.integers(0, n_pool, (lengths_S.size, HERDING_CANDIDATES))
    rows_S = np.empty(lengths_S.size, np.int64)
    for segment in rng.permutation(lengths_S.size):
        weight = lengths_S[segment]
        deficit_D += weight * mean_D
        candidates_C = candidates_SC[segment]
        # Every row has the same number of feature ids, so the best row is the one whose ids carry the most deficit.
        best = candidates_C[deficit_D[features_PF[candidates_C]].sum(axis=1).argmax()]
        deficit_D[features_PF[best]] -= weight  # a row's ids are distinct: no repeated index here
        rows_S[segment] = best
    return rows_S


def row_chain(source_experts_TLK: np.ndarray, source_gates_TLK: np.ndarray, n_experts: int, positions_N: np.ndarray,
              target: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(experts [N, L, K], gates [N, L, K], the highest ExRep reachable): `positions_N`'s sequences routed by copying
    source rows, switching rows at as many transitions as hit `target` (the first token of a sequence
    always redraws). The switch count is re-aimed until ExRep is within 0.001 (or the best of
    CALIBRATION_ROUNDS builds); deterministic per seed."""
    top_k = source_experts_TLK.shape[2]
    highest = reachable_exrep(expert_usage(source_experts_TLK, n_experts), top_k)
    if target > highest + 1e-12:
        raise InputError(f"--exrep: {target:g} is outside the range this source's popularity reaches, [0, {highest:.4f}] "
                         "(a token that redraws a row often draws the set it had)")
    features_PF = _row_features(source_experts_TLK, n_experts)
    transitions = np.flatnonzero(positions_N != 0)
    switches = round(target / highest * transitions.size) if highest > 0 else 0
    best: tuple[float, np.ndarray] | None = None
    for _ in range(CALIBRATION_ROUNDS):
        rng = np.random.default_rng([seed, switches])
        starts_N = positions_N == 0
        starts_N[rng.choice(transitions, switches, replace=False)] = True
        segment_N = np.cumsum(starts_N) - 1
        rows_N = _herd_rows(features_PF, np.bincount(segment_N), rng)[segment_N]
        measured = exrep(source_experts_TLK[rows_N], positions_N)[0]
        if best is None or abs(measured - target) < abs(best[0] - target):
            best = measured, rows_N
        if abs(measured - target) <= 1e-3 or measured == 0:
            break
        switches = min(transitions.size, round(switches * target / measured))
    rows_N = best[1]
    return source_experts_TLK[rows_N], source_gates_TLK[rows_N], highest


def slot_chain(n_layers: int, n_experts: int, top_k: int, positions_N: np.ndarray, target: float, skew: float,
               seed: int) -> np.ndarray:
    """Experts [N, L, K]: each sequence's first token draws every layer's top_k by popularity
    ∝ (e + 1)^-skew; then each slot is replaced with probability `target` by an expert its layer did
    not use, drawn by popularity. A replacement always changes the expert, so E[ExRep] = target."""
    if 2 * top_k > n_experts:
        raise InputError(f"--top-k: {top_k}, expected at most half of --experts ({n_experts}) without --like: "
                         "a replaced expert is drawn from those its layer did not use")
    rng = np.random.default_rng(seed)
    # Weighted sampling without replacement as an exponential race: the smallest Exp(1)/w wins with
    # probability ∝ w. At skew 0 the factor is exactly 1 and the order is that of the raw uniforms.
    inverse_weight_E = np.arange(1, n_experts + 1, dtype=np.float64) ** skew
    starts = np.flatnonzero(positions_N == 0)
    lengths = np.diff(np.append(starts, positions_N.size))
    shape = (starts.size, n_layers)
    experts_SPLK = np.zeros((starts.size, int(lengths.max()), n_layers, top_k), np.int16)

    def race_SLK(avoid_SLK: np.ndarray | None) -> np.ndarray:
        keys_SLE = -np.log1p(-rng.random((*shape, n_experts))) * inverse_weight_E
        if avoid_SLK is not None:
            np.put_along_axis(keys_SLE, avoid_SLK, np.inf, axis=2)  # the experts in use finish last
        return np.argsort(keys_SLE, axis=2)[:, :, :top_k]

    experts_SPLK[:, 0] = current_SLK = race_SLK(None)
    for position in range(1, int(lengths.max())):
        unused_SLK = race_SLK(current_SLK)
        replace_SLK = rng.random((*shape, top_k)) < target
        experts_SPLK[:, position] = current_SLK = np.where(replace_SLK, unused_SLK, current_SLK)
    # Sequences of unequal length were walked in lockstep; keep each one's own tokens.
    within_SP = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    return experts_SPLK[within_SP]
