"""The census's estimates (``p2p/census.py``): the network's size from the distances of the peers closest to a
random key, and GPUs and capacity scaled from the records of that sample."""

from __future__ import annotations

import os
import random
import statistics
import time

import pytest
import trio

from hyperion_node.p2p.census import SAMPLE, Census, distance, estimate_size
from hyperion_node.p2p.messages import CapabilityRecord, OfferAd


def closest_in(network: list[bytes], key: bytes, count: int) -> list[bytes]:
    return sorted(network, key=lambda p: distance(key, p))[:count]


@pytest.mark.parametrize("size", [100, 1_000, 20_000])
def test_the_size_of_a_network_is_estimated_within_a_quarter(size: int) -> None:
    rng = random.Random(size)
    network = [rng.randbytes(34) for _ in range(size - 1)]  # every node but the one estimating
    estimates = []
    for _ in range(5):  # the census's median of its last five rounds
        key = rng.randbytes(32)
        estimates.append(estimate_size([distance(key, p) for p in closest_in(network, key, SAMPLE)]))
    assert abs(statistics.median(estimates) / size - 1) < 0.25, estimates


def test_a_network_smaller_than_the_sample_is_counted_exactly() -> None:
    network = [os.urandom(34) for _ in range(6)]
    census = Census(closest=_finder(network), record=_no_record, me=lambda: None, rng=random.Random(6))
    estimate = trio.run(census.sample)
    assert estimate.nodes == 7
    assert census.to_json()["estimate"] is True


def test_gpus_and_capacity_are_scaled_from_the_sample() -> None:
    rng = random.Random(7)
    network = [rng.randbytes(34) for _ in range(999)]
    records = {p: _record(gpus=1 if i % 2 else 0, capacity=4) for i, p in enumerate(network)}

    async def record(peer: bytes) -> CapabilityRecord | None:
        return records[peer]

    census = Census(closest=_finder(network), record=record, me=lambda: _record(gpus=0, capacity=4),
                    rng=random.Random(6))
    for _ in range(5):
        estimate = trio.run(census.sample)
    assert 600 < estimate.nodes < 1500
    # Half the nodes have a GPU, every one offers capacity 4: the figures follow the size estimate.
    assert 0.3 * estimate.nodes < estimate.gpus < 0.7 * estimate.nodes
    assert estimate.capacity["inference/m"] == pytest.approx(4 * estimate.nodes)
    assert census.to_json()["sampled_peers"] == SAMPLE + 1


def _finder(network: list[bytes]):  # type: ignore[no-untyped-def]
    async def closest(key: bytes, count: int) -> list[bytes]:
        return closest_in(network, key, count)

    return closest


async def _no_record(peer: bytes) -> CapabilityRecord | None:
    return None


def _record(*, gpus: int, capacity: int) -> CapabilityRecord:
    offer = OfferAd(runtime="inference", item="m", unit="token", price_per_unit=0.0, capacity=capacity,
                    throughput=10.0)
    return CapabilityRecord(peer_id="x", seq=1, expires_at=time.time() + 60, name="n", addrs=(),
                            hardware={"gpus": [{"name": "g"}] * gpus}, offers=(offer,))
