"""Model snapshots: safetensors weights plus a JSON manifest, in a store, announced on Kafka.

A snapshot holds the meta-learned adapter and, for each platform that the training round's
gate approved, what that platform is served with: an adapter (the meta-learned one, or the
identity) and fine-tuned heads as residuals on its prototypes (:mod:`metaguide.meta.heads`).
Files (never pickle):

- ``adapter.safetensors``: tensors ``init.u``, ``init.v``, and per platform ``p<i>.u``,
  ``p<i>.v`` and, where it has heads, ``p<i>.dw`` (categories x dim) and ``p<i>.db``;
- ``manifest.json``: version, encoder id and dim, adapter shape, the platforms and their
  tensor prefixes, each platform's head categories (the rows of ``dw``), the training data
  window and config, the evaluation figures (the gate's decision per platform), and the
  sha256 of the weights file.

The announcement on the compacted ``snapshots`` topic (key: the model name) carries the
version, the store URI and the sha256 of the manifest, which in turn pins the weights: a
worker that checks both reads exactly the bytes the trainer wrote, or refuses the snapshot.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from metaguide.errors import MetaguideError
from metaguide.meta.heads import Residuals
from metaguide.meta.maml import Adapter

__all__ = [
    "BASE_MODEL_VERSION",
    "FORMAT",
    "MODEL_NAME",
    "FolderStore",
    "Snapshot",
    "SnapshotError",
    "SnapshotStore",
    "announcement",
    "build_snapshot",
    "load_snapshot",
    "parse_announcement",
    "sha256",
]

FORMAT = "metaguide.snapshot.v2"
READABLE_FORMATS = ("metaguide.snapshot.v1", FORMAT)  # v1: adapters only, no heads
BASE_MODEL_VERSION = "base"  # what outputs say when no snapshot took part
MODEL_NAME = "adapter"
WEIGHTS = "adapter.safetensors"
MANIFEST = "manifest.json"


class SnapshotError(MetaguideError):
    """A snapshot that cannot be used; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Snapshot:
    """A loaded, verified snapshot: what a worker serves with."""

    version: str
    init: Adapter
    platforms: dict[str, Adapter] = field(default_factory=dict)
    heads: dict[str, Residuals] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of the manifest: what the announcement pinned

    def adapter_for(self, platform: str) -> Adapter | None:
        """The platform's adapted weights where the training round's gate found a gain on
        that platform's own validation episodes; None (the identity: raw prototypes) for
        every other platform, one the round could not judge or never saw included."""
        return self.platforms.get(platform)

    def heads_for(self, platform: str) -> Residuals | None:
        """The platform's fine-tuned heads (residuals on its prototypes), if it has any; a
        category without a row is scored by its prototype alone."""
        return self.heads.get(platform)


# --------------------------------------------------------------------------- stores


class SnapshotStore(Protocol):
    """Where snapshot files live. A folder here; an object store fits the same three calls."""

    def put(self, model: str, version: int, files: Mapping[str, bytes]) -> str:
        """Write the files of one version; returns its URI."""
        ...

    def read(self, uri: str, name: str) -> bytes: ...

    def versions(self, model: str) -> list[int]: ...

    def uri(self, model: str, version: int) -> str:
        """Where a stored version is (what an announcement carries)."""
        ...


class FolderStore:
    """``<root>/<model>/<version>/<file>``; a version is written to a temporary folder first
    and renamed into place, so a reader never sees half a snapshot."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, model: str, version: int, files: Mapping[str, bytes]) -> str:
        final = self.root / model / str(version)
        if final.exists():
            raise SnapshotError("version_exists", f"{final} already exists")
        tmp = self.root / model / f".{version}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        tmp.rename(final)
        return final.resolve().as_uri()

    def read(self, uri: str, name: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise SnapshotError("bad_uri", f"a folder store reads file:// URIs, got {uri!r}")
        path = Path(unquote(parsed.path)) / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SnapshotError("unreadable", f"{path}: {exc.strerror or exc}") from exc

    def versions(self, model: str) -> list[int]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def uri(self, model: str, version: int) -> str:
        return (self.root / model / str(version)).resolve().as_uri()


# --------------------------------------------------------------------------- build, load


def build_snapshot(
    init: Adapter,
    platforms: Mapping[str, Adapter],
    *,
    version: int,
    encoder_id: str,
    data_window: Mapping[str, Any],
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    parent: int | None = None,
    heads: Mapping[str, Residuals] | None = None,
) -> dict[str, bytes]:
    """The files of a snapshot, ready for :meth:`SnapshotStore.put`."""
    tensors = {"init.u": init.u, "init.v": init.v}
    prefixes = {}
    head_names = {}
    for i, (platform, adapter) in enumerate(sorted(platforms.items())):
        if (adapter.dim, adapter.rank) != (init.dim, init.rank):
            raise ValueError(f"platform {platform!r}: adapter shape differs from the init")
        prefixes[platform] = f"p{i}"
        tensors[f"p{i}.u"], tensors[f"p{i}.v"] = adapter.u, adapter.v
        res = (heads or {}).get(platform)
        if res is not None:
            if res.dw.shape != (len(res.names), init.dim) or res.db.shape != (len(res.names),):
                raise ValueError(f"platform {platform!r}: heads' shape does not fit")
            tensors[f"p{i}.dw"], tensors[f"p{i}.db"] = res.dw, res.db
            head_names[platform] = list(res.names)
    if set(heads or {}) - set(platforms):
        raise ValueError("heads for a platform without an adapter entry")
    weights = st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()})
    manifest = {
        "format": FORMAT,
        "model": MODEL_NAME,
        "version": version,
        "parent": parent,
        "created_at": time.time(),
        "encoder": {"id": encoder_id, "dim": init.dim},
        "adapter": {"kind": "lowrank-identity", "dim": init.dim, "rank": init.rank},
        "platforms": prefixes,
        "heads": head_names,
        "data_window": dict(data_window),
        "training": dict(training),
        "evaluation": dict(evaluation),
        "weights": {"file": WEIGHTS, "sha256": sha256(weights)},
    }
    return {WEIGHTS: weights, MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode()}


def load_snapshot(
    store: SnapshotStore,
    uri: str,
    manifest_sha256: str,
    *,
    encoder_id: str | None = None,
    dim: int | None = None,
) -> Snapshot:
    """Read, verify and load a snapshot; :class:`SnapshotError` says why one is refused."""
    raw_manifest = store.read(uri, MANIFEST)
    if sha256(raw_manifest) != manifest_sha256:
        raise SnapshotError(
            "checksum_mismatch",
            f"manifest sha256 {sha256(raw_manifest)[:12]} != announced {manifest_sha256[:12]}",
        )
    try:
        manifest = json.loads(raw_manifest)
    except ValueError as exc:
        raise SnapshotError("bad_manifest", str(exc)) from exc
    if manifest.get("format") not in READABLE_FORMATS:
        raise SnapshotError("bad_manifest", f"format {manifest.get('format')!r}, want {FORMAT}")
    weights = store.read(uri, manifest["weights"]["file"])
    if sha256(weights) != manifest["weights"]["sha256"]:
        raise SnapshotError(
            "checksum_mismatch",
            f"weights sha256 {sha256(weights)[:12]} != manifest "
            f"{manifest['weights']['sha256'][:12]}",
        )
    if encoder_id is not None and manifest["encoder"]["id"] != encoder_id:
        raise SnapshotError(
            "encoder_mismatch",
            f"snapshot for encoder {manifest['encoder']['id']!r}, worker runs {encoder_id!r}",
        )
    shape = (manifest["adapter"]["dim"], manifest["adapter"]["rank"])
    if dim is not None and shape[0] != dim:
        raise SnapshotError("shape_mismatch", f"adapter dim {shape[0]}, encoder dim {dim}")
    try:
        tensors = st_load(weights)
    except Exception as exc:  # safetensors raises its own error types
        raise SnapshotError("bad_weights", f"{type(exc).__name__}: {exc}") from exc

    def adapter(prefix: str) -> Adapter:
        try:
            u, v = tensors[f"{prefix}.u"], tensors[f"{prefix}.v"]
        except KeyError as exc:
            raise SnapshotError("bad_weights", f"missing tensor {exc}") from exc
        if u.shape != shape or v.shape != shape:
            raise SnapshotError("shape_mismatch", f"{prefix}: {u.shape}, {v.shape} != {shape}")
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            raise SnapshotError("bad_weights", f"{prefix}: non-finite values")
        return Adapter(u.astype(np.float32), v.astype(np.float32))

    def residuals(platform: str, prefix: str, names: list[str]) -> Residuals:
        try:
            dw, db = tensors[f"{prefix}.dw"], tensors[f"{prefix}.db"]
        except KeyError as exc:
            raise SnapshotError("bad_weights", f"missing tensor {exc}") from exc
        if dw.shape != (len(names), shape[0]) or db.shape != (len(names),):
            raise SnapshotError("shape_mismatch", f"{platform}: heads {dw.shape}, {db.shape}")
        if not (np.isfinite(dw).all() and np.isfinite(db).all()):
            raise SnapshotError("bad_weights", f"{platform}: non-finite head values")
        return Residuals(list(names), dw.astype(np.float32), db.astype(np.float32))

    prefixes = manifest["platforms"]
    platforms = {p: adapter(prefix) for p, prefix in prefixes.items()}
    heads = {}
    for p, names in manifest.get("heads", {}).items():
        if p not in prefixes:
            raise SnapshotError("bad_manifest", f"heads for {p!r}, which has no tensors")
        heads[p] = residuals(p, prefixes[p], names)
    return Snapshot(
        str(manifest["version"]), adapter("init"), platforms, heads, manifest, manifest_sha256
    )


# --------------------------------------------------------------------------- announcements


def announcement(
    version: int, uri: str, manifest: bytes, *, action: str = "publish", metrics: Any = None
) -> dict[str, Any]:
    """The value of a ``snapshots`` record (key: the model name)."""
    return {
        "model": MODEL_NAME,
        "version": version,
        "uri": uri,
        "sha256": sha256(manifest),
        "action": action,
        "metrics": metrics or {},
        "created_at": time.time(),
    }


def parse_announcement(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SnapshotError("bad_announcement", f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SnapshotError("bad_announcement", "not a JSON object")
    for name, kind in (("model", str), ("version", int), ("uri", str), ("sha256", str)):
        if not isinstance(value.get(name), kind):
            raise SnapshotError("bad_announcement", f"{name} missing or not {kind.__name__}")
    return value
