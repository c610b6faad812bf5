"""A timeline of one simulated run, as a Chrome trace (JSON) that Perfetto and chrome://tracing open.

The discrete-event engine appends one (name, layer, start_s, end_s, kind) tuple per operation
when given a timeline (`cosmosim.engines.des.simulate(scenario, timeline)`). This module keeps
the first passes of a run (a whole run is millions of operations) and lays them out on tracks:

    passes      one slice per prefill or decode pass (TTFT, TPOT)
    compute     attention + router (with the per-layer overhead), experts, LM head
    flash 0..n  expert reads, issue to last byte; overlapping reads go on separate lanes

Event format: https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU
("Complete" events, ph = "X", times in microseconds).
"""

from __future__ import annotations

from pathlib import Path

from cosmosim.files import atomic_write_json

DEFAULT_MAX_PASSES = 200
PASS_TRACK, COMPUTE_TRACK, FIRST_FLASH_TRACK = 0, 1, 2


class Timeline(list):
    """The engine's timeline list, which stops recording after `max_passes` whole passes."""

    def __init__(self, max_passes: int | None = DEFAULT_MAX_PASSES) -> None:
        super().__init__()
        self.max_passes = max_passes
        self.passes = 0

    def append(self, event: tuple) -> None:
        if self.max_passes is not None and self.passes >= self.max_passes:
            return
        super().append(event)
        if event[4] == "pass":
            self.passes += 1


def _flash_lanes(events: list[tuple]) -> list[int]:
    """A lane per flash event such that events on one lane never overlap (greedy, by start)."""
    lane_free_s: list[float] = []
    lanes = [0] * len(events)
    for index in sorted(range(len(events)), key=lambda i: events[i][2]):
        start, end = events[index][2], events[index][3]
        lane = next((n for n, free in enumerate(lane_free_s) if free <= start), len(lane_free_s))
        if lane == len(lane_free_s):
            lane_free_s.append(end)
        lane_free_s[lane] = end
        lanes[index] = lane
    return lanes


def _slice(name: str, category: str, start_s: float, end_s: float, track: int, layer: int) -> dict:
    args = {} if layer < 0 else {"layer": layer}
    return {"name": name, "cat": category, "ph": "X", "ts": start_s * 1e6, "dur": (end_s - start_s) * 1e6,
            "pid": 1, "tid": track, "args": args}


def _track_name(track: int, name: str) -> list[dict]:
    return [{"name": "thread_name", "ph": "M", "pid": 1, "tid": track, "args": {"name": name}},
            {"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": track, "args": {"sort_index": track}}]


def chrome_trace(timeline: list[tuple], result: dict) -> dict:
    """The Chrome-trace JSON object of a timeline; `result` (the run's summary) titles it."""
    inputs = result["inputs"]
    title = f"{inputs['arch']} on {inputs['profile']} · policy {inputs['policy']} · cache {inputs['cache_experts']} experts"
    flash = [event for event in timeline if event[4] == "flash"]
    lanes = _flash_lanes(flash)
    events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": title}},
              *_track_name(PASS_TRACK, "passes"), *_track_name(COMPUTE_TRACK, "compute")]
    events += [entry for lane in range(max(lanes, default=-1) + 1) for entry in _track_name(FIRST_FLASH_TRACK + lane, f"flash {lane}")]
    flash_lane = iter(lanes)
    for name, layer, start_s, end_s, kind in timeline:
        if kind == "flash":
            track = FIRST_FLASH_TRACK + next(flash_lane)
        else:
            track = PASS_TRACK if kind == "pass" else COMPUTE_TRACK
        events.append(_slice(name, kind, start_s, end_s, track, layer))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": "cosmosim discrete-event simulation", "passes": sum(e[4] == "pass" for e in timeline),
                          "inputs": inputs}}


def write_timeline(path: str | Path, timeline: list[tuple], result: dict) -> Path:
    """Write the Chrome-trace JSON atomically; open it at https://ui.perfetto.dev."""
    return atomic_write_json(path, chrome_trace(timeline, result))
