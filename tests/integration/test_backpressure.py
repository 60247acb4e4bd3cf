"""Events arrive far faster than the encoder embeds them: memory stays bounded, nothing dropped.

The real encoder with one text per batch (about 100 texts/s here) faces 1,000 listings
produced at once. At most ``max_in_flight`` listings may be between the consumer and their
output at any time (the listing path's in-flight limit, which the consumer's drain loop waits
on, so nothing more is fetched meanwhile). A monitor samples
the in-flight count and the encoder queue while the backlog drains.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import pytest

from metaguide.eval.myntra import listing_event, load_myntra
from metaguide.kafka.replay import produce_events
from tests.conftest import read_topic

pytestmark = pytest.mark.integration

LISTINGS = 1000
MAX_IN_FLIGHT = 16


async def test_a_slow_encoder_bounds_work_in_flight_and_loses_nothing(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings(max_in_flight=MAX_IN_FLIGHT, max_batch_size=1)
    worker = await start_worker(settings)
    pool = load_myntra()
    events = [
        {
            **listing_event(pool[i % len(pool)], labelled=False),
            "item_id": f"bp-{i}",
            "event_id": f"bp-{i}",
        }
        for i in range(LISTINGS)
    ]
    peaks = {"in_flight": 0, "queued": 0}
    loop = asyncio.get_running_loop()
    sampling = True

    def sample() -> None:  # every 5 ms on the event loop, between the worker's own steps
        peaks["in_flight"] = max(peaks["in_flight"], worker.listings.in_flight.count)
        peaks["queued"] = max(peaks["queued"], worker.batcher.queued)
        if sampling:
            loop.call_later(0.005, sample)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample()
    await produce_events(broker.bootstrap, settings.topic("listings"), events, key_field="item_id")
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), LISTINGS, 300)
    sampling = False
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024

    assert sorted(r["item_id"] for r in out) == sorted(e["item_id"] for e in events)
    assert 1 < peaks["in_flight"] <= MAX_IN_FLIGHT, peaks  # a backlog formed, stayed bounded
    assert peaks["queued"] <= MAX_IN_FLIGHT, peaks
    print(
        f"\n{LISTINGS} listings against a ~100/s encoder: peak {peaks['in_flight']} in flight "
        f"(cap {MAX_IN_FLIGHT}), peak encoder queue {peaks['queued']}, all classified; "
        f"peak RSS grew {rss_growth_mb:.0f} MB"
    )
