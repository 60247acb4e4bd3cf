"""Embedding a data set's titles once: a cache on disk keyed by model and texts.

Offline evaluations and ``metaguide train --dataset`` embed tens of thousands of titles; the
cache keeps the second run from paying for it again. The key is the sha256 of the model id and
every text, so a different model or a changed data set never reads a stale file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from metaguide.progress import bar, enabled

__all__ = ["cache_key", "embed_cached"]

log = logging.getLogger("metaguide.embeddings")


def cache_key(model_id: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(model_id.encode())
    for text in texts:
        h.update(b"\x00" + text.encode())
    return h.hexdigest()[:32]


def embed_cached(
    embed_many: Callable[[list[str]], np.ndarray],
    model_id: str,
    texts: Sequence[str],
    cache_dir: str | Path | None,
    *,
    batch_size: int = 128,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Embeddings of ``texts`` (float32 rows), read from ``cache_dir`` when computed before."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(model_id, texts)}.npy"
        if path.exists():
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
    started = time.monotonic()
    parts = []
    with bar(len(texts), "embedding", "titles") as shown:
        for i in range(0, len(texts), batch_size):
            parts.append(embed_many(list(texts[i : i + batch_size])))
            shown.update(len(parts[-1]))
            if progress and not enabled() and (i // batch_size) % 40 == 0:
                progress(f"embedded {i + len(parts[-1])}/{len(texts)} titles")
    out = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
    if progress:
        progress(f"embedded {len(texts)} titles in {time.monotonic() - started:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out
