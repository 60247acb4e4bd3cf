"""``metaguide serve --embedded`` as a person runs it: a process, real events, HTTP, SIGTERM,
and a restart on the same state folder that comes back with what it learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metaguide.eval.myntra import SAMPLE_FILE, few_shot_split, load_myntra
from metaguide.kafka.broker import free_port
from metaguide.waiting import wait_until_async

pytestmark = pytest.mark.integration

METAGUIDE = [sys.executable, "-m", "metaguide.cli"]


class Served:
    """One ``metaguide serve --embedded`` process."""

    def __init__(self, state: Path, ports: dict[str, int], log: Path) -> None:
        env = {
            **os.environ,
            "METAGUIDE_WEB_PORT": str(ports["web"]),
            "METAGUIDE_METRICS_PORT": str(ports["metrics"]),
            "METAGUIDE_LOG_LEVEL": "warning",
        }
        self.log = log
        self.out = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *METAGUIDE,
                "serve",
                "--embedded",
                "--no-samples",
                "--state-dir",
                str(state),
                "--broker-port",
                str(ports["broker"]),
            ],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        self.web = f"http://127.0.0.1:{ports['web']}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async def probe() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with http.get(f"{self.web}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until_async(probe, 120, "/readyz to answer 200")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self.out.close()


def replay(ports: dict[str, int], *args: str) -> str:
    env = {**os.environ, "METAGUIDE_BROKER_URL": f"kafka://127.0.0.1:{ports['broker']}"}
    done = subprocess.run(
        [*METAGUIDE, "replay", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def recommendations(http: aiohttp.ClientSession, web: str, user: str) -> Any:
    async with http.get(f"{web}/recommendations/myntra/{user}?k=5") as resp:
        return resp.status, await resp.json()


@pytest.mark.timeout(420)
async def test_serve_keeps_running_answers_over_http_and_comes_back_after_sigterm(
    tmp_path: Path,
) -> None:
    state, log = tmp_path / "state", tmp_path / "serve.log"
    ports = {"broker": free_port(), "web": free_port(), "metrics": free_port()}
    split = few_shot_split(load_myntra(SAMPLE_FILE), 5, seed=0)
    clicked = [x.item_id for x in split.labelled if x.category == "Watches"][:3]
    assert len(clicked) == 3
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text(
        "\n".join(
            json.dumps(
                {
                    "event_id": f"c{i}",
                    "platform": "myntra",
                    "user_id": "ana",
                    "item_id": item,
                    "action": "click",
                    "ts": time.time(),
                }
            )
            for i, item in enumerate(clicked)
        )
    )
    served = Served(state, ports, log)
    try:
        async with aiohttp.ClientSession() as http:
            await served.ready(http)
            sent = int(replay(ports, "myntra-sample", "--max-test", "20").split()[1])
            metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"

            async def stored() -> bool:
                async with http.get(metrics) as resp:
                    text = await resp.text()
                return any(
                    line.startswith("metaguide_item_embeddings") and float(line.split()[-1]) >= sent
                    for line in text.splitlines()
                )

            await wait_until_async(stored, 120, f"the {sent} listings stored")
            assert "sent 3 events" in replay(
                ports, "events", "--topic", "clicks", "--file", str(clicks)
            )
            answer: dict[str, Any] = {}

            async def recommended() -> bool:
                status, body = await recommendations(http, served.web, "ana")
                answer.update(body)
                return status == 200 and body.get("clicks") == 3 and bool(body.get("items"))

            await wait_until_async(recommended, 120, "ana's recommendations after 3 clicks")
            first = [i["item_id"] for i in answer["items"]]
        assert served.terminate() == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "saved" in text and "curl" in text  # it said what to do, and saved

        again = Served(state, ports, log)
        try:
            async with aiohttp.ClientSession() as http:
                await again.ready(http)
                back: dict[str, Any] = {}

                async def restored() -> bool:
                    status, body = await recommendations(http, again.web, "ana")
                    back.update(body)
                    return status == 200 and body.get("clicks") == 3

                # her profile comes back from the saved state: nothing is sent again
                await wait_until_async(restored, 60, "ana's profile after the restart")
                assert [i["item_id"] for i in back["items"]] == first
        finally:
            assert again.terminate() == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
        assert "loaded the saved state" in log.read_text()
    finally:
        for proc in (served.proc, again.proc if "again" in locals() else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
