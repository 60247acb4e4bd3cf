"""Snapshot files, the folder store, verification and refusal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from metaguide.meta.heads import Residuals
from metaguide.meta.maml import Adapter
from metaguide.meta.snapshots import (
    MANIFEST,
    MODEL_NAME,
    WEIGHTS,
    FolderStore,
    SnapshotError,
    announcement,
    build_snapshot,
    load_snapshot,
    parse_announcement,
    sha256,
)


def trained(dim: int = 8, rank: int = 2, seed: int = 0) -> Adapter:
    gen = np.random.default_rng(seed)
    return Adapter(
        gen.standard_normal((dim, rank)).astype(np.float32),
        gen.standard_normal((dim, rank)).astype(np.float32),
    )


def heads() -> Residuals:
    gen = np.random.default_rng(9)
    return Residuals(
        ["boots", "hats", "scarves"],
        gen.standard_normal((3, 8)).astype(np.float32),
        gen.standard_normal(3).astype(np.float32),
    )


def publish(store: FolderStore, version: int = 1) -> dict[str, object]:
    files = build_snapshot(
        trained(),
        {"shop-a": trained(seed=1), "shop-b": Adapter.identity(8, 2)},
        heads={"shop-a": heads()},
        version=version,
        encoder_id="enc",
        data_window={"examples": 10},
        training={"rank": 2},
        evaluation={"meta_val_accuracy": 0.9},
    )
    uri = store.put(MODEL_NAME, version, files)
    return announcement(version, uri, files[MANIFEST])


def test_round_trip_keeps_every_weight_and_the_platforms(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    ann = parse_announcement(json.dumps(publish(store)).encode())
    snap = load_snapshot(store, ann["uri"], ann["sha256"], encoder_id="enc", dim=8)
    assert snap.version == "1"
    np.testing.assert_array_equal(snap.init.u, trained().u)
    np.testing.assert_array_equal(snap.adapter_for("shop-a").v, trained(seed=1).v)
    assert snap.adapter_for("unknown-shop") is None  # the identity: not judged, not adapted
    got = snap.heads_for("shop-a")
    assert got is not None and got.names == heads().names
    np.testing.assert_array_equal(got.dw, heads().dw)
    np.testing.assert_array_equal(got.db, heads().db)
    assert snap.heads_for("shop-b") is None and snap.adapter_for("shop-b").is_identity()
    assert snap.heads_for("unknown-shop") is None
    assert json.loads((tmp_path / MODEL_NAME / "1" / MANIFEST).read_bytes())["heads"] == {
        "shop-a": heads().names
    }
    assert store.versions(MODEL_NAME) == [1]
    with pytest.raises(SnapshotError, match="version_exists"):
        publish(store)


@pytest.mark.parametrize("target", [WEIGHTS, MANIFEST])
def test_a_tampered_file_is_refused(tmp_path: Path, target: str) -> None:
    store = FolderStore(tmp_path)
    ann = publish(store)
    path = tmp_path / MODEL_NAME / "1" / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as err:
        load_snapshot(store, str(ann["uri"]), str(ann["sha256"]))
    assert err.value.reason == "checksum_mismatch"


def test_wrong_encoder_and_missing_files_are_refused(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    ann = publish(store)
    with pytest.raises(SnapshotError, match="encoder_mismatch"):
        load_snapshot(store, str(ann["uri"]), str(ann["sha256"]), encoder_id="other")
    with pytest.raises(SnapshotError, match="shape_mismatch"):
        load_snapshot(store, str(ann["uri"]), str(ann["sha256"]), dim=384)
    (tmp_path / MODEL_NAME / "1" / WEIGHTS).unlink()
    with pytest.raises(SnapshotError, match="unreadable"):
        load_snapshot(store, str(ann["uri"]), str(ann["sha256"]))


def test_weights_file_is_safetensors_pinned_by_the_manifest(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    publish(store)
    folder = tmp_path / MODEL_NAME / "1"
    manifest = json.loads((folder / MANIFEST).read_text())
    weights = (folder / WEIGHTS).read_bytes()
    assert manifest["weights"]["sha256"] == sha256(weights)
    header_len = int.from_bytes(weights[:8], "little")  # safetensors: u64 header size, JSON
    header = json.loads(weights[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == {
        *("init.u", "init.v", "p0.u", "p0.v", "p0.dw", "p0.db", "p1.u", "p1.v")
    }
    assert header["p0.dw"]["shape"] == [3, 8] and header["p0.db"]["shape"] == [3]
    assert manifest["platforms"] == {"shop-a": "p0", "shop-b": "p1"}
    assert manifest["adapter"] == {"kind": "lowrank-identity", "dim": 8, "rank": 2}


@pytest.mark.parametrize(
    "raw, reason",
    [(b"{", "not JSON"), (b"[]", "not a JSON object"), (b'{"model": "adapter"}', "version")],
)
def test_bad_announcements_say_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(SnapshotError, match=reason):
        parse_announcement(raw)


def test_a_truncated_weights_file_is_refused(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    ann = publish(store)
    path = tmp_path / MODEL_NAME / "1" / WEIGHTS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SnapshotError, match="checksum_mismatch"):
        load_snapshot(store, str(ann["uri"]), str(ann["sha256"]))


def test_a_consistent_snapshot_with_bad_tensors_is_refused(tmp_path: Path) -> None:
    """Checksums right (the trainer wrote it), content wrong: shapes and values are checked."""
    bad = Adapter(np.full((8, 2), np.nan, dtype=np.float32), trained().v)
    files = build_snapshot(
        bad, {}, version=1, encoder_id="enc", data_window={}, training={}, evaluation={}
    )
    uri = FolderStore(tmp_path).put(MODEL_NAME, 1, files)
    with pytest.raises(SnapshotError, match="bad_weights"):
        load_snapshot(FolderStore(tmp_path), uri, sha256(files[MANIFEST]))


def test_heads_that_do_not_fit_are_refused_when_built_and_when_loaded(tmp_path: Path) -> None:
    wrong = Residuals(["a", "b"], np.zeros((2, 5), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="heads' shape"):
        build_snapshot(
            trained(),
            {"shop": trained()},
            heads={"shop": wrong},
            version=1,
            encoder_id="enc",
            data_window={},
            training={},
            evaluation={},
        )
    files = build_snapshot(
        trained(),
        {"shop": trained()},
        heads={"shop": heads()},
        version=1,
        encoder_id="enc",
        data_window={},
        training={},
        evaluation={},
    )
    manifest = json.loads(files[MANIFEST])
    manifest["heads"]["shop"] = ["only-one"]  # rows named do not match the tensor's
    files[MANIFEST] = json.dumps(manifest).encode()
    uri = FolderStore(tmp_path).put(MODEL_NAME, 1, files)
    with pytest.raises(SnapshotError, match="shape_mismatch"):
        load_snapshot(FolderStore(tmp_path), uri, sha256(files[MANIFEST]))


def test_no_pickle_anywhere_in_the_code() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("metaguide/**/*.py"), *root.glob("workers/**/*.py")]
    assert sources
    # pickle itself, torch's pickle-based loader, numpy loading with pickles allowed, and
    # numpy loading at all outside the evaluation's own cache of float arrays
    banned = re.compile(r"import\s+pickle|torch\.load\s*\(|allow_pickle\s*=\s*True")
    np_load = re.compile(r"np\.load\s*\(")
    for path in sources:
        text = path.read_text()
        cache = path.relative_to(root).as_posix() == "metaguide/embedding/cache.py"
        found = banned.search(text) or (not cache and np_load.search(text))
        assert not found, f"{path.name}: {found and found.group()}"
