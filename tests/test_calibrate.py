"""Calibrate: a quick measurement of this host written as a profile in the shipped schema."""

import json
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cosmosim.device.hardware import Flash, idle_flash_read_times
from cosmosim.engines.replay import engine, storage
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.host.calibrate import (
    calibrate,
    load_record,
    matmul_shapes,
    profile_data,
    record_path,
    to_toml,
)
from cosmosim.host.effort import FULL, QUICK
from cosmosim.host.flash_measure import MIN_LATENCY_S, fit_latency
from cosmosim.host.overhead_measure import measure_overheads
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile, profile_from_dict, profiles_dir

TINY = Architecture(name="tiny", n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_hidden=128,
                    n_experts=8, top_k=2, wd_rank=None)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrate")
    if storage.filesystem_type(folder) in storage.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary folder is in RAM: cold reads need a disk")
    messages = []
    profile, path = calibrate(TINY, quick=True, out=folder / "host.toml", directory=folder, threads=1,
                              progress=messages.append)
    return profile, path, messages, folder


def test_quick_calibration_writes_a_loadable_cited_profile(calibrated):
    profile, path, messages, folder = calibrated
    assert load_profile(path).sha256 == profile.sha256 and profile.name == "host"
    data = tomllib.loads(path.read_text())
    for section in ("flash", "dram", "compute"):
        for key, citation in data[section]["sources"].items():
            assert "cosmosim calibrate" in citation or key == "max_request_kib", (section, key)
    assert [size for size, _ in profile.flash.bandwidth_curve] == [4096 * 2**i for i in range(len(profile.flash.bandwidth_curve))]
    assert profile.flash.max_request_bytes <= 1024**2 and profile.flash.queue_depth in (1, 2, 4, 8, 16, 32)
    assert profile.dram.app_budget_bytes <= profile.dram.capacity_bytes
    assert profile.compute.layer_overhead_s > 0 and profile.compute.gemv_flops_per_s > 0
    assert any(m.startswith("flash:") for m in messages) and any(m.startswith("overhead:") for m in messages)
    assert list(folder.glob("cosmosim-*")) == []  # the test file and the overhead replay's experts are gone


def test_the_record_keeps_what_replay_must_share(calibrated):
    _, path, _, _ = calibrated
    record = load_record(path)
    assert record == json.loads(record_path(path).read_text())
    assert (record["arch"], record["dtype"], record["threads"], record["effort"]) == ("tiny", "bfloat16", 1, "quick")
    assert record["flash"]["read_mode"] in ("o_direct", "fadvise")
    assert {shape["in"] for shape in record["gemv_shapes"]} == {64, 128}
    # The profile is a pure function of the record: rebuilding it gives the same file.
    assert to_toml(profile_data(record)) == path.read_text()


def test_the_class_rates_price_a_decoded_token_as_the_overall_rate_does(calibrated):
    """[compute_classes] splits the arithmetic between attention, experts and the LM head, each at its
    own shapes' measured rate; the token's matrices together cost what the one overall rate gives."""
    profile, path, _, _ = calibrated
    record, classes = load_record(path), profile.compute_classes
    assert classes is not None and classes.lm_head.gemm_flops_per_s is None  # the LM head runs as a GEMV only
    assert {shape["class"] for shape in record["gemv_shapes"]} == {"attention", "expert", "lm_head"}
    for kind, rows in (("gemv", 1), ("gemm", record["prompt_tokens"])):
        shapes = record[f"{kind}_shapes"]
        rates = {shape["class"]: getattr(getattr(classes, shape["class"]), f"{kind}_flops_per_s") for shape in shapes}
        by_class = sum(shape["uses_per_token"] * 2 * rows * shape["out"] * shape["in"] / rates[shape["class"]]
                       for shape in shapes if rates[shape["class"]] is not None)
        overall = sum(shape["uses_per_token"] * 2 * rows * shape["out"] * shape["in"] / shape["flops_per_s"]
                      for shape in shapes if rates[shape["class"]] is not None)
        assert by_class == pytest.approx(overall, rel=1e-3)  # the profile's figures keep 4 digits


def test_toml_writer_round_trips_a_shipped_profile():
    data = tomllib.loads((profiles_dir() / "phone.toml").read_text())
    assert tomllib.loads(to_toml(data)) == data
    profile_from_dict(tomllib.loads(to_toml(data)), source="round trip")


@pytest.mark.parametrize("arch", [TINY, get_arch("wearable-moe"), get_arch("phone-wd")])
def test_matmul_shapes_cover_a_decoded_tokens_weight_flops(arch):
    flops = sum(uses * 2 * out * inp for (out, inp), uses in matmul_shapes(arch).items())
    attention = arch.n_layers * 2 * 2 * arch.d_model  # one key: decode_flops_per_token(1) counts it
    assert flops == arch.decode_flops_per_token(1) - attention


def test_the_overhead_is_what_a_step_takes_beyond_its_priced_arithmetic(calibrated, monkeypatch):
    """A delay the time model does not price, added to every layer of the replay, shows up whole in
    the measured per-layer overhead."""
    profile, _, _, folder = calibrated
    record = load_record(folder / "host.toml")
    assert record["overhead_quiet_tokens"] > 0 and record["overhead_measured_token_s"] > 0
    with torch_threads(1):
        base = measure_overheads(TINY, profile, folder, QUICK, 4)["layer_overhead_s"]
    gates, delays = engine.decode_gates, []  # the engine weights a decoded token's experts once per layer

    def slow_gates(*args):
        # Long against the ~1 ms the layer's own work then pays for caches the pause left cold
        # (measured on a 2-vCPU VM: attention+router 2.2 -> 3.4 ms a token after 5 ms pauses).
        start = time.perf_counter()
        time.sleep(0.02)
        delays.append(time.perf_counter() - start)  # what the sleep really took, on a busy machine too
        return gates(*args)

    monkeypatch.setattr(engine, "decode_gates", slow_gates)
    with torch_threads(1):
        slowed = measure_overheads(TINY, profile, folder, QUICK, 4)["layer_overhead_s"]
    assert slowed - base == pytest.approx(float(np.median(delays)), rel=0.25)


def test_the_miss_overhead_is_what_a_miss_takes_beyond_its_reads_and_priced_arithmetic(calibrated, monkeypatch):
    """CPU work the time model does not price, added to every read the replay issues (outside the time
    blocked on reads), shows up whole in the measured per-miss overhead."""
    profile, path, _, folder = calibrated
    record = load_record(path)
    assert record["miss_replay_misses"] > 0 and record["miss_waited_s"] >= 0
    with torch_threads(1):
        base = measure_overheads(TINY, profile, folder, QUICK, 4)
    issue, delays = engine.ReplayEngine._issue_read, []

    def slow_issue(self, *args):
        start = time.perf_counter()
        time.sleep(0.02)
        delays.append(time.perf_counter() - start)
        return issue(self, *args)

    monkeypatch.setattr(engine.ReplayEngine, "_issue_read", slow_issue)
    with torch_threads(1):
        slowed = measure_overheads(TINY, profile, folder, QUICK, 4)
    assert slowed["miss_replay_misses"] == base["miss_replay_misses"]  # the same replay: the same misses
    assert slowed["miss_overhead_s"] - base["miss_overhead_s"] == pytest.approx(float(np.median(delays)), rel=0.25)


def test_the_fitted_latency_makes_the_model_read_a_step_as_long_as_measured(calibrated):
    profile, path, _, _ = calibrated
    flash = load_record(path)["flash"]
    assert flash["step_read_s"] > 0 and flash["expert_read_bytes"] % 4096 == 0 and flash["step_reads"] == TINY.top_k
    spec, nbytes = profile.flash, 3 * 1024**2 + 4096  # four requests of at most 1 MiB
    for n_reads in (1, 2):
        no_wait_s = idle_flash_read_times(replace(spec, latency_s=MIN_LATENCY_S), nbytes, n_reads)[-1]
        for measured_s in (1.5 * no_wait_s, 4 * no_wait_s):
            latency_s = fit_latency(spec, nbytes, n_reads, measured_s)
            assert latency_s > MIN_LATENCY_S
            # the model's last read ends when measured: a plain re-run of the flash recurrence
            device = Flash(replace(spec, latency_s=latency_s))
            assert [device.read(nbytes, 0.0) for _ in range(n_reads)][-1] == pytest.approx(measured_s, rel=1e-9)
        assert fit_latency(spec, nbytes, n_reads, 0.5 * no_wait_s) == MIN_LATENCY_S  # faster than the curve


def test_full_effort_reads_every_curve_size():
    mib = 1024**2
    for expert_file_bytes in (1, 5 * mib, 189 * mib):  # a tiny expert file still gets a curve up to 8 MiB
        assert FULL.flash_file_bytes(expert_file_bytes) // 8 >= 8 * mib
    assert QUICK.seconds_per_point < FULL.seconds_per_point


def test_flash_test_file_is_the_expert_files_size_in_whole_mib():
    mib = 1024**2
    assert FULL.flash_file_bytes(189 * mib + 1) == 190 * mib
    assert FULL.flash_file_bytes(100 * 1024**3) == FULL.max_file_bytes  # capped: a phone's experts are GBs
    assert QUICK.flash_file_bytes(189 * mib) == QUICK.max_file_bytes


def test_warm_storage_reads_the_whole_file_each_pass(tmp_path):
    from cosmosim.engines.replay.storage import ColdReader, warm_storage

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(3 * 1024**2 + 4096))
    offsets = []
    with ColdReader(path) as reader:
        read_into = reader.read_into
        reader.read_into = lambda buffer, offset: offsets.append(offset) or read_into(buffer, offset)
        warm_storage(reader, path.stat().st_size, passes=2)
    assert offsets == [0, 1024**2, 2 * 1024**2, 3 * 1024**2] * 2


def test_default_output_is_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert host_profile_path() == tmp_path / "cache" / "profiles" / "host.toml"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert host_profile_path() == tmp_path / "xdg" / "cosmosim" / "profiles" / "host.toml"


@pytest.mark.parametrize("kwargs, message", [
    ({"out": "profile.txt"}, "expected a .toml path"),
    ({"threads": 0}, "--threads"),
    ({"scale": 0}, "--scale"),
    ({"directory": "missing-folder"}, "not an existing folder"),
])
def test_bad_calibration_input(tmp_path, kwargs, message):
    for key in ("out", "directory"):
        if key in kwargs:
            kwargs[key] = tmp_path / kwargs[key]
    kwargs.setdefault("out", tmp_path / "host.toml")
    with pytest.raises(InputError, match=message):
        calibrate(TINY, quick=True, **kwargs)


def test_calibration_refuses_a_filesystem_in_ram(tmp_path):
    shm = Path("/dev/shm")
    if storage.filesystem_type(shm) not in storage.MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    with pytest.raises(InputError, match="filesystem in RAM"):
        calibrate(TINY, quick=True, out=tmp_path / "host.toml", directory=shm)
    assert not (tmp_path / "host.toml").exists() and list(shm.glob("cosmosim-*")) == []
