"""Typed settings, read from ``METAGUIDE_*`` environment variables (pydantic-settings).

Two broker profiles: ``embedded`` (the Tansu broker of the demo and tests; its Faust and
client constants are :data:`EMBEDDED`) and ``kafka`` (a real cluster, Faust's defaults).
The SASL password is a ``SecretStr``: it never prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metaguide.errors import ConfigError

__all__ = ["EMBEDDED", "EmbeddedProfile", "Settings", "default_data_dir"]

ENV_PREFIX = "METAGUIDE_"


@dataclass(frozen=True)
class EmbeddedProfile:
    """Constants for the embedded broker (Tansu), which holds a JoinGroup for about half the
    session timeout and every fetch for its whole wait; the worker's Faust consumer and its
    click router use the same group timeouts."""

    session_timeout_s: float = 3.0
    heartbeat_interval_s: float = 0.5
    rebalance_timeout_s: float = 3.0
    commit_interval_s: float = 0.5
    producer_linger_s: float = 0.005  # sends share produce requests: each costs the broker
    train_interval_s: float = 600.0  # the in-worker training timer's period


EMBEDDED = EmbeddedProfile()


def default_data_dir() -> str:
    """The per-user data folder: ``$XDG_DATA_HOME/metaguide`` (``~/.local/share/metaguide``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "metaguide")


class Settings(BaseSettings):
    """Everything a worker, the demo and the tools need to know. Env: ``METAGUIDE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    broker_url: str = "kafka://127.0.0.1:9092"
    broker_profile: Literal["embedded", "kafka"] = "kafka"
    app_id: str = "metaguide"
    topic_prefix: str = "metaguide."
    partitions: int = Field(default=4, ge=1)
    model: str = "bundled:all-MiniLM-L6-v2"
    models_dir: str = ""  # where built models are kept; "" = ~/.cache/metaguide/models
    device: str = "auto"
    max_length: int = Field(default=128, ge=8)
    max_batch_size: int = Field(default=32, ge=1)
    max_latency_s: float = Field(default=0.05, ge=0)
    # listings between the consumer and their outputs: the batcher's grouping window
    # (8 x max_batch_size) plus the batches in the model
    max_in_flight: int = Field(default=384, ge=1)
    # encoder calls side by side; 0 = auto (one per core up to four on a CPU, one on a GPU)
    encoder_streams: int = Field(default=0, ge=0)
    top_k: int = Field(default=3, ge=1)
    # centring (metaguide/classify/centring.py): "platform" scores every platform with its
    # mean taken out; groups of platforms that share their categories ("a,b;c,d") are
    # always scored so, against the categories of the whole group
    centring: Literal["off", "platform"] = "off"
    platform_groups: str = ""
    click_batch_size: int = Field(default=1000, ge=1)
    click_batch_latency_s: float = Field(default=0.05, ge=0)
    click_wait_s: float = Field(default=30.0, gt=0)  # how long a click waits for its item's listing
    label_wait_s: float = Field(default=30.0, gt=0)  # how long a label waits for its item's listing
    # a changed user profile is changelogged at most once per interval
    profile_write_interval_s: float = Field(default=2.0, gt=0)
    recommend_max_k: int = Field(default=100, ge=1)
    repeat_min_ratio: float = Field(default=0.5, ge=0, le=1)  # buying again is the norm above this
    temperature: float = Field(default=0.05, gt=0)
    # feedback: review requests a platform may get an hour; the weight of a category's
    # few examples in a listing's review priority; the novelty at which a listing is
    # called novel; candidate categories: members before one is published, and the
    # quantile of the platform's labelled distances that is a candidate's radius
    review_budget_per_hour: float = Field(default=60.0, ge=0)
    review_few_weight: float = Field(default=1.0, ge=0)
    novelty_threshold: float = Field(default=0.9, gt=0, le=1)
    candidate_min_members: int = Field(default=5, ge=1)
    candidate_radius_quantile: float = Field(default=0.25, gt=0, le=1)
    snapshot_dir: str = ""  # the snapshot store folder; "" = <state_dir>/snapshots
    # in-worker training: -1 = auto (on with the embedded broker, off with a cluster, where
    # `metaguide train` runs as its own workload); 0 = off
    train_interval_s: float = -1.0
    train_episodes: int = Field(default=4000, ge=1)  # a training round's meta-episodes at most
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "0.0.0.0"
    web_advertised_host: str = ""  # how other workers reach this one; "" = web_host
    state_dir: str = "/tmp/metaguide-state"
    data_dir: str = Field(default_factory=default_data_dir)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "warning"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str = ""

    @field_validator("platform_groups")
    @classmethod
    def _check_platform_groups(cls, value: str) -> str:
        from metaguide.classify.centring import parse_groups

        parse_groups(value)  # raises ValueError: the error names the setting
        return value

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Each grouped platform's group (itself first), from ``platform_groups``."""
        from metaguide.classify.centring import parse_groups

        return parse_groups(self.platform_groups)

    @model_validator(mode="after")
    def _check_train_interval(self) -> Settings:
        if self.train_interval_s < 0 and self.train_interval_s != -1:
            raise ValueError("train_interval_s must be >= 0, or -1 for auto")
        return self

    def open_encoder(self, **overrides: Any) -> Any:
        """The configured encoder (metaguide/embedding/models.py), on the configured device;
        ``overrides`` are open_encoder's arguments (another ``model``, ``streams``)."""
        from metaguide.embedding.models import open_encoder

        options: dict[str, Any] = {
            "model": self.model,
            "device": self.device,
            "max_length": self.max_length,
            "models_dir": self.models_dir,
        }
        return open_encoder(**(options | overrides))

    @property
    def embedded(self) -> EmbeddedProfile:
        """The embedded broker's constants."""
        return EMBEDDED

    @property
    def effective_train_interval_s(self) -> float:
        """The in-worker training period; 0 when the worker does not train."""
        if self.train_interval_s == -1:
            return EMBEDDED.train_interval_s if self.broker_profile == "embedded" else 0.0
        return self.train_interval_s

    def topic(self, name: str) -> str:
        """Full topic name: prefix + name (``listings``, ``clicks``, ``classifications``...)."""
        return f"{self.topic_prefix}{name}"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some values changed (validated like the originals)."""
        return Settings.from_env({}, **{**self._values(), **changes})

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    def to_env(self) -> dict[str, str]:
        """The ``METAGUIDE_<NAME>`` variables that :meth:`from_env` reads back to these
        settings (secrets in the clear: for a pipe to a child process, never for a log)."""
        out = {}
        for name, value in self._values().items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            out[f"{ENV_PREFIX}{name.upper()}"] = text
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the process's ``METAGUIDE_<NAME>`` variables, or from ``env`` alone
        (then the process's are not read); explicit overrides win. A bad value raises
        :class:`ConfigError` naming the variable and the value."""
        values: dict[str, Any] = {}
        if env is not None:  # every field given: the process environment plays no part
            for name, field in cls.model_fields.items():
                variable = f"{ENV_PREFIX}{name.upper()}"
                if variable in env:
                    values[name] = env[variable]
                else:
                    values[name] = field.get_default(call_default_factory=True)
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """One line per bad setting: the variable, what is wrong, the value given."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        variable = f"{ENV_PREFIX}{name.upper()}"
        if not error["loc"]:  # a rule across settings: the input is all of them
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        shown = "(hidden)" if "password" in name else repr(error.get("input"))[:80]
        lines.append(f"{variable}: {error['msg']} (got {shown})")
    return "; ".join(lines)
