"""Two worker processes (``metaguide worker``) in one consumer group on the embedded broker.

Each classifies the listings of its own partitions with prototypes that the other worker may
have learned: the global prototype table must be visible to both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metaguide.broker import free_port
from metaguide.data import few_shot_split, listing_event, load_myntra
from metaguide.replay import produce_events
from tests.conftest import read_topic, wait_until

pytestmark = pytest.mark.integration

CATEGORIES = ["Watches", "Sunglasses", "Tshirts", "Socks", "Handbags", "Casual Shoes", "Ties"]


def scrape(port: int) -> dict[str, float]:
    """Samples of a /metrics page by their full name with labels; empty when not up."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture
def two_workers(broker: Any, tmp_path: Path) -> Iterator[tuple[dict[str, str], list[int]]]:
    run = os.urandom(4).hex()
    ports = [free_port(), free_port()]
    base = {
        **os.environ,
        "METAGUIDE_BROKER_URL": broker.url,
        "METAGUIDE_BROKER_PROFILE": "embedded",
        "METAGUIDE_APP_ID": f"mw-{run}",
        "METAGUIDE_TOPIC_PREFIX": f"mw{run}.",
        "METAGUIDE_DEVICE": "cpu",
    }
    procs = []
    for i, port in enumerate(ports):
        env = {
            **base,
            "METAGUIDE_METRICS_PORT": str(port),
            "METAGUIDE_WEB_PORT": str(free_port()),
            "METAGUIDE_STATE_DIR": str(tmp_path / f"w{i}"),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "metaguide.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield base, ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_every_worker_classifies_with_every_prototype(broker: Any, two_workers: Any) -> None:
    env, ports = two_workers
    listings_topic = env["METAGUIDE_TOPIC_PREFIX"] + "listings"
    consumed = f'metaguide_events_consumed_total{{topic="{listings_topic}"}}'
    await wait_until(lambda: all(scrape(p) for p in ports), 90, "both workers serving metrics")

    split = few_shot_split(
        [x for x in load_myntra() if x.category in CATEGORIES], 5, seed=2, max_test_per_category=4
    )
    await produce_events(
        broker.bootstrap,
        listings_topic,
        [listing_event(x, labelled=True) for x in split.labelled],
        key_field="item_id",
    )

    def both_know_every_category() -> bool:
        samples = [scrape(p) for p in ports]
        return all(
            s.get(consumed, 0) > 0 and s.get("metaguide_category_prototypes") == len(CATEGORIES)
            for s in samples
        )

    # each worker got some listings (partitions are shared) and sees all 7 prototypes
    await wait_until(both_know_every_category, 120, "both workers to see every prototype")
    await produce_events(
        broker.bootstrap,
        listings_topic,
        [listing_event(x, labelled=False) for x in split.test],
        key_field="item_id",
    )
    out = await read_topic(
        broker.bootstrap, env["METAGUIDE_TOPIC_PREFIX"] + "classifications", len(split.test), 120
    )
    truth = {x.item_id: x.category for x in split.test}
    correct = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in out)
    assert correct / len(out) >= 0.8
    emitted = [
        sum(
            v
            for k, v in scrape(p).items()
            if k.startswith("metaguide_classifications_emitted_total")
        )
        for p in ports
    ]
    assert all(e > 0 for e in emitted), emitted
    assert sum(emitted) >= len(split.test)  # more only if a rebalance redelivered some
