"""Trace format v1: round trip, and every malformed input refused with one clear InputError."""

import io
import json
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.errors import InputError
from cosmosim.inputs.synthetic import sticky_trace, trace_from_experts, trace_meta
from cosmosim.inputs.trace import load_trace, save_trace


def write_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def good_arrays(n_tokens=8, n_layers=2, top_k=2, n_experts=4):
    experts = np.stack([np.arange(top_k) + (t % 2) for t in range(n_tokens)])[:, None, :].repeat(n_layers, 1)
    return {
        "experts": experts.astype(np.int16),
        "gates": np.full((n_tokens, n_layers, top_k), 0.5, np.float16),
        "positions": (np.arange(n_tokens) % 4).astype(np.int32),
        "meta": np.array(json.dumps(trace_meta(n_layers, n_experts, top_k))),
    }


def test_round_trip(tmp_path):
    trace = sticky_trace(n_tokens=512, n_layers=3, seq_len=64)
    loaded = load_trace(save_trace(trace, tmp_path / "t.npz"))
    assert np.array_equal(loaded.experts, trace.experts) and np.array_equal(loaded.positions, trace.positions)
    assert loaded.meta == trace.meta and len(loaded.sequences()) == 8


def test_loads_good_arrays(tmp_path):
    assert load_trace(write_npz(tmp_path / "t.npz", **good_arrays())).n_tokens == 8


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("gates"), "gates: missing array"),
    (lambda a: a.update(experts=a["experts"].astype(np.float32)), "expected an integer dtype"),
    (lambda a: a.update(experts=a["experts"] + 3), r"expected ids in \[0, 4\)"),
    (lambda a: a.update(experts=a["experts"][:, :, :1].repeat(2, 2)), "distinct experts"),
    (lambda a: a.update(gates=a["gates"][:4]), "gates: expected shape"),
    (lambda a: a.update(gates=-a["gates"]), "finite values >= 0"),
    (lambda a: a.update(positions=a["positions"] + 1), "first token at position 0"),
    (lambda a: a.update(positions=np.array([0, 1, 3, 4, 0, 1, 2, 3], np.int32)), "0 or previous\\+1 at token 2"),
    (lambda a: a.update(meta=np.array("{not json")), "meta: expected JSON"),
    (lambda a: a.update(meta=np.array(json.dumps({"schema_version": 2}))), "schema_version"),
    (lambda a: a.update(meta=np.array(json.dumps(trace_meta(3, 4, 2)))), "disagrees with meta.model"),
    (lambda a: a.update(extra=np.zeros(3)), "extra: unknown array"),
    (lambda a: a.update(domains=np.array(["x"] * 8)), r"domains: expected an integer dtype \(int8\), got <U1"),
    (lambda a: a.update(tokens=np.full(8, 0.5)), "tokens: expected an integer dtype"),
    (lambda a: a.update(meta=np.array(json.dumps(trace_meta(2, 10**12, 2)))), "meta.model.n_experts: expected <= 2048"),
    (lambda a: a.update(meta=np.array(json.dumps(trace_meta(2, True, 2)))), "meta.model.n_experts: expected a positive"),
    (lambda a: a.update(meta=np.array(json.dumps({**trace_meta(2, 4, 2), "target_arch": 5}))), "meta.target_arch"),
])
def test_malformed_arrays_are_refused(tmp_path, change, message):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(InputError, match=message):
        load_trace(write_npz(tmp_path / "bad.npz", **arrays))


def test_missing_truncated_and_pickled_files(tmp_path):
    with pytest.raises(InputError, match="no such trace file"):
        load_trace(tmp_path / "nope.npz")
    good = save_trace(trace_from_experts([[0], [1]]), tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cut.npz: not a readable .npz"):
        load_trace(tmp_path / "cut.npz")
    arrays = good_arrays()
    arrays["meta"] = np.array({"schema_version": 1}, dtype=object)  # needs pickle to load
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(InputError, match="pickled.npz"):
        load_trace(tmp_path / "pickled.npz")


@settings(max_examples=80, deadline=None)
@given(experts=st.lists(st.lists(st.integers(-2, 9), min_size=2, max_size=2), min_size=1, max_size=12),
       positions=st.lists(st.integers(-1, 5), min_size=1, max_size=12))
def test_random_arrays_load_or_fail_cleanly(tmp_path_factory, experts, positions):
    """Whatever the arrays hold, loading either succeeds with a valid trace or raises InputError."""
    arrays = good_arrays()
    arrays["experts"] = np.asarray(experts, np.int16)[:, None, :]
    arrays["gates"] = np.full(arrays["experts"].shape, 0.5, np.float16)
    arrays["positions"] = np.asarray(positions, np.int32)
    arrays["meta"] = np.array(json.dumps(trace_meta(1, 8, 2)))
    path = write_npz(tmp_path_factory.mktemp("h") / "t.npz", **arrays)
    try:
        trace = load_trace(path)
    except InputError as error:
        assert str(path) in str(error)
        return
    assert trace.experts.min() >= 0 and trace.experts.max() < 8 and trace.positions[0] == 0


def test_compressed_data_that_fails_to_inflate_is_an_input_error(tmp_path):
    path = write_npz(tmp_path / "t.npz", **good_arrays(n_tokens=512))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("experts.npy")
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)  # the member's deflate stream
    for i in range(start + 16, start + 48):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a readable .npz trace"):
        load_trace(path)


def test_an_absurd_declared_shape_is_refused_before_reading(tmp_path):
    arrays = good_arrays()
    header = "{'descr': '<i2', 'fortran_order': False, 'shape': (100000000000, 2, 2), }"
    header = header.ljust(118) + "\n"
    huge = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + arrays["experts"].tobytes()
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", huge if name == "experts" else buffer.getvalue())
    with pytest.raises(InputError, match=r"experts: declares shape \(100000000000, 2, 2\)"):
        load_trace(tmp_path / "huge.npz")
