import copy
import hashlib
import math
import shutil
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs.profiles import (
    FlashSpec,
    host_profile_path,
    load_profile,
    profile_from_dict,
    profiles_dir,
    shipped_profiles,
)

SOURCE = "device_profiles/x.toml"


@pytest.fixture
def phone_dict() -> dict:
    return tomllib.loads((profiles_dir() / "phone.toml").read_text())


def flash(*curve: tuple[int, float]) -> FlashSpec:
    return FlashSpec(bandwidth_curve=tuple(curve), latency_s=1e-4, queue_depth=1, max_request_bytes=1 << 20)


# ------------------------------------------------------------------------------ shipped


def test_phone_numbers_in_si_units():
    phone = load_profile("phone")
    assert phone.flash.bandwidth_curve[0] == (4096, 450e6)
    assert phone.flash.latency_s == 80e-6
    assert phone.flash.max_request_bytes == 1 << 20
    assert phone.dram.capacity_bytes == 12 * 1024**3
    assert phone.dram.bandwidth_bytes_per_s == 68.26e9
    assert phone.compute.layer_overhead_s == 30e-6
    assert phone.energy.dram_j_per_byte == pytest.approx(8 * 20e-12)
    assert phone.energy.idle_w == 0.5


def test_wearable_is_slower_and_smaller_than_the_phone():
    phone, wearable = load_profile("phone"), load_profile("wearable")
    assert wearable.flash.bandwidth_bytes_per_s(1 << 20) < phone.flash.bandwidth_bytes_per_s(1 << 20)
    assert wearable.dram.bandwidth_bytes_per_s < phone.dram.bandwidth_bytes_per_s
    assert wearable.dram.app_budget_bytes < phone.dram.app_budget_bytes
    assert wearable.compute.gemv_flops_per_s < phone.compute.gemv_flops_per_s


def test_unknown_profile_name_lists_shipped_names():
    with pytest.raises(InputError, match=r"unknown device profile 'laptop': expected a shipped name \(([^)]*, )?phone, ([^)]*, )?wearable\b"):
        load_profile("laptop")


def test_profiles_dir_env_override(tmp_path, monkeypatch):
    shutil.copy(profiles_dir() / "wearable.toml", tmp_path / "watch.toml")
    monkeypatch.setenv("COSMOSIM_PROFILES_DIR", str(tmp_path))
    assert shipped_profiles() == ["watch"]
    assert load_profile("watch").name == "wearable"
    with pytest.raises(InputError, match=r"\(watch\)"):
        load_profile("phone")


def test_host_is_the_calibrated_profile_once_written(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    with pytest.raises(InputError, match=r"^device profile 'host': not calibrated yet .*run `cosmosim calibrate` first$"):
        load_profile("host")
    assert host_profile_path() == tmp_path / "profiles" / "host.toml"
    host_profile_path().parent.mkdir()
    shutil.copy(profiles_dir() / "wearable.toml", host_profile_path())
    assert load_profile("host").path == host_profile_path().resolve()


# ------------------------------------------------------------------------------ files


def test_load_by_path_and_hash(tmp_path):
    path = tmp_path / "mine.toml"
    shutil.copy(profiles_dir() / "phone.toml", path)
    profile = load_profile(path)
    assert profile.path == path.resolve()
    assert profile.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_profile(str(path)).flash == profile.flash


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_profile(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(InputError, match="broken.toml: not a valid UTF-8 TOML file"):
        load_profile(broken)


def test_profile_from_dict_hashes_its_content(phone_dict):
    first = profile_from_dict(phone_dict, source="calibrated")
    phone_dict["compute"]["gemv_gflops"] = 1
    second = profile_from_dict(phone_dict, source="calibrated")
    assert str(first.path) == "calibrated"
    assert first.sha256 != second.sha256
    assert second.compute.gemv_flops_per_s == 1e9


# ------------------------------------------------------------------------------ validation


def _set(path: str, value):
    def mutate(data: dict) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            data = data[key]
        data[leaf] = value

    return mutate


def _delete(path: str):
    def mutate(data: dict) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            data = data[key]
        del data[leaf]

    return mutate


def _set_curve(*points):
    return _set("flash.bandwidth_curve", [dict(read_kib=size, mb_per_s=bw) for size, bw in points])


INVALID = [
    (_set("flash.latency_us", -3), "flash.latency_us must be > 0, got -3"),
    (_set("flash.latency_us", 0), "flash.latency_us must be > 0, got 0"),
    (_set("flash.latency_us", "fast"), "flash.latency_us must be a number, got 'fast'"),
    (_set("flash.latency_us", float("inf")), "flash.latency_us must be > 0, got inf"),
    (_set("flash.queue_depth", 4.0), "flash.queue_depth must be an integer, got 4.0"),
    (_set("flash.queue_depth", True), "flash.queue_depth must be an integer, got True"),
    (_set("flash.max_request_kib", 0.0001), r"flash.max_request_kib must be between 0.5 and .* \(any real device\), got 0.0001"),
    (_set("dram.capacity_gib", 1e308), r"dram.capacity_gib must be between .* got 1e\+308"),
    (_set("flash.queue_depth", 10**12), "flash.queue_depth must be between 1 and 65536"),
    (_set("dram.bandwidth_gb_per_s", 1e308), "dram.bandwidth_gb_per_s must be between"),
    (_delete("flash.max_request_kib"), "flash.max_request_kib is missing"),
    (_set("flash.block_kib", 4), "flash.block_kib is not a known key"),
    (_set("dram.capacity_gib", -12), "dram.capacity_gib must be > 0, got -12"),
    (_set("dram.app_budget_gib", 13), r"dram.app_budget_gib must be <= dram.capacity_gib \(12\), got 13"),
    (_delete("dram.bandwidth_gb_per_s"), "dram.bandwidth_gb_per_s is missing"),
    (_set("compute.gemm_gflops", [1]), r"compute.gemm_gflops must be a number, got \[1\]"),
    (_set("compute.layer_overhead_us", 0), "compute.layer_overhead_us must be > 0, got 0"),
    (_set("energy.idle_mw", -1.5), "energy.idle_mw must be > 0, got -1.5"),
    (_set("energy.pj_per_flop", None), "energy.pj_per_flop must be a number, got None"),
    (_set_curve((512, 3500), (4, 450)), "flash.bandwidth_curve must be sorted by strictly increasing read_kib, got 4 after 512"),
    (_set_curve((4, 450), (4, 500)), "must be sorted by strictly increasing read_kib, got 4 after 4"),
    (_set_curve(), "flash.bandwidth_curve must be a non-empty array"),
    (_set_curve((4, -450)), r"flash.bandwidth_curve\[0\].mb_per_s must be > 0, got -450"),
    (_set("flash.bandwidth_curve", [{"read_kib": 4}]), r"flash.bandwidth_curve\[0\].mb_per_s is missing"),
    (_set("flash.bandwidth_curve", [{"read_kib": 4, "mb_per_s": 1, "qd": 1}]), r"flash.bandwidth_curve\[0\].qd is not a known key"),
    (_set("flash.bandwidth_curve", [4, 450]), r"flash.bandwidth_curve\[0\] must be a table, got 4"),
    (_delete("flash.sources.latency_us"), "flash.sources.latency_us is missing: every number needs a citation"),
    (_delete("energy.sources.idle_mw"), "energy.sources.idle_mw is missing"),
    (_delete("dram.sources.bandwidth_gb_per_s"), "dram.sources.bandwidth_gb_per_s is missing"),
    (_delete("compute.sources"), "compute.sources is missing"),
    (_set("dram.sources.capacity_gib", "  "), "dram.sources.capacity_gib must be a non-empty citation string"),
    (_set("dram.sources.capacity_gib", 12), "dram.sources.capacity_gib must be a non-empty citation string, got 12"),
    (_set("dram.sources.channels", "LPDDR5X spec"), "dram.sources.channels cites a field that does not exist"),
    (_set("compute.sources", "see the paper"), "compute.sources must be a table"),
    (_set("energy", 3), "energy must be a table, got 3"),
    (_delete("compute"), "compute is missing"),
    (_set("gpu", {}), "gpu is not a known key"),
    (_set("name", ""), "name must be a non-empty string"),
    (_set("description", 7), "description must be a non-empty string, got 7"),
]


@pytest.mark.parametrize("mutate, message", INVALID)
def test_invalid_profiles_raise_one_line_input_errors(phone_dict, mutate, message):
    data = copy.deepcopy(phone_dict)
    mutate(data)
    with pytest.raises(InputError, match=message) as caught:
        profile_from_dict(data, source=SOURCE)
    text = str(caught.value)
    assert text.startswith(f"{SOURCE}: ")
    assert "\n" not in text


def test_invalid_file_error_names_the_file(tmp_path):
    text = (profiles_dir() / "phone.toml").read_text().replace("latency_us = 80", "latency_us = -3")
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"x\.toml: flash\.latency_us must be > 0, got -3$"):
        load_profile(path)


# ------------------------------------------------------------------------------ interpolation


def test_interpolation_is_linear_in_log2_size_and_clamped():
    spec = flash((4096, 100.0), (16384, 300.0), (65536, 400.0))
    assert spec.bandwidth_bytes_per_s(4096) == 100.0
    assert spec.bandwidth_bytes_per_s(8192) == pytest.approx(200.0)  # one doubling of two
    assert spec.bandwidth_bytes_per_s(16384) == 300.0
    assert spec.bandwidth_bytes_per_s(32768) == pytest.approx(350.0)
    assert spec.bandwidth_bytes_per_s(512) == 100.0  # clamped below
    assert spec.bandwidth_bytes_per_s(1 << 30) == 400.0  # clamped above


def test_single_point_curve_is_constant():
    spec = flash((4096, 123.0))
    assert spec.bandwidth_bytes_per_s(1) == spec.bandwidth_bytes_per_s(1 << 40) == 123.0


def test_phone_curve_matches_its_measurements():
    phone = load_profile("phone").flash
    assert phone.bandwidth_bytes_per_s(4 * 1024) == 450e6
    assert phone.bandwidth_bytes_per_s(512 * 1024) == 3.5e9
    # 64 KiB is 4 of the 7 doublings from 4 KiB to 512 KiB
    assert phone.bandwidth_bytes_per_s(64 * 1024) == pytest.approx(450e6 + 4 / 7 * (3.5e9 - 450e6))


def test_request_size_must_be_positive():
    with pytest.raises(ValueError):
        flash((4096, 1.0)).bandwidth_bytes_per_s(0)


@given(size_a=st.integers(1, 1 << 32), size_b=st.integers(1, 1 << 32), name=st.sampled_from(shipped_profiles()))
def test_shipped_curves_are_monotone_and_bounded(size_a, size_b, name):
    curve = load_profile(name).flash
    low, high = sorted((size_a, size_b))
    bw_low, bw_high = curve.bandwidth_bytes_per_s(low), curve.bandwidth_bytes_per_s(high)
    bandwidths = [bw for _, bw in curve.bandwidth_curve]
    assert bw_low <= bw_high * (1 + 1e-12)
    assert min(bandwidths) <= bw_low and bw_high <= max(bandwidths)
    assert math.isfinite(bw_low)


def test_a_profile_extends_another_and_cites_what_it_changes(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text((profiles_dir() / "phone.toml").read_text())
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\nname = "child"\n[dram]\napp_budget_gib = 3\n'
                     '[dram.sources]\napp_budget_gib = "estimate: half the phone budget, 6 / 2 = 3"\n')
    profile, phone = load_profile(child), load_profile("phone")
    assert profile.name == "child" and profile.dram.app_budget_bytes == 3 * 2**30
    assert profile.dram.bandwidth_bytes_per_s == phone.dram.bandwidth_bytes_per_s  # kept from the base
    assert profile.sha256 == hashlib.sha256(child.read_bytes() + base.read_bytes()).hexdigest()
    child.write_text('extends = "base.toml"\n[dram]\napp_budget_gib = 3\n')
    with pytest.raises(InputError, match=r"child\.toml: dram\.sources\.app_budget_gib is missing: a value that "
                                         r"overrides the extended profile's cites its own source"):
        load_profile(child)


def test_a_cycle_of_profiles_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(InputError, match="extends itself"):
        load_profile(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text("extends = 3\n")
    with pytest.raises(InputError, match=r"c\.toml: extends must be a profile name or a \.toml path, got 3"):
        load_profile(tmp_path / "c.toml")
