"""Typed settings, read from ``METAGUIDE_*`` environment variables (12-factor).

Two broker profiles: ``embedded`` (the Tansu broker of the demo and tests, with the Faust
settings it needs) and ``kafka`` (a real cluster, Faust's defaults). Secrets are wrapped in
:class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from metaguide.errors import ConfigError

__all__ = ["Secret", "Settings"]


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


EMBEDDED_TRAIN_INTERVAL_S = 600.0


def _default_data_dir() -> str:
    return str(Path(__file__).resolve().parents[1].parent / "shared" / "data")


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the demo and the tools need to know. Env: ``METAGUIDE_<NAME>``."""

    broker_url: str = "kafka://127.0.0.1:9092"
    broker_profile: str = "kafka"  # "embedded" (Tansu) or "kafka"
    app_id: str = "metaguide"
    topic_prefix: str = "metaguide."
    partitions: int = 4
    model: str = "bundled:all-MiniLM-L6-v2"
    device: str = "auto"
    max_length: int = 128
    max_batch_size: int = 32
    max_latency_s: float = 0.05
    # listings between the consumer and their outputs. The micro-batcher groups texts by
    # length within its oldest 8 x max_batch_size (256), so the queue should hold that many
    # beside the batches in the model (up to 4 x 32): with 256 in flight the queue held 192
    # and the model ran 11.3-11.4 padded tokens a Myntra title instead of 11.16
    max_in_flight: int = 384
    # encoder calls side by side, the cores shared out between them; 0 = auto (one per core
    # up to four on a CPU, one on a GPU)
    encoder_streams: int = 0
    top_k: int = 3
    click_batch_size: int = 1000  # clicks read per batch by the click agent
    click_batch_latency_s: float = 0.05
    click_wait_s: float = 30.0  # how long a click waits for its item's listing
    # a changed user profile is changelogged at most once per interval (its clicks are
    # applied at once; their packs are acked once the profile is written)
    profile_write_interval_s: float = 2.0
    recommend_max_k: int = 100
    repeat_min_ratio: float = 0.5  # buying an item again is its norm above this repeat share
    temperature: float = 0.05
    snapshot_dir: str = ""  # the snapshot store folder; "" = <state_dir>/snapshots
    # in-worker training timer: -1 = auto (every 10 min with the embedded broker, off with a
    # real cluster, where `metaguide train` runs as its own workload); 0 = off
    train_interval_s: float = -1.0
    metrics_port: int = 9464
    metrics_host: str = "0.0.0.0"
    web_port: int = 6066
    web_host: str = "0.0.0.0"
    web_advertised_host: str = ""  # how other workers reach this one; "" = web_host
    state_dir: str = "/tmp/metaguide-state"
    data_dir: str = field(default_factory=_default_data_dir)
    log_level: str = "info"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_cafile: str = ""

    def __post_init__(self) -> None:
        if self.broker_profile not in ("embedded", "kafka"):
            raise ConfigError(
                f"METAGUIDE_BROKER_PROFILE is {self.broker_profile!r}: expected embedded or kafka"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"METAGUIDE_MAX_BATCH_SIZE must be >= 1, got {self.max_batch_size}")
        if self.max_latency_s < 0:
            raise ConfigError(f"METAGUIDE_MAX_LATENCY_S must be >= 0, got {self.max_latency_s}")
        if self.encoder_streams < 0:
            raise ConfigError(
                f"METAGUIDE_ENCODER_STREAMS must be >= 0 (0 = auto), got {self.encoder_streams}"
            )
        if self.top_k < 1:
            raise ConfigError(f"METAGUIDE_TOP_K must be >= 1, got {self.top_k}")
        if self.click_batch_size < 1:
            raise ConfigError(
                f"METAGUIDE_CLICK_BATCH_SIZE must be >= 1, got {self.click_batch_size}"
            )
        if self.profile_write_interval_s <= 0:
            raise ConfigError(
                "METAGUIDE_PROFILE_WRITE_INTERVAL_S must be > 0, "
                f"got {self.profile_write_interval_s}"
            )
        if self.click_wait_s <= 0:
            raise ConfigError(f"METAGUIDE_CLICK_WAIT_S must be > 0, got {self.click_wait_s}")
        if not 0 <= self.repeat_min_ratio <= 1:
            raise ConfigError(
                f"METAGUIDE_REPEAT_MIN_RATIO must be in [0, 1], got {self.repeat_min_ratio}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"METAGUIDE_TEMPERATURE must be > 0, got {self.temperature}")
        if self.train_interval_s < 0 and self.train_interval_s != -1:
            raise ConfigError(
                f"METAGUIDE_TRAIN_INTERVAL_S must be >= 0 (or -1, auto), got "
                f"{self.train_interval_s}"
            )
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(f"METAGUIDE_SECURITY_PROTOCOL is {self.security_protocol!r}")

    @property
    def effective_train_interval_s(self) -> float:
        """The in-worker training period; 0 when the worker does not train."""
        if self.train_interval_s == -1:
            return EMBEDDED_TRAIN_INTERVAL_S if self.broker_profile == "embedded" else 0.0
        return self.train_interval_s

    def topic(self, name: str) -> str:
        """Full topic name: prefix + name (``listings``, ``clicks``, ``classifications``...)."""
        return f"{self.topic_prefix}{name}"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``METAGUIDE_<FIELD>`` variables that :meth:`from_env` reads back to these
        settings (secrets in the clear: for a pipe to a child process, never for a log)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f"METAGUIDE_{f.name.upper()}"] = (
                value.get() if isinstance(value, Secret) else str(value)
            )
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``METAGUIDE_<FIELD>`` variables; explicit overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"METAGUIDE_{f.name.upper()}")
            if raw is None:
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            try:
                if kind == "int":
                    values[f.name] = int(raw)
                elif kind == "float":
                    values[f.name] = float(raw)
                elif kind == "Secret":
                    values[f.name] = Secret(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigError(
                    f"METAGUIDE_{f.name.upper()} must be a {kind}, got {raw!r}"
                ) from None
        values.update(overrides)
        return cls(**values)
