"""Settings: read from METAGUIDE_* variables, validated, one default each."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaguide.config import EMBEDDED, Settings, default_data_dir
from metaguide.errors import ConfigError


def test_variables_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "METAGUIDE_PARTITIONS": "7",
            "METAGUIDE_MAX_LATENCY_S": "0.25",
            "METAGUIDE_BROKER_PROFILE": "embedded",
            "OTHER": "ignored",
        }
    )
    assert settings.partitions == 7 and settings.max_latency_s == 0.25
    assert settings.effective_train_interval_s == EMBEDDED.train_interval_s
    assert Settings.from_env({}).effective_train_interval_s == 0.0  # a cluster: no timer


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("METAGUIDE_PARTITIONS", "four", "valid integer"),
        ("METAGUIDE_BROKER_PROFILE", "tansu", "'embedded' or 'kafka'"),
        ("METAGUIDE_SECURITY_PROTOCOL", "TLS", "PLAINTEXT"),
        ("METAGUIDE_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("METAGUIDE_REPEAT_MIN_RATIO", "1.5", "less than or equal to 1"),
        ("METAGUIDE_LOG_LEVEL", "loud", "'debug'"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}: ") and repr(value) in message and says in message


def test_a_rule_across_settings_is_explained() -> None:
    with pytest.raises(ConfigError, match="train_interval_s must be >= 0, or -1 for auto"):
        Settings.from_env({"METAGUIDE_TRAIN_INTERVAL_S": "-5"})


def test_the_password_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({"METAGUIDE_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert settings.sasl_password.get_secret_value() == "hunter2"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"METAGUIDE_SASL_PASSWORD": "hunter2", "METAGUIDE_PARTITIONS": "x"})
    assert "hunter2" not in str(info.value)


def test_the_data_folder_defaults_to_the_users_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == str(tmp_path / "metaguide")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == str(Path.home() / ".local" / "share" / "metaguide")


def test_with_validates_the_changes() -> None:
    settings = Settings.from_env({})
    assert settings.with_(partitions=2).partitions == 2
    with pytest.raises(ConfigError, match="METAGUIDE_PARTITIONS"):
        settings.with_(partitions=0)
