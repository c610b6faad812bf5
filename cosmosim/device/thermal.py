"""Sustained-load throttling along the simulated clock: how long the device has been working, and what
fraction of its peak throughput that leaves (the profile's `throttle` section, docs/device-profiles.md).

The load is a single number of seconds, a stand-in for the device's heat: it grows by one second per
second while requests are served, falls by the profile's `cool_rate` seconds per second of idle between
them, never below 0, and the profile's curves map it to fractions of peak compute and flash throughput.
"""

from __future__ import annotations

from cosmosim.inputs.profiles import ThrottleSpec


class SustainedLoad:
    def __init__(self, spec: ThrottleSpec) -> None:
        self.spec = spec
        self._load_at_start_s = 0.0  # the load when the current request began
        self._start_s = 0.0  # when it began

    def start_request(self, now_s: float, idle_s: float) -> None:
        """A request begins at `now_s` after `idle_s` of idle (the previous one ended at now_s - idle_s)."""
        served_s = now_s - idle_s - self._start_s
        self._load_at_start_s = max(0.0, self._load_at_start_s + served_s - self.spec.cool_rate * idle_s)
        self._start_s = now_s

    def load_at(self, now_s: float) -> float:
        """Seconds of sustained load at `now_s`, within the current request."""
        return self._load_at_start_s + now_s - self._start_s
