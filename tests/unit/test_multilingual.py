"""The multilingual encoders' pieces: the e5 weights' reader, the model folder's prefix, USE
behind the encoder interface, and the languages evaluation's episodes and centring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metaguide.embedding.e5 import dequantize_q4, q4_weights_file, read_q4_model
from metaguide.eval.languages import (
    all_way_episodes,
    centred,
    cross_language_episodes,
    episode_accuracy,
)


def test_a_q4_block_is_its_scale_times_its_nibbles_less_eight() -> None:
    low = np.arange(16, dtype=np.uint8)
    high = (15 - np.arange(16)).astype(np.uint8)
    block = np.float16(0.5).tobytes() + (low | (high << 4)).astype(np.uint8).tobytes()
    row = dequantize_q4(block * 2, rows=2, cols=32)
    expected = np.concatenate([(low.astype(np.float32) - 8), (high.astype(np.float32) - 8)]) * 0.5
    np.testing.assert_array_equal(row[0], expected)
    np.testing.assert_array_equal(row[1], expected)


def test_the_packaged_weights_read_as_multilingual_e5_small() -> None:
    shape, tensors = read_q4_model(q4_weights_file())
    assert shape["hidden_size"] == 384
    assert shape["num_hidden_layers"] == 12
    assert shape["vocab_size"] == 250037  # XLM-R's vocabulary
    assert shape["max_position_embeddings"] == 512  # positions from 0: a BERT, not an XLM-R
    name, first = next(tensors)
    assert name == "embeddings.word_embeddings.weight"
    assert first.shape == (250037, 384)
    assert np.isfinite(first).all() and 0 < np.abs(first).mean() < 1


def test_a_model_folder_says_the_prefix_its_texts_get(tmp_path: Path) -> None:
    from metaguide.embedding.encoder import TransformerEncoder, default_model_path

    folder = tmp_path / "minilm-with-prefix"
    folder.mkdir()
    for item in Path(default_model_path()).iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "metaguide.json").write_text(json.dumps({"prefix": "query: "}))
    plain = TransformerEncoder(device="cpu", trace=False)
    prefixed = TransformerEncoder("prefixed", path=str(folder), device="cpu", trace=False)
    assert prefixed.prefix == "query: " and prefixed.model_id == "prefixed"
    texts = ["Nike Men Blue Running Shoes", "tea"]
    np.testing.assert_allclose(
        prefixed.embed_many(texts), plain.embed_many(["query: " + t for t in texts]), atol=1e-6
    )
    assert not np.allclose(prefixed.embed_many(texts), plain.embed_many(texts), atol=1e-3)
    assert [prefixed.token_count(t) for t in texts] == [
        plain.token_count("query: " + t) for t in texts
    ]


def test_use_embeds_a_title_near_its_translation() -> None:
    from metaguide.embedding.use import UseEncoder

    encoder = UseEncoder(streams=1)
    x = encoder.embed_many(["儿童牙膏 草莓味", "children's toothpaste, strawberry", "男士运动鞋"])
    assert x.shape == (3, 512) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2]  # the translation is nearer than another product
    assert encoder.embed_many([]).shape == (0, 512)


def test_the_bundled_names_open_their_encoders(tmp_path: Path) -> None:
    from metaguide.embedding.models import open_encoder
    from metaguide.errors import EncoderError

    use = open_encoder("bundled:use-multilingual-v3", streams=2)
    assert (use.model_id, use.dim, use.streams) == ("bundled:use-multilingual-v3", 512, 2)
    with pytest.raises(EncoderError, match="CPU only"):
        open_encoder("bundled:use-multilingual-v3", device="cuda")
    with pytest.raises(EncoderError, match="not installed"):
        open_encoder(str(tmp_path / "no-such-model"))


LABELS = ["a"] * 30 + ["b"] * 25 + ["c"] * 40 + ["d"] * 10 + ["e"] * 22


def test_all_way_episodes_are_the_labels_alone_and_keep_queries_apart() -> None:
    episodes = all_way_episodes(LABELS, episodes=20, shots=5, queries=15, seed=3)
    again = all_way_episodes(LABELS, episodes=20, shots=5, queries=15, seed=3)
    for (s, sy, q, qy), (s2, sy2, q2, qy2) in zip(episodes, again, strict=True):
        assert np.array_equal(s, s2) and np.array_equal(q, q2)
        assert np.array_equal(sy, sy2) and np.array_equal(qy, qy2)
        assert not set(s) & set(q)
        assert len(set(sy)) == 2  # half of the 4 categories with at least 20 titles
        assert {LABELS[i] for i in s} <= {"a", "b", "c", "e"}  # "d" has 10 titles
        for way in set(sy):
            # one category per way, on both sides
            assert len({LABELS[i] for i in s[sy == way]} | {LABELS[i] for i in q[qy == way]}) == 1
            assert (sy == way).sum() == 5 and (qy == way).sum() == 15


def test_cross_language_episodes_use_the_categories_both_sides_have() -> None:
    support = ["a"] * 6 + ["b"] * 6 + ["x"] * 6
    query = ["a"] * 20 + ["b"] * 15 + ["y"] * 20 + ["x"] * 3  # x: too few queries
    (s, sy, q, qy), *_ = cross_language_episodes(support, query, episodes=2, shots=5, queries=15)
    assert {support[i] for i in s} == {"a", "b"} == {query[i] for i in q}
    assert [support[i] for i in s[sy == 0]] == ["a"] * 5


def test_centring_takes_out_a_mean_and_renormalises() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (50, 8)) + 5.0
    out = centred(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-9)
    # each row points where the row less the mean points
    shifted = x - x.mean(axis=0)
    np.testing.assert_allclose(out * np.linalg.norm(shifted, axis=1, keepdims=True), shifted)
    given = np.full(8, 5.0)
    np.testing.assert_allclose(centred(x, given)[0], (x[0] - 5) / np.linalg.norm(x[0] - 5))


def test_episode_accuracy_is_the_nearest_prototype_rate() -> None:
    support = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    sy = np.array([0, 0, 1, 1])
    query = np.array([[1.0, 0.2], [0.2, 1.0], [0.8, 0.7], [0.6, 0.4]])
    assert episode_accuracy(support, sy, query, np.array([0, 1, 1, 0])) == 0.75


def test_platform_means_wait_for_enough_listings_and_count_stored_items() -> None:
    from metaguide.classify.centring import PlatformMeans
    from metaguide.contracts.internal import item_record

    means = PlatformMeans(min_listings=3)
    means.add("a", np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert means.mean("a") is None  # two listings: not a mean to centre on yet
    stored = [item_record("a", None, np.array([1.0, 1.0]), 0.0, "e")]
    stored.append(item_record("b", "x", np.array([0.5, 0.5]), 0.0, "f"))
    assert means.seed(stored) == 2
    np.testing.assert_allclose(means.mean("a"), [2 / 3, 2 / 3], atol=1e-3)  # fp16 storage
    assert means.count("b") == 1 and means.mean("b") is None


def test_groups_are_parsed_and_a_platform_belongs_to_one() -> None:
    from metaguide.classify.centring import parse_groups

    assert parse_groups("en, cn ;de,fr") == {
        "en": ("en", "cn"),
        "cn": ("cn", "en"),
        "de": ("de", "fr"),
        "fr": ("fr", "de"),
    }
    assert parse_groups("") == {}
    with pytest.raises(ValueError, match="two groups"):
        parse_groups("a,b;b,c")


def test_centred_scoring_classifies_one_platform_by_another_platforms_categories() -> None:
    from metaguide.classify.prototypes import CategoryPrototypes

    rng = np.random.default_rng(0)
    e = np.eye(8)
    english, chinese = 2 * e[3], 2 * e[4]  # what each language's titles share
    # three categories, each its own direction; the third's English titles also lean
    # towards the Chinese side of the space (say, transliterated brand names)
    own = {"c0": e[0], "c1": e[1], "c2": e[2] + 0.8 * e[4]}
    protos = CategoryPrototypes(temperature=0.05)
    for name, direction in own.items():
        for n in range(4):
            row = english + direction + rng.normal(0, 0.02, 8)
            protos.update_one("en", name, row, event_id=f"{name}-{n}")
    queries = np.stack([chinese + e[c] + rng.normal(0, 0.02, 8) for c in range(3)])
    means = {"en": english + np.mean(list(own.values()), axis=0), "cn": chinese + e[:3].mean(0)}
    top = protos.nearest_centred(("cn", "en"), queries, means, k=1)
    assert [t[0][0] for t in top] == ["c0", "c1", "c2"]
    # uncentred, the lean towards the Chinese side decides
    plain = protos.nearest_centred(("cn", "en"), queries, {"en": None, "cn": None}, k=1)
    assert [t[0][0] for t in plain] == ["c2", "c2", "c2"]
    # a category both platforms have is one category, its prototype mixed by counts
    protos.update_one("cn", "c0", chinese + e[0], event_id="cn-0")
    names = [n for row in protos.nearest_centred(("cn", "en"), queries, means, k=5) for n, _ in row]
    assert sorted(names) == sorted(["c0", "c1", "c2"] * 3)  # three names per row, no more
    assert protos.nearest_centred(("xx",), queries, {}, k=1) == [[], [], []]
