"""Errors a person makes get one line that says what is wrong and what to do, exit status 2,
and no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from metaguide.cli import main
from metaguide.kafka.broker import free_port


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("metaguide: ") and err.count("\n") == 1, err
    return err


def test_a_bad_environment_variable_is_named_with_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAGUIDE_PARTITIONS", "many")
    err = run(["snapshot", "list"], capsys)
    assert "METAGUIDE_PARTITIONS" in err and "many" in err


def test_a_missing_data_file_says_where_data_is_read_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run(["eval", "recommend", "--data-dir", str(tmp_path)], capsys)
    assert "no such file" in err and str(tmp_path) in err and "METAGUIDE_DATA_DIR" in err


def test_a_model_that_is_not_installed_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAGUIDE_MODEL", "no-such-org/no-such-model")
    err = run(["eval", "feedback", "--data-dir", str(tmp_path)], capsys)
    assert "'no-such-org/no-such-model' is not installed" in err and "METAGUIDE_MODEL" in err


def test_a_wrong_broker_address_fails_fast_for_the_worker_and_for_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("METAGUIDE_BROKER_URL", f"kafka://{address}")
    err = run(["worker"], capsys)
    assert f"cannot reach a Kafka broker at {address}" in err and "METAGUIDE_BROKER_URL" in err
    events = tmp_path / "clicks.jsonl"
    events.write_text('{"user_id": "u"}\n')
    err = run(["replay", "events", "--topic", "clicks", "--file", str(events)], capsys)
    assert "cannot reach the Kafka broker" in err


def test_a_port_in_use_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = run(
            ["serve", "--embedded", "--state-dir", str(tmp_path), "--broker-port", str(port)],
            capsys,
        )
    assert f"port {port} (broker) is in use" in err and "--broker-port" in err


def test_a_bad_events_file_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "listings.jsonl"
    events.write_text('{"item_id": "a"}\nnot json\n')
    err = run(["replay", "events", "--topic", "listings", "--file", str(events)], capsys)
    assert f"{events}:2: not JSON" in err


def test_platform_groups_with_a_platform_twice_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAGUIDE_PLATFORM_GROUPS", "shop-en,shop-cn;shop-cn,shop-de")
    err = run(["snapshot", "list"], capsys)
    assert "METAGUIDE_PLATFORM_GROUPS" in err and "'shop-cn' is in two groups" in err


def test_only_the_multilingual_e5_model_is_prepared(capsys: pytest.CaptureFixture[str]) -> None:
    err = run(["model", "prepare", "bundled:use-multilingual-v3"], capsys)
    assert "only bundled:multilingual-e5-small is built" in err
