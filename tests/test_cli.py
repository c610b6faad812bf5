"""The command line: the main job end to end, and every bad input as one line with exit code 2."""

import json

import pytest

from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs.arch import catalog
from cosmosim.inputs.profiles import host_profile_path, profiles_dir
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace

REQUIRED_KEYS = {"ttft_ms", "tpot_ms", "tokens_per_s", "hit_rate", "flash_mb_per_token", "peak_dram_mb",
                 "energy_mj_per_token", "breakdown", "inputs", "provenance"}


@pytest.fixture(scope="module")
def fixture_trace(tmp_path_factory):
    trace = sticky_trace(n_tokens=2048, n_layers=19, seq_len=128, seed=2)
    trace.meta["target_arch"] = "wearable-moe"
    return save_trace(trace, tmp_path_factory.mktemp("traces") / "fixture.npz")




def test_run_writes_every_key(cli, tmp_path, fixture_trace):
    out_json = tmp_path / "out.json"
    code, out, _ = cli("run", "--profile", "wearable", "--trace", str(fixture_trace), "--json", str(out_json))
    assert code == 0 and "TPOT" in out
    result = json.loads(out_json.read_text())
    assert REQUIRED_KEYS <= result.keys()
    assert set(result["tpot_ms"]) == {"mean", "p50", "p95", "p99"}
    assert 0 <= result["hit_rate"] <= 1 and result["inputs"]["arch"] == "wearable-moe"
    assert len(result["provenance"]["trace_sha256"]) == 64


def test_dense_arch_runs_without_trace(cli):
    code, out, _ = cli("run", "--arch", "wearable-dense-fa", "--profile", "wearable", "--tokens", "300")
    assert code == 0 and "wearable-dense-fa" in out


def test_trace_validate_and_info(cli, fixture_trace):
    assert cli("trace", "validate", str(fixture_trace))[0] == 0
    code, out, _ = cli("trace", "info", str(fixture_trace), "--json")
    assert code == 0 and json.loads(out)["tokens"] == 2048


def bad_profile(tmp_path):
    text = (profiles_dir() / "wearable.toml").read_text().replace("latency_us = 150", "latency_us = -3")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("args, expected", [
    (["run", "--profile", "wearable", "--trace", "{tmp}/missing.npz"], "missing.npz: no such trace file"),
    (["run", "--profile", "wearable", "--trace", "{cut}"], "not a readable .npz"),
    (["run", "--profile", "mars", "--trace", "{trace}"], "unknown device profile 'mars'"),
    (["run", "--profile", "{bad_profile}", "--trace", "{trace}"], "flash.latency_us must be > 0, got -3"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--arch", "phone-xl"], "unknown architecture 'phone-xl'"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--cache-experts", "1"], "smaller than top_k=2"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--cache-experts", "8", "--cache-mb", "9"], "give one cache size"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--policy", "kactive", "--cache-mb", "90"], "fixes the cache itself"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--policy", "fifo"], "--policy: expected one of"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--weight-bits", "40"], "--weight-bits: expected bits per weight in [1, 32] or a format name, got 40"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--prompt-tokens", "500"], "longer than --prompt-tokens=500"),
    (["run", "--profile", "wearable", "--trace", "{trace}", "--arch", "phone-dense-fa"], "is dense"),
    (["run", "--profile", "wearable", "--arch", "wearable-moe"], "give a routing --trace"),
    (["trace", "validate", "{cut}"], "not a readable .npz"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, fixture_trace, args, expected):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(fixture_trace.read_bytes()[:1000])
    values = {"tmp": tmp_path, "trace": fixture_trace, "cut": cut, "bad_profile": bad_profile(tmp_path)}
    code, out, err = cli(*[a.format(**values) for a in args])
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_unknown_flag_is_a_usage_error(cli):
    code, _, err = cli("run", "--profile", "wearable", "--no-such-flag")
    assert code == 2 and "no-such-flag" in err


def test_trace_stats_json_and_markdown(cli, fixture_trace):
    code, out, _ = cli("trace", "stats", str(fixture_trace), "--json")
    stats = json.loads(out)[str(fixture_trace)]
    assert code == 0 and stats["exrep"]["random"] == pytest.approx(0.75)
    assert 0 <= stats["exrep"]["value"] < stats["exrep"]["random"]  # the fixture is sticky by construction
    code, out, _ = cli("trace", "stats", str(fixture_trace), "--markdown")
    assert code == 0 and "| fixture |" in out and "| random top-2 of 8 |" in out


def test_catalog_commands(cli):
    code, out, _ = cli("arch")
    assert code == 0 and "wearable-wd" in out and "377/377" in out
    code, out, _ = cli("arch", "--csv", "--weight-bits", "4")
    assert code == 0 and out.splitlines()[0].startswith("name,") and len(out.splitlines()) == 1 + len(catalog())
    code, out, _ = cli("profiles")
    assert code == 0 and "phone" in out and "wearable" in out


@pytest.mark.parametrize("args, expected", [
    (["--context-len", "0"], "--context-len: expected an integer >= 1, got 0"),
    (["--tokens", "-5", "--engine", "analytic"], "--tokens: expected an integer >= 1, got -5"),
    (["--tokens", "0"], "--tokens: expected an integer >= 1, got 0"),
    (["--prompt-tokens", "64", "--context-len", "32"], "--prompt-tokens: expected <= --context-len (32)"),
    (["--cache-mb", "nan", "--arch", "wearable-moe"], "--cache-mb: expected a finite number > 0"),
])
def test_dense_and_shared_flags_are_checked(cli, args, expected):
    arch = [] if "--arch" in args else ["--arch", "wearable-dense-fa"]
    code, out, err = cli("run", "--profile", "wearable", *arch, *args)
    assert code == 2 and expected in err and "Traceback" not in err + out


def test_npy_file_and_unwritable_output(cli, tmp_path, fixture_trace):
    import numpy as np

    np.save(tmp_path / "one.npy", np.zeros(3))
    code, _, err = cli("trace", "validate", str(tmp_path / "one.npy"))
    assert code == 2 and "a single array (.npy)" in err
    (tmp_path / "file").write_text("not a folder")
    code, out, err = cli("run", "--profile", "wearable", "--trace", str(fixture_trace), "--tokens", "200",
                         "--json", str(tmp_path / "file" / "out.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_run_accepts_the_host_profile_once_calibrated(cli, tmp_path, monkeypatch, fixture_trace):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    args = ["run", "--profile", "host", "--trace", str(fixture_trace), "--tokens", "200"]
    code, _, err = cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run `cosmosim calibrate` first" in err
    host_profile_path().parent.mkdir()
    host_profile_path().write_text((profiles_dir() / "wearable.toml").read_text().replace('name = "wearable"', 'name = "host"'))
    code, out, _ = cli(*args)
    assert code == 0 and "on host" in out
