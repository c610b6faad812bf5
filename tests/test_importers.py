"""`cosmosim trace import`: logs written as vLLM 0.33.0 and SGLang 0.5.10.post1 write them (fields
from their source, docs/trace-format.md "Importing") and the long table, built here with known
routing and interleaved requests; the trace must hold exactly that routing, one sequence per
request, and each malformed input must end in one line naming the file and what was expected."""

import base64
import io
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from cosmosim.inputs.trace import load_trace

N_EXPERTS, TOP_K = 8, 2


def routing(tokens: int, layers: int, seed: int, n_experts: int = N_EXPERTS) -> np.ndarray:
    """Distinct top-k ids per token and layer, int64 [tokens, layers, TOP_K]."""
    rng = np.random.default_rng(seed)
    return np.array([[rng.choice(n_experts, TOP_K, replace=False) for _ in range(layers)] for _ in range(tokens)])


def sequences(trace) -> list[np.ndarray]:
    return [trace.experts[a:b].astype(np.int64) for a, b in trace.sequences()]


def imported(cli, tmp_path, fmt, src, *options):
    out = tmp_path / "imported.npz"
    code, stdout, stderr = cli("trace", "import", fmt, src, "--out", out, *options)
    assert code == 0, stderr
    return load_trace(out), stdout


def refused(cli, tmp_path, fmt, src, *expected):
    """The import fails with one line that names the file and says each of `expected`; no trace is written."""
    out = tmp_path / "refused.npz"
    code, _, stderr = cli("trace", "import", fmt, src, "--out", out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    for text in (str(src), *expected):
        assert text in stderr, stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- vLLM

def numpy2base64(array: np.ndarray) -> str:
    """What vllm/utils/serial_utils.py's numpy2base64 sends as `routed_experts`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def with_dense_layer(array: np.ndarray) -> np.ndarray:
    """vLLM's capture buffer as a model with a dense first layer leaves it: that layer all zeros, uint8."""
    return np.concatenate([np.zeros_like(array[:, :1]), array], axis=1).astype(np.uint8)


def generate_chunk(request_id: str, routed: np.ndarray | None) -> str:
    """One `data:` event of /inference/v1/generate's stream; only a request's last chunk has routed_experts."""
    choice = {"index": 0, "token_ids": [7], "finish_reason": None if routed is None else "length"}
    if routed is not None:
        choice["routed_experts"] = numpy2base64(routed)
    return "data: " + json.dumps({"request_id": request_id, "choices": [choice]}) + "\n\n"


def test_vllm_stream_of_interleaved_requests(cli, tmp_path):
    a, b = routing(6, 2, seed=1), routing(4, 2, seed=2)
    log = tmp_path / "generate.sse"
    chunks = [("a", None), ("b", None), ("a", None), ("b", with_dense_layer(b)), ("a", with_dense_layer(a))]
    log.write_text("".join(generate_chunk(*chunk) for chunk in chunks) + "data: [DONE]\n\n")
    trace, stdout = imported(cli, tmp_path, "vllm", log, "--arch", "wearable-moe")
    first, second = sequences(trace)
    assert np.array_equal(first, a) and np.array_equal(second, b)  # in the order the log first names them
    assert trace.positions.tolist() == [*range(6), *range(4)]
    assert np.all(trace.gates == np.float16(0.5))
    meta = trace.meta
    assert meta["gates"]["present"] is False and meta["training"] is None and meta["target_arch"] == "wearable-moe"
    assert meta["model"] == {"n_layers": 2, "n_experts": int(max(a.max(), b.max())) + 1, "top_k": 2}
    assert meta["import"]["layers"] == [1, 2]  # the dense layer 0 is left out
    assert meta["import"]["format_version"] == "0.33.0" and meta["import"]["requests"] == 2
    assert meta["source"] == f"imported from vllm log {log}"
    from cosmosim.provenance import sha256_file
    assert meta["import"]["sha256"] == sha256_file(log)
    assert "2 requests" in stdout


def test_vllm_chat_responses_with_several_choices(cli, tmp_path):
    a, b, c = routing(5, 3, seed=3), routing(3, 3, seed=4), routing(7, 3, seed=5)
    def choice(index, routed):
        return {"index": index, "message": {"role": "assistant", "content": "x"},
                "routed_experts": numpy2base64(routed.astype(np.uint8))}

    responses = [{"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice(0, a)]},
                 {"id": "chatcmpl-2", "object": "chat.completion", "choices": [choice(0, b), choice(1, c)]}]
    log = tmp_path / "responses.json"
    log.write_text(json.dumps(responses))
    trace, _ = imported(cli, tmp_path, "vllm", log, "--n-experts", 16, "--seq-len", 4)
    assert trace.n_experts == 16 and trace.meta["import"]["n_experts_from"] == "--n-experts"
    assert np.array_equal(trace.experts.astype(np.int64), np.concatenate([a, b, c]))
    assert trace.positions.tolist() == [0, 1, 2, 3, 0, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2]  # --seq-len 4 cuts requests


def test_an_imported_trace_runs(cli, tmp_path):
    log = tmp_path / "responses.jsonl"
    log.write_text("\n".join(json.dumps({"id": f"cmpl-{i}", "choices": [
        {"index": 0, "text": "", "routed_experts": numpy2base64(routing(40, 4, seed=i).astype(np.uint8))}]})
        for i in range(3)))
    out = tmp_path / "mine.npz"
    assert cli("trace", "import", "vllm", log, "--out", out, "--n-experts", 8, "--arch", "wearable-moe")[0] == 0
    code, _, stderr = cli("run", "--profile", "wearable", "--trace", out, "--prompt-tokens", 4, "--engine", "analytic")
    assert code == 0, stderr


@pytest.mark.parametrize("lines, expected", [
    (['{"id": "a", "choices": [{"index": 0, "routed_experts": "not base64!"}]}'], ["line 1", "base64"]),
    (['{"choices": [{"index": 0, "routed_experts": null}]}'], ["line 1", "`id` or `request_id`"]),
    (['{"id": "a", "choices": [{"index": 0}]}', "{not json"], ["line 2", "not JSON"]),
    (['{"id": "a", "choices": [{"index": 0, "text": "x"}]}'], ["--enable-return-routed-experts"]),
    ([json.dumps({"id": "a", "choices": [{"index": 0, "routed_experts": numpy2base64(np.zeros((2, 3), np.uint8))}]})],
     ["expected integers [tokens, layers, top_k]"]),
    ([json.dumps({"id": "a", "choices": [{"index": 0, "routed_experts": numpy2base64(np.array([[[1, 2]]], np.uint8))}]})] * 2,
     ["line 2", "a second time"]),
])
def test_vllm_bad_logs_get_one_line(cli, tmp_path, lines, expected):
    log = tmp_path / "bad.jsonl"
    log.write_text("\n".join(lines) + "\n")
    refused(cli, tmp_path, "vllm", log, *expected)


def test_ids_past_n_experts_name_the_request(cli, tmp_path):
    log = tmp_path / "responses.jsonl"
    log.write_text(json.dumps({"id": "big", "choices": [{"index": 0, "routed_experts": numpy2base64(
        np.array([[[1, 2]], [[9, 3]]], np.uint8))}]}))
    code, _, stderr = cli("trace", "import", "vllm", log, "--out", tmp_path / "t.npz", "--n-experts", 8)
    assert code == 2 and "request 'big', token 1" in stderr and "--n-experts" in stderr


# -------------------------------------------------------------------------------------------- SGLang

EXTEND, DECODE = 1, 2  # sglang.srt.model_executor.forward_batch_info.ForwardMode
PHYSICAL_TO_LOGICAL = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 3])  # two redundant replicas, as EPLB places them
MOE_LAYERS, ALL_LAYERS = (1, 2), 3  # layer 0 is dense: the recorder never writes it


def sglang_dump(script: list[tuple[int, list[tuple[str, int]]]], seed: int = 0) -> tuple[dict, dict]:
    """A per_token dump of the passes in `script` ((forward mode, [(request, tokens)]), in batch order), as
    _DetailAccumulator.dump writes it, and each request's logical routing [tokens, layers, k]."""
    import torch

    rng = np.random.default_rng(seed)
    position, truth, records = defaultdict(int), defaultdict(list), []
    for pass_id, (mode, parts) in enumerate(script, 1):
        positions, physical = [], []
        for request, n in parts:
            for _ in range(n):
                logical = routing(1, len(MOE_LAYERS), seed=int(rng.integers(1 << 30)))[0]  # [layers, k]
                truth[request].append(logical)
                physical.append([[rng.choice(np.flatnonzero(PHYSICAL_TO_LOGICAL == e)) for e in row] for row in logical])
                positions.append(position[request])
                position[request] += 1
        ids = torch.full((ALL_LAYERS, len(positions), 8), -1, dtype=torch.int32)  # 8: _DetailSinglePassGatherer._TOP_K_NUM
        ids[list(MOE_LAYERS), :, :TOP_K] = torch.tensor(np.array(physical), dtype=torch.int32).permute(1, 0, 2)
        records.append({"forward_pass_id": pass_id, "rank": 0, "gatherer_key": "primary", "input_ids": [5] * len(positions),
                        "positions": positions, "extend_seq_lens": None if mode == DECODE else [n for _, n in parts],
                        "forward_mode": mode, "topk_ids_of_layer": ids, "misc_objects": [],
                        "global_physical_count": torch.zeros(ALL_LAYERS, PHYSICAL_TO_LOGICAL.size, dtype=torch.int32)})
    mapping = torch.tensor(np.tile(PHYSICAL_TO_LOGICAL, (ALL_LAYERS, 1)))
    return {"records": records, "last_physical_to_logical_map": mapping}, {r: np.array(t) for r, t in truth.items()}


# r0 and r1 prefill together; r2 joins; r0 finishes; r3's prompt is prefilled in two chunks around a decode pass.
SCRIPT = [(EXTEND, [("r0", 3), ("r1", 2)]), (DECODE, [("r0", 1), ("r1", 1)]), (EXTEND, [("r2", 2)]),
          (DECODE, [("r0", 1), ("r1", 1), ("r2", 1)]), (DECODE, [("r1", 1), ("r2", 1)]), (EXTEND, [("r3", 2)]),
          (DECODE, [("r1", 1), ("r2", 1)]), (EXTEND, [("r3", 2)]), (DECODE, [("r1", 1), ("r2", 1), ("r3", 1)])]


def save_dump(tmp_path, dump) -> object:
    import torch

    path = tmp_path / "expert_distribution_recorder_1733000000.0_0.pt"
    torch.save(dump, path)
    return path


def test_sglang_per_token_dump(cli, tmp_path):
    dump, truth = sglang_dump(SCRIPT)
    trace, _ = imported(cli, tmp_path, "sglang", save_dump(tmp_path, dump))
    assert [s.tolist() for s in sequences(trace)] == [truth[r].tolist() for r in ("r0", "r1", "r2", "r3")]
    assert trace.n_experts == 8 and trace.meta["import"]["n_experts_from"] == "log"  # physical ids mapped back
    assert trace.meta["import"]["layers"] == list(MOE_LAYERS)
    assert trace.meta["import"]["format_version"] == "0.5.10.post1" and trace.meta["import"]["ambiguous_links"] == 0
    assert trace.meta["gates"]["present"] is False


def test_sglang_counts_what_positions_cannot_tell_apart(cli, tmp_path):
    """r0 and r1 decode at the same positions until one stops: the recorder keeps no request ids."""
    script = [(EXTEND, [("r0", 2), ("r1", 2)]), (DECODE, [("r0", 1), ("r1", 1)]), (DECODE, [("r0", 1)])]
    trace, _ = imported(cli, tmp_path, "sglang", save_dump(tmp_path, sglang_dump(script)[0]))
    assert trace.meta["import"]["ambiguous_links"] == 1
    assert [b - a for a, b in trace.sequences()] == [4, 3]  # the token goes to the first in batch order


@pytest.mark.parametrize("damage, expected", [
    (lambda d: {"rank": 0, "logical_count": d["records"][0]["topk_ids_of_layer"]}, ["stat-mode", "per_token"]),
    (lambda d: {**d, "records": [{k: v for k, v in r.items() if k != "topk_ids_of_layer"} for r in d["records"]]},
     ["records[0]", "per_pass", "per_token"]),
    (lambda d: {**d, "records": [{**d["records"][0], "forward_mode": 5}]}, ["records[0]", "forward_mode 5"]),
    (lambda d: {**d, "records": [{**d["records"][0], "positions": [4, 5, 6, 0, 1]}]},
     ["records[0]", "position 4", "--disable-radix-cache"]),
    (lambda d: {**d, "records": [d["records"][0], {**d["records"][1], "positions": [9, 9]}]},
     ["records[1]", "running requests"]),
    (lambda d: {**d, "records": [{**d["records"][0], "extend_seq_lens": [4]}]}, ["records[0]", "extend_seq_lens"]),
])
def test_sglang_bad_dumps_get_one_line(cli, tmp_path, damage, expected):
    dump, _ = sglang_dump(SCRIPT)
    refused(cli, tmp_path, "sglang", save_dump(tmp_path, damage(dump)), *expected)


def test_a_file_torch_cannot_read_safely_gets_one_line(cli, tmp_path):
    path = tmp_path / "dump.pt"
    path.write_text("not a torch file")
    refused(cli, tmp_path, "sglang", path, "torch.load")


# --------------------------------------------------------------------------------------------- table

def long_table(seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Three requests at model layers 1 and 3, rows in a random order (requests interleaved), gates descending."""
    rng = np.random.default_rng(seed)
    truth = {"q-a": routing(4, 2, 10), 7: routing(3, 2, 11), "q-b": routing(5, 2, 12)}
    gates = {request: np.sort(rng.random(experts.shape), axis=2)[:, :, ::-1] for request, experts in truth.items()}
    rows = [(request, token, layer, rank, experts[token, i, rank], gates[request][token, i, rank])
            for request, experts in truth.items() for token in range(len(experts)) for i, layer in enumerate((1, 3))
            for rank in range(TOP_K)]
    frame = pd.DataFrame(rows, columns=["request", "token", "layer", "rank", "expert", "gate"])
    first_rows = frame.groupby("request", sort=False).head(1)  # keep each request's first appearance in log order
    rest = frame.drop(first_rows.index).sample(frac=1, random_state=seed)
    return pd.concat([first_rows, rest]), {"experts": truth, "gates": gates}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_in_any_row_order(cli, tmp_path, suffix):
    frame, truth = long_table()
    path = tmp_path / f"routing{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:  # Parquet keeps one type per column: the request labels as strings
        frame.astype({"request": str}).to_parquet(path, index=False)
    trace, _ = imported(cli, tmp_path, "table", path)
    assert [s.tolist() for s in sequences(trace)] == [e.tolist() for e in truth["experts"].values()]
    expected_gates = np.concatenate([g / g.sum(axis=2, keepdims=True) for g in truth["gates"].values()])
    assert np.allclose(trace.gates, expected_gates, atol=1e-3) and trace.meta["gates"]["present"] is True
    assert trace.meta["import"]["layers"] == [1, 3] and trace.meta["import"]["requests"] == 3


def _repeat_first_row(f: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([f, f.iloc[[0]]])


def _drop_a_layer(f: pd.DataFrame) -> pd.DataFrame:
    return f[~((f.request == "q-b") & (f.token == 2) & (f.layer == 3))]


@pytest.mark.parametrize("damage, column, expected", [
    (lambda f: f.drop(columns="expert"), "expert", "missing"),
    (lambda f: f.assign(experts=1), "experts", "unknown"),
    (lambda f: f.astype({"token": object}).assign(token=lambda g: g.token.where(g.index != g.index[3], "x")),
     "token", "expected integers"),
    (lambda f: f.assign(token=lambda g: g.token.where(g.index != g.index[3], 1.5)), "token", "expected integers"),
    (lambda f: f.assign(layer=lambda g: g.layer.where(g.index != g.index[5], -1)), "layer", "expected integers >= 0"),
    (lambda f: f.assign(rank=lambda g: g["rank"].where(g["rank"] == 0, 2)), "rank", "expected ranks 0..k-1"),
    (_repeat_first_row, "rank", "appears twice"),
    (_drop_a_layer, "layer", "lacks layer 3"),
    (lambda f: f[~((f.request == 7) & (f.token == 1))], "token", "from token 0 to 2"),
    (lambda f: f.assign(gate=lambda g: g.gate.where(g["rank"] == 0, 2.0)), "gate", "non-increasing"),
    (lambda f: f.assign(gate=lambda g: g.gate.where(g.index != g.index[2], -0.5)), "gate", "finite numbers >= 0"),
])
def test_table_bad_input_names_file_and_column(cli, tmp_path, damage, column, expected):
    frame, _ = long_table()
    path = tmp_path / "bad.csv"
    damage(frame).to_csv(path, index=False)
    refused(cli, tmp_path, "table", path, f"column {column!r}", expected)


def test_output_may_not_overwrite_the_log(cli, tmp_path):
    frame, _ = long_table()
    path = tmp_path / "routing.csv"
    frame.to_csv(path, index=False)
    code, _, stderr = cli("trace", "import", "table", path, "--out", path)
    assert code == 2 and "SRC" in stderr


def test_an_unknown_format_is_one_line(cli, tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    code, _, stderr = cli("trace", "import", "tgi", path, "--out", tmp_path / "t.npz")
    assert code == 2 and "vllm, sglang, table" in stderr
