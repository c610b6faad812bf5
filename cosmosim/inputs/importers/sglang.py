"""SGLang's expert distribution recorder in `per_token` mode (read from SGLang 0.5.10.post1).

`python/sglang/srt/eplb/expert_distribution.py`: a server started with
`--expert-distribution-recorder-mode per_token` records every forward pass between
`/start_expert_distribution_record` and `/stop_expert_distribution_record`;
`/dump_expert_distribution_record` writes, per rank, `torch.save(dict(records=[...],
last_physical_to_logical_map=<int [layers, physical experts]>))` to
`expert_distribution_recorder_{time}_{rank}.pt` (`_DetailAccumulator.dump`). Each record is one
forward pass (`_DetailSinglePassGatherer.collect`, `_DetailAccumulator.append`): `forward_pass_id`,
`rank`, `gatherer_key`, `input_ids` and `positions` (lists, one per token of the pass),
`extend_seq_lens` (tokens per request in an extend pass; None in a decode pass), `forward_mode`
(`ForwardMode` in `model_executor/forward_batch_info.py`: 1 EXTEND, 2 DECODE, 3 MIXED, 4 IDLE, ...),
`topk_ids_of_layer` (int32 [layers, tokens, 8]: physical expert ids in the order `select_experts`
returned them, -1 where nothing was written: columns past the model's top-k, dense layers),
`misc_objects`, `global_physical_count`. No gates. The `per_pass` and `stat` modes keep only counts.

The recorder stores no request ids (`rids` is a TODO in `on_forward_pass_start`), so requests are
linked pass to pass by position, as the scheduler batches them (docs/trace-format.md, "Importing"):
a segment at position 0 starts a request; a decode pass holds the running requests in batch order,
each one position on; a request the decode pass skips has left the batch; an extend segment that
starts past 0 continues the request that stopped just before it (chunked prefill).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.importers.base import ImportedLog, RequestRouting, unrouted_layers

FORMAT_VERSION = "0.5.10.post1"
EXTEND, DECODE, MIXED, IDLE = 1, 2, 3, 4  # ForwardMode values; the others are speculative or disaggregated passes
UNWRITTEN = -1  # what the gatherer's buffer holds where no expert was recorded


@dataclass
class _Open:
    name: str
    next_position: int
    chunks: list[np.ndarray] = field(default_factory=list)  # [tokens, layers, top_k] per pass


class _Linker:
    """Which request each token of a pass belongs to, in the order the scheduler batches requests."""

    def __init__(self) -> None:
        self.started: list[_Open] = []  # in the order they first appear
        self.batch: list[_Open] = []  # the running requests in SGLang's batch order: one that (re)joins goes last
        self.parked: dict[int, list[_Open]] = defaultdict(list)  # out of the batch, by next position
        self.ambiguous = 0  # positions of decode passes where one of several requests there left the batch

    def decode(self, positions: list[int]) -> list[_Open] | None:
        expected, got = Counter(r.next_position for r in self.batch), Counter(positions)
        self.ambiguous += sum(expected[p] > n for p, n in got.items())
        found, cursor = [], 0
        for position in positions:
            while cursor < len(self.batch) and self.batch[cursor].next_position != position:
                self._park(self.batch[cursor])  # skipped: finished, retracted, or a chunked prefill in progress
                cursor += 1
            if cursor == len(self.batch):
                return None
            found.append(self.batch[cursor])
            cursor += 1
        for request in self.batch[cursor:]:
            self._park(request)
        self.batch = found
        return found

    def extend(self, first_position: int) -> _Open | None:
        if first_position == 0:
            request = _Open(f"#{len(self.started)}", 0)
            self.started.append(request)
        else:
            running = [r for r in self.batch if r.next_position == first_position]  # a decode token in a mixed pass
            if running:
                request = running[0]
                self.batch.remove(request)
            elif self.parked.get(first_position):
                request = self.parked[first_position].pop()  # the latest to stop there: a chunked prefill
            else:
                return None
        self.batch.append(request)
        return request

    def _park(self, request: _Open) -> None:
        self.parked[request.next_position].append(request)


def _load(path: Path) -> dict:
    import torch  # only this importer needs it

    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch.load raises whatever its unpickler meets in a foreign file)
        first_line = (str(error).splitlines() or [""])[0]
        raise InputError(f"{path}: not a file torch.load reads safely ({type(error).__name__}: {first_line})") from None
    if isinstance(dump, dict) and "logical_count" in dump:
        raise InputError(f"{path}: a stat-mode dump (expert counts, no tokens); record with "
                         "--expert-distribution-recorder-mode per_token")
    if not isinstance(dump, dict) or not isinstance(dump.get("records"), list):
        raise InputError(f"{path}: expected SGLang's expert distribution dump, a dict with a `records` list")
    return dump


def _as_array(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _record_fields(path: Path, where: str, record: object) -> tuple[int, list[int], list[int], np.ndarray]:
    """(forward_mode, positions, tokens per segment, ids [layers, tokens, columns]) of one record."""
    if not isinstance(record, dict):
        raise InputError(f"{path}: {where}: expected a dict")
    if "topk_ids_of_layer" not in record:
        raise InputError(f"{path}: {where}: no topk_ids_of_layer (a per_pass-mode dump keeps counts only); record "
                         "with --expert-distribution-recorder-mode per_token")
    mode, positions = record.get("forward_mode"), record.get("positions")
    if not isinstance(mode, int) or not isinstance(positions, list):
        raise InputError(f"{path}: {where}: expected an integer forward_mode and a positions list")
    ids = _as_array(record["topk_ids_of_layer"])
    if ids.ndim != 3 or ids.shape[1] != len(positions) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"{path}: {where}: topk_ids_of_layer: expected integers [layers, {len(positions)} tokens, "
                         f"top-k columns], got {ids.dtype} {ids.shape}")
    if mode == DECODE:
        segments = [1] * len(positions)
    elif mode in (EXTEND, MIXED):
        lengths = record.get("extend_seq_lens")
        segments = [int(n) for n in _as_array(lengths).reshape(-1)] if lengths is not None else []
        if sum(segments) != len(positions):
            raise InputError(f"{path}: {where}: extend_seq_lens: expected tokens per request summing to "
                             f"{len(positions)}, got {lengths!r}")
    elif mode == IDLE:
        segments = []
    else:
        raise InputError(f"{path}: {where}: forward_mode {mode}: only extend (1), decode (2), mixed (3) and idle (4) "
                         "passes hold one routing per token; record without speculative decoding or disaggregation")
    return mode, [int(p) for p in positions], segments, ids


def _experts_of(path: Path, where: str, ids: np.ndarray, shape: tuple[np.ndarray, int] | None):
    """The pass's routed layers and top-k (checked against the earlier passes'), and their ids [tokens, layers, k]."""
    ids = ids.transpose(1, 0, 2)  # [tokens, layers, columns], as a trace orders them
    routed = ~unrouted_layers(ids, fill=UNWRITTEN)
    if not routed.any():
        raise InputError(f"{path}: {where}: topk_ids_of_layer: no layer recorded an expert")
    written = ids[:, routed] != UNWRITTEN
    top_k = int(written[0, 0].sum())
    if (written.sum(axis=2) != top_k).any() or not written[:, :, :top_k].all():
        raise InputError(f"{path}: {where}: topk_ids_of_layer: expected {top_k} experts in the first columns of "
                         "every token at every routed layer")
    if shape is not None and (not np.array_equal(routed, shape[0]) or top_k != shape[1]):
        raise InputError(f"{path}: {where}: routes layers {np.flatnonzero(routed).tolist()} top-{top_k}, earlier "
                         f"passes layers {np.flatnonzero(shape[0]).tolist()} top-{shape[1]}")
    return (routed, top_k), ids[:, routed, :top_k].astype(np.int64)


def read_sglang(path: Path) -> ImportedLog:
    dump = _load(path)
    linker, shape, ranks = _Linker(), None, set()
    for i, record in enumerate(dump["records"]):
        where = f"records[{i}] (forward pass {record.get('forward_pass_id') if isinstance(record, dict) else '?'})"
        mode, positions, segments, ids = _record_fields(path, where, record)
        ranks.add(record.get("rank"))
        if not positions:
            continue
        shape, experts = _experts_of(path, where, ids, shape)
        starts = np.cumsum([0, *segments])
        if mode == DECODE:
            owners = linker.decode(positions)
            if owners is None:
                raise InputError(f"{path}: {where}: positions {positions}: expected the running requests, each one "
                                 "position on from its last token")
        else:
            owners = []
            for a, b in pairwise(starts):
                if positions[a:b] != list(range(positions[a], positions[a] + b - a)):
                    raise InputError(f"{path}: {where}: positions: a request's tokens in one pass must be consecutive, "
                                     f"got {positions[a:b]}")
                owner = linker.extend(positions[a])
                if owner is None:
                    raise InputError(f"{path}: {where}: a request starts at position {positions[a]}, where no "
                                     "recorded request stopped (a reused cached prefix: record with --disable-radix-cache)")
                owners.append(owner)
        for owner, (a, b) in zip(owners, pairwise(starts)):
            owner.chunks.append(experts[a:b])
            owner.next_position += b - a
    if len(ranks) > 1:
        raise InputError(f"{path}: records of ranks {sorted(ranks, key=str)}; import one rank's dump")
    if shape is None:
        raise InputError(f"{path}: no forward pass with tokens was recorded")
    mapping = dump.get("last_physical_to_logical_map")
    n_experts = None
    if mapping is not None:  # physical ids (replicas of an expert across GPUs) back to the model's experts
        mapping = _as_array(mapping)[shape[0]].astype(np.int64)  # [routed layers, physical experts]
        n_experts = int(mapping.max()) + 1
    requests = []
    for request in linker.started:
        experts = np.concatenate(request.chunks)
        if mapping is not None:
            if experts.max() >= mapping.shape[1]:
                raise InputError(f"{path}: request {request.name}: physical expert {experts.max()}, but "
                                 f"last_physical_to_logical_map has {mapping.shape[1]}")
            experts = mapping[np.arange(mapping.shape[0])[None, :, None], experts]
        requests.append(RequestRouting(request.name, experts))
    notes = {"recorder_mode": "per_token", "rank": ranks.pop(), "forward_passes": len(dump["records"]),
             "ambiguous_links": linker.ambiguous}
    return ImportedLog("sglang", FORMAT_VERSION, requests, layers=np.flatnonzero(shape[0]).tolist(),
                       n_experts=n_experts, notes=notes)
