"""Secrets stay secret; the HTTP API bounds its inputs and changes nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metaguide.config import Settings
from metaguide.errors import ConfigError
from metaguide.kafka.broker import free_port
from metaguide.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55w0rd-do-not-print"


def test_settings_and_config_errors_never_show_the_password() -> None:
    settings = Settings.from_env(
        {"METAGUIDE_SECURITY_PROTOCOL": "SASL_SSL", "METAGUIDE_SASL_PASSWORD": SECRET}
    )
    assert settings.sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {"METAGUIDE_SECURITY_PROTOCOL": "BOGUS", "METAGUIDE_SASL_PASSWORD": SECRET}
        )
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


async def test_a_worker_with_sasl_credentials_never_prints_them(
    broker: Any, tmp_path: Path
) -> None:
    """A worker at debug level, with SASL settings the broker cannot satisfy: its logs,
    errors and metrics are grepped for the password."""
    metrics_port = free_port()
    env = {
        **os.environ,
        "METAGUIDE_BROKER_URL": broker.url,
        "METAGUIDE_BROKER_PROFILE": "embedded",
        "METAGUIDE_APP_ID": f"sec-{os.urandom(3).hex()}",
        "METAGUIDE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "METAGUIDE_SASL_MECHANISM": "SCRAM-SHA-256",
        "METAGUIDE_SASL_USERNAME": "metaguide",
        "METAGUIDE_SASL_PASSWORD": SECRET,
        "METAGUIDE_METRICS_PORT": str(metrics_port),
        "METAGUIDE_WEB_PORT": str(free_port()),
        "METAGUIDE_STATE_DIR": str(tmp_path),
        "METAGUIDE_DEVICE": "cpu",
        "METAGUIDE_LOG_LEVEL": "debug",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metaguide.cli", "--log-level", "debug", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        metrics = b""
        try:

            def connecting() -> bool:
                # the Kafka client has tried to authenticate (or given up)
                text = log.read_text(errors="replace").lower()
                return proc.poll() is not None or ("sasl" in text and "aiokafka" in text)

            await wait_until(connecting, 90, "the worker to try its SASL login")
            # the worker may have given up already: its output is what matters then
            with contextlib.suppress(OSError):
                metrics = urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                ).read()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    output = log.read_bytes()
    assert len(output) > 1000  # it did log (at debug level)
    assert SECRET.encode() not in output
    assert SECRET.encode() not in metrics


async def test_the_http_api_only_reads_and_bounds_its_inputs(
    worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    routes = worker.app.web.web_app.router.routes()  # type: ignore[attr-defined]
    methods = {(r.method, r.resource.canonical) for r in routes if r.resource is not None}
    assert methods, "no routes found"
    assert {m for m, _ in methods} <= {"GET", "HEAD", "OPTIONS"}, methods

    base = f"http://127.0.0.1:{settings.web_port}"
    async with aiohttp.ClientSession() as http:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with http.request(
                method, f"{base}/recommendations/myntra/u", data=b"x" * 10_000
            ) as resp:
                assert resp.status == 405, (method, resp.status)
        async with http.get(f"{base}/recommendations/myntra/{'u' * 129}") as resp:
            assert resp.status == 400
        async with http.get(f"{base}/recommendations/myntra/u?k=1000000000") as resp:
            assert resp.status == 400
        async with http.get(f"{base}/recommendations/myntra/{'u' * 20_000}") as resp:
            assert resp.status in (400, 414, 431)  # refused, whichever layer sees it first
