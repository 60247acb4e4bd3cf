"""Turning texts into vectors: the transformer encoder and the micro-batcher in front of it."""
