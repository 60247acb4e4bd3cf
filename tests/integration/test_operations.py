"""What Prometheus and Kubernetes see: metrics lint and a real scrape, alert rules, manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metaguide.broker import free_port
from metaguide.data import listing_event
from metaguide.waiting import wait_until_async
from tests.conftest import read_topic, wait_until
from tests.integration.test_click_path import KINDS, _items, _send, click

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"


async def _query(http: aiohttp.ClientSession, port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        async with http.get(url) as resp:
            body = await resp.json()
    except aiohttp.ClientError:
        return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


async def test_a_worker_with_listings_and_clicks_passes_promtool_and_is_scraped(
    broker: Any, worker_settings: Any, start_worker: Any, tmp_path: Path
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()
    labelled = [listing_event(x, labelled=True) for k in KINDS[:2] for x in items[k][:5]]
    unlabelled = [listing_event(x, labelled=False) for k in KINDS[:2] for x in items[k][5:7]]
    await _send(broker, settings.topic("listings"), labelled + unlabelled, "item_id")
    await read_topic(broker.bootstrap, settings.topic("classifications"), len(unlabelled))
    clicks = [click(f"u{n % 3}", e["item_id"], n) for n, e in enumerate(labelled + unlabelled)]
    await _send(broker, settings.topic("clicks"), clicks, "user_id")
    await wait_until(
        lambda: worker.metrics.user_updates._value.get() >= len(clicks), 60, "clicks applied"
    )
    server = worker.metrics.serve(settings.metrics_port, "127.0.0.1")
    prometheus = None
    try:
        import urllib.request

        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        body = urllib.request.urlopen(url).read()
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = body.decode()
        assert 'metaguide_clicks_total{action="click"}' in text
        assert "metaguide_snapshot_swaps_total" in text

        # a real Prometheus server scrapes the worker; its HTTP API returns what we sent
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [" + json.dumps(str(PROMETHEUS / "alerts.yml")) + "]\n"
            "scrape_configs:\n"
            "  - job_name: metaguide-worker\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{settings.metrics_port}']}}]\n"
        )
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        listings = settings.topic("listings")
        wanted = {
            f'sum(metaguide_events_consumed_total{{topic="{listings}"}})': len(labelled)
            + len(unlabelled),
            "sum(metaguide_clicks_total)": len(clicks),
            'up{job="metaguide-worker"}': 1,
        }
        async with aiohttp.ClientSession() as http:

            async def scraped() -> bool:
                for expr, value in wanted.items():
                    if await _query(http, port, expr) != value:
                        return False
                return True

            await wait_until_async(scraped, 60, "Prometheus to scrape the sent event counts")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        server.shutdown()  # type: ignore[attr-defined]


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
    assert shutil.which("promtool")
