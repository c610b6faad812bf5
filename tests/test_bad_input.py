"""Bad input never crashes and never clobbers: generated malformed traces, profiles, sweep specs and
flag combinations, each through the command line in process.

For every case: exit code 2, exactly one line on stderr that names the file (or the flag) at fault,
no traceback, and every input and every earlier output byte-identical afterwards. A generated
input that happens to be valid must run cleanly (exit 0); anything else, exit 1 above all, fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosmosim.cli import main
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import load_trace, save_trace
from cosmosim.provenance import REPOSITORY

CASES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WEARABLE = (REPOSITORY / "device_profiles" / "wearable.toml").read_text()
EARLIER_OUTPUT = b'{"an": "earlier result"}\n'


def invoke(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(arg) for arg in argv])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def fresh(tmp_path: Path) -> Path:
    """A new, empty folder for one generated example (hypothesis reuses the test's tmp_path)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused_or_clean(argv: list[str], folder: Path, names: str, *, valid: bool | None = None) -> None:
    """Run `argv` in `folder`: refused (exit 2, one line naming `names`, nothing changed) or, where the
    input turned out valid, clean (exit 0)."""
    before = digest(folder)
    code, out, err = invoke(argv)
    assert "Traceback" not in out + err, err
    if code == 0 and valid is not False:
        return
    assert code == 2, f"exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosmosim: error: "), err
    assert names in lines[0], f"{names!r} not named in: {lines[0]}"
    assert digest(folder) == before, "a refused command changed a file"


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory) -> Path:
    return save_trace(sticky_trace(n_tokens=1024, n_layers=19, seq_len=128, seed=3),
                      tmp_path_factory.mktemp("good") / "good.npz")


# ------------------------------------------------------------------------------ traces

def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _meta_with(arrays, **model):
    meta = json.loads(str(arrays["meta"]))
    meta["model"].update(model)
    return np.array(json.dumps(meta))


ARRAY_DAMAGE = {
    "drop experts": lambda a, v: a.pop("experts"),
    "drop meta": lambda a, v: a.pop("meta"),
    "experts as floats": lambda a, v: a.update(experts=a["experts"].astype(np.float32)),
    "experts as strings": lambda a, v: a.update(experts=a["experts"].astype(str)),
    "experts out of range": lambda a, v: a.update(experts=a["experts"] + 8 + v % 1000),
    "experts negative": lambda a, v: a.update(experts=a["experts"] - 1 - v % 5),
    "experts 2-d": lambda a, v: a.update(experts=a["experts"][:, :, 0]),
    "gates NaN": lambda a, v: a.update(gates=np.full_like(a["gates"], np.nan)),
    "gates short": lambda a, v: a.update(gates=a["gates"][: v % 100]),
    "positions skip": lambda a, v: a.update(positions=a["positions"] * 2),
    "positions start late": lambda a, v: a.update(positions=a["positions"] + 1 + v % 7),
    "meta not JSON": lambda a, v: a.update(meta=np.array("{" * (1 + v % 4))),
    "meta a number": lambda a, v: a.update(meta=np.array(float(v))),
    "meta absurd n_experts": lambda a, v: a.update(meta=_meta_with(a, n_experts=10**12 + v)),
    "meta zero layers": lambda a, v: a.update(meta=_meta_with(a, n_layers=0)),
    "meta string top_k": lambda a, v: a.update(meta=_meta_with(a, top_k="2")),
    "domains strings": lambda a, v: a.update(domains=np.array(["x"] * len(a["positions"]))),
    "router_probs ints": lambda a, v: a.update(router_probs=np.zeros((len(a["positions"]), 19, 8), np.int64)),
    "unknown array": lambda a, v: a.update(extra=np.zeros(v % 10)),
}


def _bytes_damage(kind: str, data: bytes, v: int) -> bytes:
    if kind == "truncate":
        return data[: v % len(data)]
    if kind == "flip":
        start = v % len(data)
        return data[:start] + bytes(b ^ 0xFF for b in data[start:start + 64]) + data[start + 64:]
    if kind == "random":
        return np.random.default_rng(v).bytes(1 + v % 4096)
    return b""  # empty


TRACE_COMMANDS = [["trace", "validate"], ["trace", "info"], ["trace", "stats"],
                  ["run", "--profile", "wearable", "--arch", "wearable-moe", "--tokens", "300", "--trace"]]


@CASES
@given(damage=st.sampled_from(sorted(ARRAY_DAMAGE)), value=st.integers(0, 10**6),
       command=st.sampled_from(TRACE_COMMANDS))
def test_a_malformed_trace_is_one_line(tmp_path, good_trace, damage, value, command):
    folder = fresh(tmp_path)
    arrays = _arrays(good_trace)
    ARRAY_DAMAGE[damage](arrays, value)
    path = folder / "bad.npz"
    np.savez_compressed(path, **arrays)
    (folder / "earlier.json").write_bytes(EARLIER_OUTPUT)
    extra = ["--json", folder / "earlier.json"] if command[0] == "run" else []
    assert_refused_or_clean([*command, path, *extra], folder, str(path), valid=False)


@CASES
@given(kind=st.sampled_from(["truncate", "flip", "random", "empty"]), value=st.integers(0, 10**6),
       command=st.sampled_from(TRACE_COMMANDS))
def test_a_damaged_trace_file_is_one_line(tmp_path, good_trace, kind, value, command):
    folder = fresh(tmp_path)
    path = folder / "bad.npz"
    path.write_bytes(_bytes_damage(kind, good_trace.read_bytes(), value))
    try:
        load_trace(path)
        valid = None  # a flip in a part of the archive nothing reads: the trace still loads
    except Exception:
        valid = False
    assert_refused_or_clean([*command, path], folder, str(path), valid=valid)


def test_corrupt_compressed_data_inside_a_valid_zip(tmp_path, good_trace):
    data = bytearray(good_trace.read_bytes())
    with zipfile.ZipFile(good_trace) as archive:
        member = archive.getinfo("experts.npy")
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start + 16:start + 48] = bytes(b ^ 0xFF for b in data[start + 16:start + 48])
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    for command in TRACE_COMMANDS:
        assert_refused_or_clean([*command, tmp_path / "bad.npz"], tmp_path, "bad.npz", valid=False)


# ------------------------------------------------------------------------------ profiles

PROFILE_KEYS = [("flash", "latency_us"), ("flash", "queue_depth"), ("flash", "max_request_kib"),
                ("dram", "capacity_gib"), ("dram", "app_budget_gib"), ("dram", "bandwidth_gb_per_s"),
                ("compute", "gemv_gflops"), ("compute", "gemm_gflops"), ("compute", "layer_overhead_us"),
                ("energy", "flash_pj_per_byte"), ("energy", "dram_pj_per_bit"), ("energy", "pj_per_flop"),
                ("energy", "idle_mw")]
ABSURD = ["-1", "0", "1e308", "-1e308", "1e-308", "nan", "inf", "-inf", "1000000000000", '"fast"', "true", "[]",
          "{}", "1e400"]


def _profile_with(section: str, key: str, value: str) -> str:
    lines, current = [], None
    for line in WEARABLE.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        if current == section and line.split("=")[0].strip() == key:
            line = f"{key} = {value}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@CASES
@given(field=st.sampled_from(PROFILE_KEYS), value=st.sampled_from(ABSURD),
       command=st.sampled_from(["des", "analytic"]))
def test_an_absurd_profile_value_is_one_line(tmp_path, good_trace, field, value, command):
    folder = fresh(tmp_path)
    profile = folder / "device.toml"
    profile.write_text(_profile_with(*field, value))
    (folder / "earlier.json").write_bytes(EARLIER_OUTPUT)
    argv = ["run", "--profile", profile, "--trace", good_trace, "--arch", "wearable-moe", "--tokens", "300",
            "--engine", command, "--json", folder / "earlier.json", "-q"]
    assert_refused_or_clean(argv, folder, str(profile))


# ------------------------------------------------------------------------------ sweep specs

SPEC_DAMAGE = {
    "policy": ['"fifo"', "3", "true"], "weight_bits": ["0", "33", '"16"', '"q9_x"', "true"], "cache_mb": ["-5", "0", "nan", '"x"'],
    "cache_experts": ["0", "1.5", "-3"], "tokens": ["0", "-1", "1e3"], "prompt_tokens": ["0", '"a"'],
    "arch": ['"phone-huge"', "1"], "wd_rank": ['"half"', "0"], "cache_fraction": ["1.5", "0", "-0.1"],
    "trace": ['"missing.npz"', '"*.nothing"', "5"], "profile": ['"mars"', '"missing.toml"', "7"],
    "per_layer_cache": ['"yes"', "1"], "bogus_axis": ["1"],
}


@CASES
@given(axis=st.sampled_from(sorted(SPEC_DAMAGE)), data=st.data())
def test_a_bad_sweep_spec_value_names_the_spec_and_key(tmp_path, good_trace, axis, data):
    value = data.draw(st.sampled_from(SPEC_DAMAGE[axis]))
    folder = fresh(tmp_path)
    (folder / "good.npz").write_bytes(good_trace.read_bytes())
    axes = {"profile": '["wearable"]', "trace": '["good.npz"]', "arch": '["wearable-moe"]', "cache_experts": "[40]"}
    axes.pop("cache_experts" if axis in ("cache_mb", "cache_fraction") else "", None)
    axes[axis] = f"[{value}]"
    spec = folder / "spec.toml"
    spec.write_text('engine = "analytic"\n[axes]\n' + "".join(f"{k} = {v}\n" for k, v in axes.items()))
    out = folder / "results"
    assert_refused_or_clean(["sweep", spec, "--out", out, "-q"], folder, f"{spec}: axes.{axis}", valid=False)
    assert not out.exists()


# ------------------------------------------------------------------------------ flags

BAD_FLAGS = [
    ["--cache-mb", "abc"], ["--cache-mb", "-1"], ["--cache-mb", "nan"], ["--cache-experts", "0"],
    ["--cache-experts", "x"], ["--tokens", "-5"], ["--prompt-tokens", "0"], ["--context-len", "0"],
    ["--weight-bits", "0.5"], ["--expert-bits", "q9"], ["--policy", "fifo"], ["--prefetch", "psychic"], ["--engine", "quantum"],
    ["--bogus-option"], ["--policy", "kactive", "--cache-mb", "50"], ["--cache-mb", "50", "--cache-experts", "9"],
    ["--prompt-tokens", "64", "--context-len", "32"], ["--engine", "analytic", "--prefetch", "oracle"],
    ["--engine", "analytic", "--timeline", "{out}/t.json"], ["--json", "{trace}"], ["--json", "{out}"],
    ["--json", ""], ["--json", "{out}/same.json", "--timeline", "{out}/same.json"],
]


@CASES
@given(flags=st.lists(st.sampled_from(range(len(BAD_FLAGS))), min_size=1, max_size=3, unique=True))
def test_bad_flags_are_one_line_and_touch_nothing(tmp_path, good_trace, flags):
    folder = fresh(tmp_path)
    trace = folder / "good.npz"
    trace.write_bytes(good_trace.read_bytes())
    argv = ["run", "--profile", "wearable", "--arch", "wearable-moe", "--trace", trace, "--tokens", "300", "-q"]
    for index in flags:
        argv += [arg.format(out=folder, trace=trace) for arg in BAD_FLAGS[index]]
    assert_refused_or_clean(argv, folder, "--", valid=False)


@pytest.mark.parametrize("argv", [
    ["run"], ["run", "--profile"], ["trace"], ["trace", "stats"], ["sweep"], ["nonsense"], ["run", "--help", "--x"],
    ["report", "{out}", "--out", "{out}/inside.html"], ["sweep", "{spec}", "--out", "{out}", "--csv", "{out}/rows.csv"],
    ["paper", "bles-speedup", "--seed", "-1"], ["trace", "stats", "{trace}", "--rho", "nan"],
    ["run", "--profile", "wearable", "--arch", "wearable-dense-fa", "--policy", "belady"],
    ["run", "--profile", "wearable", "--arch", "wearable-dense-fa", "--cache-mb", "50", "--prefetch", "oracle"],
    ["run", "--profile", "wearable", "--arch", "wearable-dense-fa", "--tokens", "1000000000"],
    ["run", "--profile", "wearable", "--arch", "wearable-dense-fa", "--trace", "{trace}"],
    ["sweep", "{spec}", "--out", "{out}/new", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "nan"],
    ["validate", "--budget-min", "nan"], ["validate", "--repeats", "1"], ["run", "--profile", "{spec}"],
])
def test_usage_errors_and_misplaced_outputs_are_one_line(tmp_path, good_trace, argv):
    trace = tmp_path / "good.npz"
    trace.write_bytes(good_trace.read_bytes())
    spec = tmp_path / "spec.toml"
    spec.write_text('engine = "analytic"\n[axes]\nprofile = ["wearable"]\ntrace = ["good.npz"]\narch = ["wearable-moe"]\n'
                    "cache_experts = [40]\n")
    (tmp_path / "results").mkdir()
    values = {"out": tmp_path / "results", "spec": spec, "trace": trace}
    assert_refused_or_clean([arg.format(**values) for arg in argv], tmp_path, "", valid=False)
