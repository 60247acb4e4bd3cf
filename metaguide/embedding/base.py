"""What the worker needs of an encoder (a seam: tests use stand-ins)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Embedder"]


class Embedder(Protocol):
    """Embeds texts into unit vectors. One that also has ``token_count(text)`` gets its
    texts batched with others of about the same length (less padding)."""

    model_id: str
    dim: int
    streams: int  # calls that may run at once, each in its own thread

    def embed_many(self, texts: list[str]) -> np.ndarray: ...
