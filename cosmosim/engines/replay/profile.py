"""The profile a replay runs with: `host` (the calibrated one) resolves in `load_profile`, like
every other name, so replay, run and sweeps all accept it."""

from __future__ import annotations

from pathlib import Path

from cosmosim.inputs.profiles import DeviceProfile, host_profile_path, load_profile

__all__ = ["host_profile_path", "resolve_profile"]


def resolve_profile(profile: str | Path | DeviceProfile) -> DeviceProfile:
    """A loaded profile: one given loaded stays as it is; a name or path goes to `load_profile`."""
    return profile if isinstance(profile, DeviceProfile) else load_profile(profile)
