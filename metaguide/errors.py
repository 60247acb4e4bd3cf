"""Every error metaguide raises on purpose derives from :class:`MetaguideError`."""

__all__ = ["MetaguideError", "SchemaViolation", "ConfigError", "EncoderError", "BrokerError"]


class MetaguideError(Exception):
    """Base of metaguide's own errors."""


class SchemaViolation(MetaguideError):
    """An event on the wire does not match its contract in ``schemas/``.

    ``reason`` is a short code fit for a metric label; the message names the field and value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ConfigError(MetaguideError):
    """A setting is missing or has a value that cannot work."""


class EncoderError(MetaguideError):
    """The encoder could not embed a batch."""


class StateError(MetaguideError):
    """The state a worker found is not one it can serve (another encoder built it)."""


class BrokerError(MetaguideError):
    """The embedded broker could not be started or reached."""
