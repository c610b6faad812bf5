"""A calibration that cannot go stale silently: calibrate records when and under what load it measured
and refuses a busy machine; validate probes the host against the profile before its matrix."""

import copy
import os
import re
import tomllib

import pytest
from conftest import hold_probe_at

import cosmosim.host.probe
import cosmosim.host.validate
import cosmosim.scenario.build
from cosmosim.cli import host as cli_host
from cosmosim.cli import main
from cosmosim.engines.replay import storage
from cosmosim.files import CACHE_DIR_ENV, atomic_write_json, atomic_write_text
from cosmosim.host import calibrate as calibrate_module
from cosmosim.host.calibrate import BUSY_LOAD_PER_CPU, calibrate, check_load, load_record, profile_data, to_toml
from cosmosim.host.probe import DRIFT_FLOOR, DriftError, check_drift
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profiles import load_profile
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace

TINY = Architecture(name="tiny", n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_hidden=128,
                    n_experts=8, top_k=2, wd_rank=None)
BUSY = (100.0, 50.0, 10.0)


@pytest.fixture(scope="module")
def busy_calibration(tmp_path_factory):
    """A quick calibration of TINY on a machine made to look busy (os.getloadavg patched)."""
    folder = tmp_path_factory.mktemp("drift")
    if storage.filesystem_type(folder) in storage.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary folder is in RAM: cold reads need a disk")
    warnings = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "getloadavg", lambda: BUSY)
        _, path = calibrate(TINY, quick=True, out=folder / "calibrated" / "host.toml", directory=folder, threads=1,
                            warn=warnings.append)
    return path, warnings, folder


def test_busy_machine_warns_in_one_line_and_the_profile_records_the_load(busy_calibration):
    path, warnings, _ = busy_calibration
    (warning,) = warnings
    assert "busy" in warning and "load average 100.00" in warning and "\n" not in warning
    record = load_record(path)
    assert record["busy"] and record["load"]["load_1min"] == 100.0 and record["load"]["cpus"] == os.cpu_count()
    assert record["date"].endswith("Z") and "T" in record["date"]  # ISO 8601, UTC
    data = tomllib.loads(path.read_text())
    assert record["date"] in data["description"] and "load average 100.00" in data["description"]
    for section in ("flash", "dram", "compute"):
        for key, citation in data[section]["sources"].items():
            if key != "max_request_kib":
                assert record["date"] in citation and f"{os.cpu_count()} CPUs" in citation, (section, key)


def test_check_load_threshold(monkeypatch):
    cpus = 4
    quiet = {"load_1min": BUSY_LOAD_PER_CPU * cpus - 0.01, "cpus": cpus, "others_cpu_share": 0.1}
    warnings = []
    assert not check_load(quiet, refuse=True, warn=warnings.append) and warnings == []
    busy = {**quiet, "load_1min": BUSY_LOAD_PER_CPU * cpus + 0.01}
    assert check_load(busy, refuse=False, warn=warnings.append) and len(warnings) == 1
    with pytest.raises(calibrate_module.InputError, match="--force"):
        check_load(busy, refuse=True, warn=warnings.append)
    assert cli_host.BUSY_LOAD_PER_CPU == BUSY_LOAD_PER_CPU  # the --help text says the same threshold


def test_cli_calibrate_refuses_a_busy_machine_unless_forced(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(os, "getloadavg", lambda: BUSY)
    with pytest.raises(SystemExit) as stop:
        main(["calibrate", "--quick", "--out", str(tmp_path / "host.toml")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "busy" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "host.toml").exists()


# ----------------------------------------------------------------------------- validate's probe
def _write_profile(record: dict, path, flash_factor: float = 1.0) -> None:
    """The record's profile, its flash curve multiplied by `flash_factor`, with the record beside it."""
    record = copy.deepcopy(record)
    record["flash"]["curve"] = [[size, rate * flash_factor] for size, rate in record["flash"]["curve"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_toml(profile_data(record)))
    atomic_write_json(path.with_suffix(".json"), record)


class Reached(Exception):
    """validate got past its probe to the matrix."""


@pytest.fixture
def steady_host(busy_calibration, monkeypatch):
    """The probe measures exactly the calibrated figures (deterministic), and validate stops at the matrix."""
    path, _, folder = busy_calibration
    hold_probe_at(monkeypatch, load_profile(path), spread_per_seed=0.01)  # a 2 % spread over the three repeats

    def predict(*args):
        raise Reached

    monkeypatch.setattr(cosmosim.host.validate, "_predict", predict)
    return load_record(path), folder


def _validate(profile, folder, **kwargs):
    trace = save_trace(sticky_trace(n_tokens=256, n_layers=4, seq_len=64, seed=1), folder / "t.npz")
    return cosmosim.host.validate.validate(traces=[trace], arch=TINY, min_cases=1, tokens=40, quick=True,
                                           profile=profile, directory=folder, **kwargs)


def test_validate_refuses_a_profile_whose_flash_drifted_x3(steady_host, tmp_path):
    record, folder = steady_host
    profile = tmp_path / "x3" / "host.toml"
    _write_profile(record, profile, flash_factor=3.0)
    with pytest.raises(DriftError) as error:
        _validate(profile, folder)
    message = str(error.value)
    assert "\n" not in message and "flash read rate at " in message and "+200%" in message
    assert "cosmosim calibrate" in message and "--recalibrate" in message
    request_kib = int(re.search(r"at (\d+) KiB requests", message).group(1))  # what the small expert file holds
    expected = load_profile(profile).flash.bandwidth_bytes_per_s(request_kib * 1024) / 1e6
    # Both figures named; compared as numbers (the x3 profile went through its TOML's rounding, the probe did not).
    in_profile, now = (float(x) for x in re.search(r"is ([\d.]+) MB/s in the profile but ([\d.]+) MB/s now", message).groups())
    assert in_profile == pytest.approx(expected, rel=1e-3) and now == pytest.approx(expected / 3, rel=1e-3)
    assert list(folder.glob("cosmosim-*")) == []  # the expert file is gone


def test_validate_passes_a_profile_matching_the_probe(steady_host, tmp_path):
    record, folder = steady_host
    profile = tmp_path / "same" / "host.toml"
    _write_profile(record, profile)
    with pytest.raises(Reached):
        _validate(profile, folder)


def test_recalibrate_calibrates_and_goes_on(steady_host, tmp_path, monkeypatch):
    record, folder = steady_host
    profile = tmp_path / "x3" / "host.toml"
    _write_profile(record, profile, flash_factor=3.0)
    calls = []

    def recalibrate(arch, out, **kwargs):
        calls.append(out)
        _write_profile(record, out)

    monkeypatch.setattr(cosmosim.host.validate, "calibrate", recalibrate)
    with pytest.raises(Reached):
        _validate(profile, folder, recalibrate=True)
    assert calls == [profile] and load_profile(profile).flash.bandwidth_curve[-1][1] == pytest.approx(
        record["flash"]["curve"][-1][1], rel=1e-3)


def test_cli_validate_says_the_drift_in_one_line_with_exit_2(steady_host, tmp_path, capsys, monkeypatch):
    record, folder = steady_host
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    _write_profile(record, tmp_path / "cache" / "profiles" / "host.toml", flash_factor=3.0)
    monkeypatch.setattr(cosmosim.host.validate, "get_arch", lambda name: TINY if name == "tiny" else get_arch(name))
    monkeypatch.setattr(cosmosim.scenario.build, "get_arch", lambda name: TINY if name == "tiny" else get_arch(name))
    trace = save_trace(sticky_trace(n_tokens=256, n_layers=4, seq_len=64, seed=1), tmp_path / "t.npz")
    with pytest.raises(SystemExit) as stop:
        main(["validate", "--trace", str(trace), "--arch", "tiny", "--dir", str(folder), "--quick", "-q"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "flash read rate" in err and "--recalibrate" in err


def test_the_real_probe_measures_and_refuses_x3(busy_calibration, tmp_path):
    """Unpatched: the probe's figures on the expert file, and a x3 flash profile refused."""
    path, _, folder = busy_calibration
    record = load_record(path)
    profile = tmp_path / "x3" / "host.toml"
    _write_profile(record, profile, flash_factor=3.0)
    from cosmosim.engines.replay.compute import torch_threads
    from cosmosim.engines.replay.run import HostModel
    with torch_threads(1), HostModel(TINY, folder) as model:
        figures = cosmosim.host.probe.probe(load_profile(profile), record, model.reader, model.layout.file_bytes, TINY)
    assert [len(f["probe_runs"]) for f in figures] == [3, 3] and all(f["probe"] > 0 for f in figures)
    assert all(f["tolerance"] >= DRIFT_FLOOR for f in figures)
    print({f["figure"]: (f["profile"], f["probe"], f["spread"]) for f in figures})
    with pytest.raises(DriftError, match="flash read rate"):
        check_drift(figures)


# ----------------------------------------------------------------------------- replay's probe
def _replay(tmp_path, folder, profile, *flags):
    trace = save_trace(sticky_trace(n_tokens=256, n_layers=4, seq_len=64, seed=1), tmp_path / "t.npz")
    return main(["replay", "--trace", str(trace), "--profile", str(profile), "--arch", "tiny", "--tokens", "40",
                 "--cache-experts", "8", "--dir", str(folder), "--threads", "1", *flags])


@pytest.fixture
def tiny_resolves(monkeypatch):
    monkeypatch.setattr(cosmosim.scenario.build, "get_arch", lambda name: TINY if name == "tiny" else get_arch(name))


def test_replay_refuses_a_drifted_profile_in_one_line_and_goes_on_with_no_probe(steady_host, tmp_path, capsys,
                                                                                tiny_resolves):
    record, folder = steady_host
    profile = tmp_path / "x3" / "host.toml"
    _write_profile(record, profile, flash_factor=3.0)
    with pytest.raises(SystemExit) as stop:
        _replay(tmp_path, folder, profile, "-q")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "flash read rate" in err and "+200%" in err and "--no-probe" in err
    with pytest.raises(SystemExit) as stop:
        _replay(tmp_path, folder, profile, "--no-probe")
    assert stop.value.code == 0 and "probed for drift" not in capsys.readouterr().out


def test_replay_probes_a_matching_profile_and_says_so(steady_host, tmp_path, capsys, tiny_resolves):
    record, folder = steady_host
    profile = tmp_path / "same" / "host.toml"
    _write_profile(record, profile)
    with pytest.raises(SystemExit) as stop:
        _replay(tmp_path, folder, profile)
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "probed for drift: flash read rate" in " ".join(out.split())


def test_replay_on_a_profile_without_a_calibration_record_says_it_was_not_probed(tmp_path, capsys, tiny_resolves):
    folder = tmp_path / "scratch"
    folder.mkdir()
    if storage.filesystem_type(folder) in storage.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary folder is in RAM: cold reads need a disk")
    with pytest.raises(SystemExit) as stop:
        _replay(tmp_path, folder, "wearable")
    assert stop.value.code == 0 and "not probed for drift" in " ".join(capsys.readouterr().out.split())
