"""A quick probe of this host against its calibrated profile: has a figure drifted since calibration?

    figures = probe(profile, record, model.reader, model.layout.file_bytes, arch)
    check_drift(figures)          # DriftError (one line, exit 2) when a figure drifted

Two of calibrate's own measurements, each repeated PROBE_REPEATS times for PROBE_SECONDS_PER_POINT
per point (a few seconds in all; never --quick's 0.02 s, whose repeats spread by up to 205% here,
so wide a tolerance that a x3 drift went through):

- the flash read rate (`flash_measure._read_rate`) at the profile's largest request size, with its
  queue depth in flight, on the file replay reads (the expert file), against the profile's curve
  at that size;
- GEMV throughput (`compute_measure.gemv_rates`: `measure_matmul`'s figure with one row, its weights
  set up once for all repeats), against `compute.gemv_gflops`.

The probe's value is the median of its repeats, its spread (max - min) / median; a figure has
drifted when |profile / probe - 1| exceeds max(spread, DRIFT_FLOOR), QUICK_DRIFT_FLOOR for a profile
calibrated with --quick (rough figures).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cosmosim.engines.replay.storage import ALIGN, ColdReader
from cosmosim.errors import InputError
from cosmosim.host.compute_measure import gemv_rates
from cosmosim.host.effort import FULL, QUICK
from cosmosim.host.flash_measure import _read_rate
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profiles import DeviceProfile, FlashSpec
from cosmosim.units import KIB

PROBE_REPEATS = 3
PROBE_SECONDS_PER_POINT = 0.2  # seconds per throughput figure, whatever the calibration's effort
DRIFT_FLOOR = 0.25  # a drift within this share of the probe value is never reported
QUICK_DRIFT_FLOOR = 0.5  # the same for a --quick profile, whose figures are one short measurement each


class DriftError(InputError):
    """A profile figure no longer matches this host (one line; the command line exits 2)."""


def _figure(name: str, unit: str, scale: float, profile_value: float, floor: float, values: list[float]) -> dict:
    """A probed figure from its repeats: their median, their spread (max - min) / median, the
    tolerance and the profile's drift from the median."""
    probe_value = float(np.median(values))
    spread = (max(values) - min(values)) / probe_value if probe_value > 0 else 0.0
    return {"figure": name, "unit": unit, "profile": profile_value / scale, "probe": probe_value / scale,
            "probe_runs": [value / scale for value in values], "spread": spread,
            "tolerance": max(spread, floor),
            "drift": profile_value / probe_value - 1 if probe_value > 0 else float("inf")}


def probe_request_bytes(flash: FlashSpec, file_bytes: int) -> int:
    """The probe's read size: the profile's largest request, halved until the file holds a few of them."""
    request = flash.max_request_bytes
    while request > ALIGN and request > file_bytes // 2:
        request //= 2
    return request - request % ALIGN


def probe(profile: DeviceProfile, record: dict, reader: ColdReader, file_bytes: int, arch: Architecture) -> list[dict]:
    """The probed figures (name, unit, profile and probe values, spread, tolerance, drift), measured
    with the effort the profile was calibrated with but for PROBE_SECONDS_PER_POINT per point; the
    caller sets torch's threads (the record's)."""
    effort = QUICK if record.get("effort") == QUICK.name else FULL
    floor = QUICK_DRIFT_FLOOR if effort is QUICK else DRIFT_FLOOR
    effort = replace(effort, seconds_per_point=PROBE_SECONDS_PER_POINT)
    flash = profile.flash
    request, depth = probe_request_bytes(flash, file_bytes), flash.queue_depth
    figures = [_figure(f"flash read rate at {request // KIB} KiB requests, {depth} in flight", "MB/s", 1e6,
                       flash.bandwidth_bytes_per_s(request), floor,
                       [_read_rate(reader, file_bytes, request, depth, effort.seconds_per_point, 100 + index)
                        for index in range(PROBE_REPEATS)])]
    figures.append(_figure("GEMV throughput", "GFLOP/s", 1e9, profile.compute.gemv_flops_per_s, floor,
                           gemv_rates(arch, effort, PROBE_REPEATS)))
    return figures


def drift_message(figure: dict, remedy: str = "pass --recalibrate") -> str:
    return (f"the host profile no longer matches this host: {figure['figure']} is {figure['profile']:.4g} "
            f"{figure['unit']} in the profile but {figure['probe']:.4g} {figure['unit']} now "
            f"({figure['drift']:+.0%}, beyond the probe's tolerance of {figure['tolerance']:.0%}); "
            f"run `cosmosim calibrate` again on an idle machine, or {remedy}")


def check_drift(figures: list[dict], remedy: str = "pass --recalibrate") -> None:
    """DriftError naming the first figure that drifted beyond its tolerance."""
    for figure in figures:
        if not abs(figure["drift"]) <= figure["tolerance"]:
            raise DriftError(drift_message(figure, remedy))


def replay_probe(record: dict | None, notes: list[str]):
    """For `cosmosim replay`: a hook (replay's `before`) that probes a calibrated profile at the record's
    threads and stops on drift, saying in `notes` what it measured; None (with a note) when the profile
    has no calibration record. A profile calibrated for another architecture is not probed (its GEMV
    figure is of other shapes), with a note."""
    from cosmosim.engines.replay.compute import torch_threads

    if record is None:
        notes.append("not probed for drift: the profile was not written by `cosmosim calibrate`")
        return None

    def before(model, scenario) -> None:
        if record.get("arch") != model.arch.name:
            notes.append(f"not probed for drift: the profile was calibrated for {record.get('arch')!r}, "
                         f"the replay is of {model.arch.name!r}")
            return
        with torch_threads(record["threads"]):
            figures = probe(scenario.profile, record, model.reader, model.layout.file_bytes, model.arch)
        check_drift(figures, remedy="pass --no-probe to replay anyway")
        notes.append("probed for drift: " + "; ".join(f"{f['figure']} {f['probe']:.4g} {f['unit']} "
                                                     f"(profile {f['profile']:.4g}, {f['drift']:+.0%})" for f in figures))
    return before
