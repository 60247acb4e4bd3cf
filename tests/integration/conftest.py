"""Fixtures of the integration tests: worker processes and their metrics pages."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metaguide.kafka.broker import free_port

__all__ = ["scrape"]


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
def two_workers(
    broker: Any, tmp_path: Path
) -> Iterator[tuple[dict[str, str], list[int], list[int]]]:
    """Two worker processes: (their common env, metrics ports, web ports)."""
    run = os.urandom(4).hex()
    ports = [free_port(), free_port()]
    web_ports = [free_port(), free_port()]
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
            "METAGUIDE_WEB_PORT": str(web_ports[i]),
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
        yield base, ports, web_ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
