"""A trace's access stream as a file other cache simulators read (`cosmosim trace export`).

The stream is `cosmosim.workload.stream.access_stream`: the steps and accesses every engine
replays (warm-up sequences held out, prefill steps' experts once each in order of first use,
decode steps' top-k by descending gate), so a cache simulated elsewhere sees exactly the requests
cosmosim's cache sees. What differs is the cache, not the stream: cosmosim pins a decode step's
experts (docs/simulator.md, "Cache"), a textbook cache does not.

`libcachesim-csv` is the CSV layout libCacheSim's csv reader takes (header `time,obj_id,obj_size`,
comma-delimited, numeric object ids); the reader options are `LIBCACHESIM_TRACE_PARAMS` and
docs/trace-format.md shows both the `cachesim` command line and the Python `libcachesim` calls.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cosmosim.files import atomic_write_bytes
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.trace import Trace
from cosmosim.workload.stream import AccessStream, access_stream, build_workload

LIBCACHESIM_HEADER = "time,obj_id,obj_size"
# cachesim's -t string for that layout; libCacheSim hashes ids unless told they are numbers.
LIBCACHESIM_TRACE_PARAMS = "time-col=1,obj-id-col=2,obj-size-col=3,obj-id-is-num=true,delimiter=,,has-header=true"


def export_stream(trace: Trace, arch: Architecture | None, *, weight_bits: float, prompt_tokens: int,
                  warmup_fraction: float, max_tokens: int | None) -> AccessStream:
    """The stream an engine replays for `trace` on `arch` (its layer mapping, objects of its expert
    size at `weight_bits`), or without an architecture the trace's own layers, objects of size 1."""
    if arch is None:
        layers, size = trace.n_layers, 1
    else:
        arch.check_routing(str(trace.path or 'trace'), trace.n_experts, trace.top_k)
        layers, size = arch.n_layers, arch.expert_bytes(weight_bits)
    # The context length bounds only the attention cost of a step, never which experts it reads.
    workload = build_workload(trace, layers, prompt_tokens=prompt_tokens, context_len=trace.n_tokens,
                              max_tokens=max_tokens, warmup_fraction=warmup_fraction)
    return access_stream(workload, size)


def write_libcachesim_csv(stream: AccessStream, path: str | Path) -> Path:
    """One access per line: the step as the time, the (layer, expert) key as the object id, its bytes."""
    rows = np.column_stack([stream.time, stream.key, np.full(stream.key.size, stream.size, dtype=np.int64)])
    buffer = io.BytesIO()
    np.savetxt(buffer, rows, fmt="%d", delimiter=",", header=LIBCACHESIM_HEADER, comments="")
    return atomic_write_bytes(path, buffer.getvalue())


# --format of `cosmosim trace export` -> the writer of that file layout
EXPORT_FORMATS: dict[str, Callable[[AccessStream, str | Path], Path]] = {"libcachesim-csv": write_libcachesim_csv}
