"""Kafka plumbing outside Faust: client options, readers, replay, the embedded broker."""
