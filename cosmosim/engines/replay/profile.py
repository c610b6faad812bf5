"""The host profile: where `cosmosim calibrate` writes it, and `host` as a profile name.

The host's profile is a measurement of this machine, so it lives in the user's cache folder, not
among the shipped, cited profiles of the repository.
"""

from __future__ import annotations

from pathlib import Path

from cosmosim.engines.replay.storage import cache_dir
from cosmosim.errors import InputError
from cosmosim.inputs.profiles import DeviceProfile, load_profile

HOST = "host"


def host_profile_path() -> Path:
    return cache_dir() / "profiles" / f"{HOST}.toml"


def resolve_profile(profile: str | Path | DeviceProfile) -> DeviceProfile:
    """A loaded profile: `host` is the calibrated one; anything else goes to `load_profile`."""
    if isinstance(profile, DeviceProfile):
        return profile
    if str(profile) == HOST:
        path = host_profile_path()
        if not path.is_file():
            raise InputError(f"--profile host: no calibrated profile at {path}; run `cosmosim calibrate` first")
        return load_profile(path)
    return load_profile(profile)
