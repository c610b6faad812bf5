"""The flash model's exact timelines, worked by hand."""

import pytest

from cosmosim.device.hardware import ComputeUnit, Flash, idle_flash_read_times
from cosmosim.inputs.profiles import FlashSpec

MIB = 1 << 20


def flat_flash(queue_depth: int, latency_s: float = 1e-4, bandwidth: float = 1e9, max_request: int = MIB) -> FlashSpec:
    return FlashSpec(bandwidth_curve=((4096, bandwidth), (MIB, bandwidth)), latency_s=latency_s,
                     queue_depth=queue_depth, max_request_bytes=max_request)


def test_one_request_costs_latency_plus_transfer():
    assert Flash(flat_flash(1)).read(MIB, 2.0) == pytest.approx(2.0 + 1e-4 + MIB / 1e9)


def test_split_requests_serialise_latency_at_queue_depth_one():
    # 2 MiB = two 1 MiB requests; the second waits for the first's slot, then its own latency.
    transfer = MIB / 1e9
    assert Flash(flat_flash(1)).read(2 * MIB, 0.0) == pytest.approx(2 * (1e-4 + transfer))


def test_requests_in_flight_hide_latency_but_share_bandwidth():
    # Queue depth 2: the second request's latency overlaps the first's transfer.
    transfer = MIB / 1e9
    assert Flash(flat_flash(2)).read(2 * MIB, 0.0) == pytest.approx(1e-4 + 2 * transfer)
    # Two separate reads issued together behave the same way.
    assert idle_flash_read_times(flat_flash(2), MIB, 2) == pytest.approx([1e-4 + transfer, 1e-4 + 2 * transfer])


def test_a_read_issued_later_waits_for_the_channel():
    flash = Flash(flat_flash(4))
    first = flash.read(MIB, 0.0)
    assert flash.read(MIB, 0.0005) == pytest.approx(first + MIB / 1e9)  # latency done at 0.0006 < first end
    assert flash.read(MIB, 1.0) == pytest.approx(1.0 + 1e-4 + MIB / 1e9)  # idle again
    assert flash.stats.bytes == 3 * MIB and flash.stats.requests == 3


def test_bandwidth_depends_on_request_size():
    spec = FlashSpec(bandwidth_curve=((4096, 1e8), (MIB, 1e9)), latency_s=0.0, queue_depth=1, max_request_bytes=MIB)
    assert Flash(spec).read(4096, 0.0) == pytest.approx(4096 / 1e8)


def test_compute_unit_runs_back_to_back():
    unit = ComputeUnit()
    assert unit.run(1.0, 0.5) == (1.0, 1.5)
    assert unit.run(1.2, 0.5) == (1.5, 2.0)  # waits for the unit
    assert unit.run(3.0, 0.1) == (3.0, 3.1)  # waits for its inputs
    assert unit.busy_s == pytest.approx(1.1)
