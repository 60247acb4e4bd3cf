"""The encoder's traced graph gives the model's own vectors; a model that will not trace runs
as it is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from metaguide.embedding.encoder import TransformerEncoder
from metaguide.eval.myntra import load_myntra


@pytest.fixture(scope="module")
def untraced() -> TransformerEncoder:
    return TransformerEncoder(device="cpu", trace=False)


def test_the_traced_graph_gives_the_models_vectors(encoder: Any, untraced: Any) -> None:
    assert encoder.traced and not untraced.traced
    titles = [x.title for x in load_myntra()][:200]
    batches = [titles[:1], titles[1:8], titles[8:40], titles[40:104]]
    batches.append([" ".join(titles[:80])] + titles[:3])  # truncated at max_length, padded
    batches.append(["same length", "equal sizes"])  # no padding at all
    for texts in batches:
        got, want = encoder.embed_many(texts), untraced.embed_many(texts)
        assert got.shape == want.shape == (len(texts), encoder.dim)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_model_the_tracer_cannot_follow_runs_untraced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with caplog.at_level("WARNING", logger="metaguide.encoder"):
        encoder = TransformerEncoder(device="cpu")
    assert not encoder.traced
    assert "runs untraced: cannot trace this model" in caplog.text
    vectors = encoder.embed_many(["a red cotton shirt", "blue jeans"])
    assert vectors.shape == (2, encoder.dim)


def test_token_counts_by_word_are_the_tokenizers_counts_of_the_whole_text(
    untraced: Any,
) -> None:
    tokenizer = untraced._counter.backend_tokenizer

    def whole(text: str) -> int:
        return min(len(tokenizer.encode(text).ids), untraced.max_length)

    titles = [x.title for x in load_myntra()]
    odd = ["", "  spaced   out  ", "a\tb\nc", "Ünïcödé café naïve", "中文字符 test"]
    odd += ["emoji 😀 here", "hy-phen, comma.end", "x" * 600, " ".join(titles[:80])]
    assert untraced._by_word  # the bundled tokenizer splits at whitespace first
    counts = [untraced.token_count(t) for t in titles + odd]
    assert counts == [whole(t) for t in titles + odd]
    assert untraced.token_count(" ".join(titles[:80])) == untraced.max_length  # truncated
    assert len(untraced._word_tokens) < sum(len(t.split()) for t in titles)  # words reused
