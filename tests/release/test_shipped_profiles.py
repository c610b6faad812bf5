"""Release check of shipped data: every profile in device_profiles/ loads, says where it came from,
and cites a source for every number (docs/device-profiles.md). A new profile is checked by being there."""

import hashlib
import tomllib

import pytest

from cosmosim.inputs.profiles import load_profile, profiles_dir, shipped_profiles


def test_the_profiles_the_readme_uses_ship():
    assert {"phone", "wearable"} <= set(shipped_profiles())


@pytest.mark.parametrize("name", shipped_profiles())
def test_shipped_profile_loads_with_provenance(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.path == (profiles_dir() / f"{name}.toml").resolve()
    assert profile.sha256 == hashlib.sha256(profile.path.read_bytes()).hexdigest()
    assert profile.dram.app_budget_bytes < profile.dram.capacity_bytes


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_number_has_a_real_citation(name):
    data = tomllib.loads((profiles_dir() / f"{name}.toml").read_text())
    for section in ("flash", "dram", "compute", "energy"):
        numeric = {key for key, value in data[section].items() if key != "sources" and not isinstance(value, str)}
        assert set(data[section]["sources"]) == numeric
        for citation in data[section]["sources"].values():
            assert len(citation) > 40  # a sentence naming a source, not a placeholder
            assert "reference-facts" not in citation
