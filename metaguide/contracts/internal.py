"""The worker's internal messages: built and read here only, so both ends agree.

- ``category-updates`` (key ``platform\\x1fcategory``): one item's base embedding added to
  (or, after a correction, taken out of) its category's prototype by the category's owner;
  the trainer's input.
- ``clicks-by-item`` (key ``pack``, one partition per item partition): validated clicks,
  packed by the router for the join agent.
- ``user-updates`` (key ``pack``, one partition per user partition): joined clicks, with each
  item's embedding once, for the profile agent.
- ``novel-listings`` (key: platform): listings far from every prototype, with their base
  embedding, for the platform's candidate categories.
- the ``items`` table's value (:class:`Item`, binary): an item's platform, current label, base
  embedding, time, and the event that set what it contributes to a prototype.

Packs are lists of rows, not objects: the click path's cost is per message and per field.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from metaguide.contracts.codec import decode_json, encode_json, vector_from_b64, vector_to_b64

__all__ = [
    "PACK_KEY",
    "PACK_MAX_ROWS",
    "CategoryUpdate",
    "Item",
    "JoinedClick",
    "NovelListing",
    "RoutedClick",
    "chunks",
    "decode_click_pack",
    "decode_user_update_pack",
    "encode_click_pack",
    "encode_user_update_pack",
    "item_record",
]

PACK_KEY = b"pack"
PACK_MAX_ROWS = 500  # with every item's 384-d fp16 embedding: at most about 0.6 MB of JSON


class CategoryUpdate(NamedTuple):
    """An item's base embedding into (``sign`` 1) or out of (-1) its category's prototype
    (float32 on the wire: it is summed). ``event_id`` is unique per update: the owner skips
    one it has applied already."""

    event_id: str
    platform: str
    category: str
    embedding: np.ndarray
    sign: int = 1
    item_id: str | None = None
    nearest_d2: float | None = None  # to the platform's nearest prototype, on arrival

    def encode(self) -> bytes:
        return encode_json(
            {
                "event_id": self.event_id,
                "platform": self.platform,
                "category": self.category,
                "emb": vector_to_b64(self.embedding, np.float32),
                "sign": self.sign,
                "item_id": self.item_id,
                "d2": self.nearest_d2,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> CategoryUpdate:
        """Raises ValueError, KeyError or TypeError on a record that is not one."""
        update = decode_json(raw)
        sign = update.get("sign", 1)
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {sign!r}")
        return cls(
            update["event_id"],
            update["platform"],
            update["category"],
            vector_from_b64(update["emb"], np.float32),
            sign,
            update.get("item_id"),
            update.get("d2"),
        )


class NovelListing(NamedTuple):
    """A listing far from every prototype, on its way to its platform's candidate owner."""

    event_id: str
    platform: str
    item_id: str
    title: str
    embedding: np.ndarray

    @classmethod
    def of(cls, listing: Any, embedding: np.ndarray) -> NovelListing:
        return cls(listing.event_id, listing.platform, listing.item_id, listing.title, embedding)

    def encode(self) -> bytes:
        return encode_json(
            {
                "event_id": self.event_id,
                "platform": self.platform,
                "item_id": self.item_id,
                "title": self.title,
                "emb": vector_to_b64(self.embedding),
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> NovelListing:
        """Raises ValueError, KeyError or TypeError on a record that is not one."""
        d = decode_json(raw)
        emb = vector_from_b64(d["emb"]).astype(np.float32)
        return cls(d["event_id"], d["platform"], d["item_id"], d["title"], emb)


class JoinedClick(NamedTuple):
    """A click joined with its item, on its way to the user's partition."""

    event_id: str
    platform: str
    user_id: str
    item_id: str
    action: str
    ts: float


class RoutedClick(NamedTuple):
    """A valid click on its way to its item's partition, with where it was read from and its
    original bytes (for a dead letter if its item never comes)."""

    event_id: str
    platform: str
    user_id: str
    item_id: str
    action: str
    ts: float
    source_partition: int
    source_offset: int
    raw: str

    def joined(self) -> tuple[Any, ...]:
        """The :class:`JoinedClick` fields, as a plain tuple for the wire."""
        return tuple(self[:6])


def chunks(rows: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """At most PACK_MAX_ROWS rows per pack, so a pack stays under Kafka's 1 MB."""
    for start in range(0, len(rows), PACK_MAX_ROWS):
        yield rows[start : start + PACK_MAX_ROWS]


def encode_click_pack(rows: Sequence[RoutedClick | Sequence[Any]]) -> bytes:
    return encode_json({"clicks": [tuple(row) for row in rows]})


def decode_click_pack(raw: bytes | None) -> list[RoutedClick]:
    """Raises ValueError, KeyError or TypeError on a message that is not a click pack."""
    return [RoutedClick._make(row) for row in decode_json(raw or b"")["clicks"]]


def encode_user_update_pack(
    rows: Sequence[tuple[Any, ...]], embeddings: Mapping[str, str]
) -> bytes:
    """Joined clicks and the base64 fp16 embedding of each of their items, once."""
    return encode_json({"updates": rows, "embs": {row[3]: embeddings[row[3]] for row in rows}})


def decode_user_update_pack(raw: bytes | None) -> tuple[list[JoinedClick], dict[str, str]]:
    """Raises ValueError, KeyError or TypeError on a message that is not a user-update pack."""
    pack = decode_json(raw or b"")
    return [JoinedClick._make(row) for row in pack["updates"]], pack["embs"]


class Item(NamedTuple):
    """The ``items`` table's value: an item's platform, current label, base embedding (fp16
    bytes), listing time, and ``src``, the id of the event that set its label or embedding
    last. The table and its changelog hold it encoded (:meth:`encode`: 1 format byte, the
    small fields as JSON, then the embedding's raw bytes), about 860 bytes for 384
    dimensions against 1,180 as JSON with the embedding in base64."""

    platform: str
    category: str | None
    emb: bytes
    ts: float
    src: str

    @property
    def vector(self) -> np.ndarray:
        """The base embedding as float32."""
        return np.frombuffer(self.emb, dtype="<f2").astype(np.float32)

    def emb_b64(self) -> str:
        """The embedding's base64, as JSON messages carry it."""
        return base64.b64encode(self.emb).decode("ascii")

    def encode(self) -> bytes:
        head = encode_json([self.platform, self.category, self.ts, self.src])
        return _ITEM_FORMAT + struct.pack("<H", len(head)) + head + self.emb

    @classmethod
    def decode(cls, raw: bytes) -> Item:
        """An encoded item, or one written as JSON (the format before this one). Raises
        ValueError, KeyError, TypeError or struct.error on bytes that are neither."""
        if raw[:1] == _ITEM_FORMAT:
            (size,) = struct.unpack_from("<H", raw, 1)
            platform, category, ts, src = decode_json(raw[3 : 3 + size])
            return cls(platform, category, raw[3 + size :], ts, src)
        old = decode_json(raw)
        emb = base64.b64decode(old["emb"])
        return cls(old["platform"], old["category"], emb, old["ts"], old.get("src", ""))


_ITEM_FORMAT = b"\x01"


def item_record(
    platform: str, category: str | None, embedding: np.ndarray | bytes, ts: float, source: str
) -> Item:
    """An item, its base embedding stored in fp16 (``embedding``: a vector, or its fp16
    bytes already), set by the event ``source``."""
    emb = embedding if isinstance(embedding, bytes) else np.asarray(embedding, "<f2").tobytes()
    return Item(platform, category, emb, ts, source)
