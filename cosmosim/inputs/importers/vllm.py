"""vLLM's routed experts, as its HTTP servers return them (read from vLLM 0.33.0).

A server started with `--enable-return-routed-experts` puts on each choice of a response a
`routed_experts` field: base64 of `numpy.save` bytes of an array [tokens - 1, layers, top_k] (uint8
up to 256 experts, else uint16), the logical expert ids of every token the request forwarded,
prompt then output, at every hidden layer; the last sampled token was never forwarded
(`vllm/utils/serial_utils.py`, `numpy2base64`; `vllm/model_executor/layers/fused_moe/
routed_experts_capturer.py`; `vllm/distributed/aux_output_connector/connector.py`, `take_output`).
Responses carrying it: `/v1/completions` and `/v1/chat/completions` (`id`, `choices[].index`;
`vllm/entrypoints/openai/{completion,chat_completion}/protocol.py`), not streamed, and
`/inference/v1/generate` (`request_id`; `vllm/entrypoints/scale_out/token_in_token_out/`), whose
stream carries it on each request's last chunk only (`vllm/v1/engine/output_processor.py` joins the
per-step rows when the request finishes). No gates.

The log read here is what a client keeps of those responses: one JSON document (a response or a
list of them), or one response or stream chunk per line (JSON Lines, or the server's `data: {...}`
event lines; `data: [DONE]` is skipped). Each (request id, choice index) is one request, in the
order the log first names it, so the interleaved chunks of concurrent streams come apart.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.importers.base import ImportedLog, RequestRouting, unrouted_layers

FORMAT_VERSION = "0.33.0"


def _documents(path: Path) -> list[tuple[str, object]]:
    """(where, parsed JSON) of each response or chunk in the file."""
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error}); expected vLLM responses as JSON or JSON Lines") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("data:"):  # the server's server-sent event lines, as a client captured them
            line = line[len("data:"):].strip()
        if not line or line == "[DONE]":
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as error:
            try:  # not JSON Lines: one document over many lines
                document = json.loads(text)
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {number}: not JSON ({error.msg} at char {error.pos}); expected vLLM "
                                 "responses as JSON, or one response or stream chunk per line") from None
            items = document if isinstance(document, list) else [document]
            return [(f"item {i}", item) for i, item in enumerate(items)]
        items = document if isinstance(document, list) else [document]
        found.extend((f"line {number}" + (f", item {i}" if isinstance(document, list) else ""), item)
                     for i, item in enumerate(items))
    return found


def _decode(path: Path, where: str, encoded: object) -> np.ndarray:
    if not isinstance(encoded, str):
        raise InputError(f"{path}: {where}: routed_experts: expected a base64 string, got {type(encoded).__name__}")
    try:
        array = np.load(io.BytesIO(base64.b64decode(encoded, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: {where}: routed_experts: expected base64 of a .npy array ({error})") from None
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: {where}: routed_experts: expected integers [tokens, layers, top_k], "
                         f"got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


def read_vllm(path: Path) -> ImportedLog:
    routed: dict[tuple[str, int], np.ndarray] = {}
    order: dict[tuple[str, int], None] = {}  # requests in the order the log first names them
    for where, document in _documents(path):
        name = document.get("id", document.get("request_id")) if isinstance(document, dict) else None
        if not isinstance(name, str) or not isinstance(document.get("choices"), list):
            raise InputError(f"{path}: {where}: expected a vLLM response or stream chunk (an object with a string "
                             "`id` or `request_id` and a `choices` list)")
        for choice in document["choices"]:
            if not isinstance(choice, dict) or not isinstance(choice.get("index"), int):
                raise InputError(f"{path}: {where}: choices: expected objects with an integer `index`")
            request = (name, choice["index"])
            order.setdefault(request)
            if choice.get("routed_experts") is None:  # a chunk before the last, or capture off for it
                continue
            if request in routed:
                raise InputError(f"{path}: {where}: request {name!r} choice {choice['index']}: "
                                 "routed_experts given a second time")
            routed[request] = _decode(path, where, choice["routed_experts"])
    if not routed:
        raise InputError(f"{path}: no choice carries routed_experts; start vLLM with --enable-return-routed-experts")
    arrays = [routed[request] for request in order if request in routed]
    shapes = {array.shape[1:] for array in arrays}
    if len(shapes) > 1:
        raise InputError(f"{path}: routed_experts: expected one [layers, top_k] for every request, got {sorted(shapes)}")
    # The capture buffer starts zeroed and only MoE layers write it: a dense layer is all zeros.
    dense = unrouted_layers(np.concatenate(arrays), fill=0)
    names = {request: request[0] if request[1] == 0 else f"{request[0]}#{request[1]}" for request in routed}
    requests = [RequestRouting(names[request], routed[request][:, ~dense]) for request in order if request in routed]
    return ImportedLog("vllm", FORMAT_VERSION, requests, layers=np.flatnonzero(~dense).tolist())
