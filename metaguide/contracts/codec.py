"""Bytes on the wire: compact JSON and fp16 vectors, for every topic and table."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

__all__ = ["decode_json", "encode_json", "vector_from_b64", "vector_to_b64"]


def vector_to_b64(vec: Any, dtype: type = np.float16) -> str:
    """A vector as base64 of its raw bytes (fp16 by default), for tables and internal topics."""
    return base64.b64encode(np.asarray(vec, dtype=dtype).tobytes()).decode("ascii")


def vector_from_b64(data: str, dtype: type = np.float16) -> np.ndarray:
    """Inverse of :func:`vector_to_b64`: a new float32 array."""
    return np.frombuffer(base64.b64decode(data), dtype=dtype).astype(np.float32)


def encode_json(record: Any) -> bytes:
    """Compact UTF-8 JSON bytes for the wire (orjson: the same bytes as the standard
    library's compact, non-ASCII-escaping output, 5 to 20 times faster on the click path's
    packs)."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def decode_json(raw: bytes | str) -> Any:
    """JSON the worker wrote itself (internal packs, table values): read strictly, fast."""
    return orjson.loads(raw)
