"""``metaguide serve --embedded``: the embedded broker and one worker, running until stopped.

For a person trying metaguide on their own machine: it starts the broker on a fixed port,
loads the state a previous run saved in the state folder (or, the first time, replays the
carried samples: Myntra and Flipkart listings, a few labelled per category, and Online
Retail's products and purchases as clicks), starts one worker with its HTTP API and metrics,
prints what to try next, and runs until Ctrl-C or SIGTERM. Then it stops the worker, saves
the broker's contents and the worker's committed offsets into the state folder
(:mod:`metaguide.kafka.dump`), and exits 0: the next start comes back with what the worker
learned (prototypes, items, user profiles, snapshots).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaguide.config import Settings
from metaguide.errors import BrokerError
from metaguide.eval.myntra import (
    SAMPLE_FILE,
    few_shot_split,
    listing_event,
    load_flipkart,
    load_myntra,
)
from metaguide.eval.retail import SAMPLE_FILE as RETAIL_SAMPLE
from metaguide.eval.retail import (
    SAMPLE_PREFIX,
    click_events,
    listing_events,
    load_online_retail,
)
from metaguide.kafka.broker import EmbeddedBroker
from metaguide.kafka.dump import load_broker, save_broker, saved
from metaguide.kafka.replay import produce_events
from metaguide.waiting import wait_until

__all__ = ["next_steps", "port_free", "serve_embedded"]

SAMPLE_SHOTS = 5
SAMPLE_UNLABELLED = 200  # per platform
FLIPKART_SAMPLE = SAMPLE_FILE.parent / "flipkart_sample.csv.gz"


async def _send_samples(bootstrap: str, settings: Settings, say: Callable[[str], None]) -> int:
    """The carried samples: Myntra and Flipkart listings (a few labelled per category, then
    unlabelled ones), Online Retail's products and its customers' purchases as clicks."""
    listings = []
    for listing_set in (load_myntra(SAMPLE_FILE), load_flipkart(FLIPKART_SAMPLE)):
        split = few_shot_split(listing_set, SAMPLE_SHOTS, seed=0)
        listings += [listing_event(x, labelled=True) for x in split.labelled]
        listings += [listing_event(x, labelled=False) for x in split.test[:SAMPLE_UNLABELLED]]
    retail = load_online_retail(RETAIL_SAMPLE)
    listings += listing_events(retail, prefix=SAMPLE_PREFIX)
    clicks = click_events(retail, prefix=SAMPLE_PREFIX)
    sent = await produce_events(
        bootstrap, settings.topic("listings"), listings, key_field="item_id"
    )
    sent += await produce_events(bootstrap, settings.topic("clicks"), clicks, key_field="user_id")
    say(
        f"sent the carried samples: {len(listings)} listings (Myntra and Flipkart, {SAMPLE_SHOTS}"
        f" labelled per category; Online Retail's products) and {len(clicks)} purchases as"
        " clicks"
    )
    return sent


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def next_steps(settings: Settings, bootstrap: str, state_dir: Path) -> str:
    web = f"http://127.0.0.1:{settings.web_port}"
    env = f"METAGUIDE_BROKER_URL=kafka://{bootstrap}"
    return "\n".join(
        [
            f"metaguide is running: broker {bootstrap}, worker {settings.app_id}",
            f"  state      {state_dir} (saved on Ctrl-C or SIGTERM, loaded on the next start)",
            f"  health     curl {web}/healthz ; curl {web}/readyz",
            f"  metrics    curl http://127.0.0.1:{settings.metrics_port}/metrics",
            f"  recommend  curl '{web}/recommendations/online-retail/12504?k=5'"
            " (a customer of the Online Retail sample; any platform/user works)",
            "  send your own events (JSON lines, one event per line; see schemas/):",
            f"    {env} metaguide replay events --topic listings --file listings.jsonl",
            f"    {env} metaguide replay events --topic clicks --file clicks.jsonl",
            f"    {env} metaguide replay events --topic labels --file labels.jsonl",
            f"  or a data set: {env} metaguide replay myntra-sample",
            "  read what comes out: the topics classifications, recommendations, review-requests",
            "Ctrl-C to stop.",
        ]
    )


async def serve_embedded(
    settings: Settings,
    *,
    state_dir: str | Path,
    broker_port: int = 9092,
    samples: bool = True,
    say: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run until ``stop`` is set (SIGTERM or SIGINT sets it); returns what happened."""
    from workers.app import create_worker
    from workers.ops import readiness
    from workers.run import tune_process

    folder = Path(state_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    dump = folder / "broker"
    for name, port in (
        ("broker", broker_port),
        ("web", settings.web_port),
        ("metrics", settings.metrics_port),
    ):
        if port and not port_free("127.0.0.1", port):
            raise BrokerError(
                f"port {port} ({name}) is in use: stop what holds it, or choose another port"
                f" ({'--broker-port' if name == 'broker' else f'METAGUIDE_{name.upper()}_PORT'})"
            )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    with EmbeddedBroker(port=broker_port) as broker:
        restored = None
        if saved(dump):
            restored = await load_broker(broker.bootstrap, dump)
            say(f"loaded the saved state: {restored['records']} records from {dump}")
        settings = settings.with_(
            broker_url=broker.url, broker_profile="embedded", state_dir=str(folder)
        )
        worker = create_worker(settings)
        tune_process()
        metrics_server = worker.metrics.serve(settings.metrics_port, "127.0.0.1")
        replayed = 0
        try:
            await worker.start()
            await wait_until(
                lambda: all(readiness(worker.ctx).values()), 120, "the worker to be ready"
            )
            if samples and restored is None:
                replayed = await _send_samples(broker.bootstrap, settings, say)
            say(next_steps(settings, broker.bootstrap, folder))
            await stop.wait()
            say("stopping: saving the state")
        finally:
            await worker.stop()
            metrics_server.shutdown()  # type: ignore[attr-defined]
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        saving = time.monotonic()
        manifest = await save_broker(
            broker.bootstrap, dump, [settings.app_id, f"{settings.app_id}-click-router"]
        )
        say(f"saved {manifest['records']} records to {dump} in {time.monotonic() - saving:.1f} s")
    return {
        "restored": restored is not None,
        "replayed": replayed,
        "saved_records": manifest["records"],
        "seconds": time.monotonic() - started,
    }
