"""The access stream (`cosmosim.workload.stream.access_stream`) and `cosmosim trace export`.

The stream is checked against the one docs/simulator.md describes, worked out by hand on a tiny
trace; the export against the stream the engines replay; and, where the `libcachesim` package (the
Python bindings of libCacheSim) is installed, libCacheSim's own LRU reading the exported CSV with the
documented reader options must miss exactly as often as the textbook LRU of tests/test_lru_reference.py.
"""

from pathlib import Path

import numpy as np
import pytest
from test_lru_reference import reference_lru

from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.synthetic import trace_from_experts
from cosmosim.inputs.trace import save_trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.export import LIBCACHESIM_HEADER
from cosmosim.workload.stream import access_stream, build_workload

TRACES = Path(__file__).resolve().parent.parent / "traces"

# Two sequences of 3 tokens, 2 layers, top-2 of 4. The first is the warm-up (half of 2, rounded up).
TINY = [[[0, 1], [2, 3]], [[1, 2], [0, 3]], [[3, 2], [1, 0]],
        [[1, 2], [3, 0]], [[2, 0], [0, 3]], [[3, 1], [2, 1]]]


def tiny_stream():
    trace = trace_from_experts(TINY, seq_len=3, n_experts=4)
    return access_stream(build_workload(trace, 2, prompt_tokens=2, context_len=8, warmup_fraction=0.5), size=5)


def test_the_stream_is_the_documented_one():
    """Worked by hand from docs/simulator.md: the second sequence's 2-token prompt is one prefill step per
    layer (its experts once each, in order of first use), its last token a decode step per layer (top-k in
    gate order); key = layer * 4 + expert."""
    stream = tiny_stream()
    assert stream.key.tolist() == [1, 2, 0, 4 + 3, 4 + 0, 3, 1, 4 + 2, 4 + 1]
    assert stream.time.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert stream.decode.tolist() == [False] * 5 + [True] * 4
    assert stream.size == 5
    assert stream.steps() == [(False, [1, 2, 0]), (False, [7, 4]), (True, [3, 1]), (True, [6, 5])]


def read_csv(path: Path) -> tuple[str, np.ndarray]:
    header, *rows = path.read_text().splitlines()
    return header, np.array([[int(cell) for cell in row.split(",")] for row in rows])


def test_export_without_an_architecture_counts_experts(cli, tmp_path):
    trace_path = save_trace(trace_from_experts(TINY, seq_len=3, n_experts=4), tmp_path / "tiny.npz")
    out = tmp_path / "tiny.csv"
    code, stdout, stderr = cli("trace", "export", trace_path, "--out", out, "--prompt-tokens", 2, "--warmup-fraction", 0.5)
    assert code == 0, stderr
    header, rows = read_csv(out)
    stream = tiny_stream()
    assert header == LIBCACHESIM_HEADER == "time,obj_id,obj_size"
    assert rows.tolist() == [[t, k, 1] for t, k in zip(stream.time.tolist(), stream.key.tolist())]
    assert "9 accesses (4 in decode steps)" in stdout and "obj-id-is-num=true" in stdout


@pytest.mark.parametrize("bits", [16, 4])
def test_export_is_the_stream_the_engines_replay(cli, tmp_path, bits):
    path, out = TRACES / "bles.npz", tmp_path / "bles.csv"
    assert cli("trace", "export", path, "--out", out, "--tokens", 600, "--weight-bits", bits)[0] == 0
    replayed = access_stream(prepare("wearable", path, None, RunConfig(tokens=600)).workload)
    _, rows = read_csv(out)
    assert rows[:, 0].tolist() == replayed.time.tolist() and rows[:, 1].tolist() == replayed.key.tolist()
    assert set(rows[:, 2].tolist()) == {get_arch("wearable-moe").expert_bytes(bits)}


@pytest.mark.parametrize("args, expected", [
    (["--format", "belady-bin"], "--format belady-bin: expected one of libcachesim-csv"),
    (["--arch", "phone-dense-fa"], "is dense: it routes nothing"),
    (["--warmup-fraction", 1], "--warmup-fraction"),
])
def test_bad_export_options_get_one_line(cli, tmp_path, args, expected):
    out = tmp_path / "x.csv"
    code, _, stderr = cli("trace", "export", TRACES / "bles.npz", "--out", out, *args)
    assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def libcachesim_lru_misses(csv: Path, capacity: int, size: int) -> int:
    """Misses of libCacheSim's LRU over the exported CSV, read with the options docs/trace-format.md gives."""
    lcs = pytest.importorskip("libcachesim")
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                                 obj_id_is_num_set=True)
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
    cache = lcs.LRU(cache_size=capacity * size)
    return sum(not cache.get(request) for request in lcs.TraceReader(str(csv), lcs.TraceType.CSV_TRACE, params))


@pytest.mark.parametrize("name, prompt", [("wd.npz", 1), ("moe.npz", 4)])
def test_libcachesim_lru_misses_like_textbook_lru(cli, tmp_path, name, prompt):
    pytest.importorskip("libcachesim")
    path, out = TRACES / name, tmp_path / "stream.csv"
    assert cli("trace", "export", path, "--out", out, "--tokens", 1536, "--prompt-tokens", prompt)[0] == 0
    stream = access_stream(prepare("wearable", path, None, RunConfig(tokens=1536, prompt_tokens=prompt)).workload)
    size = read_csv(out)[1][0, 2]
    for capacity in (24, 40, 64, 160):
        textbook = reference_lru(stream, capacity, protect_step=False).misses
        assert libcachesim_lru_misses(out, capacity, size) == textbook, capacity
