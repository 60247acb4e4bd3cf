"""``metaguide eval transfer`` on synthetic platforms: every method on the same episodes."""

from __future__ import annotations

from metaguide.eval.fewshot import TitleSet
from metaguide.eval.myntra import Listing
from metaguide.eval.transfer import METHODS, eval_transfer, format_transfer_table
from tests.unit.test_heads import small
from tests.unit.test_meta import config, synthetic


def titles(seed: int, categories: int, platform: str) -> TitleSet:
    x, labels = synthetic(seed=seed, categories=categories)
    listings = [
        Listing(platform, str(i), f"t{i}", label, {"gender": "Men" if i % 2 else "Women"})
        for i, label in enumerate(labels)
    ]
    return TitleSet(listings, x)


def test_every_method_on_both_targets_and_the_gate_cannot_judge_one_shot() -> None:
    report = eval_transfer(
        titles(0, 60, "myntra"),
        titles(7, 20, "flipkart"),
        shots=(1, 5),
        episodes=4,
        heads=small(episodes=40, val_every=40),
        adapter=config(episodes=40, val_every=40),
    )
    assert set(report["results"]) == {"myntra_held_out_types", "flipkart_unseen_platform"}
    for target in report["results"].values():
        for k in (1, 5):
            row = target[f"{k}-shot"]
            assert all(row[m]["episodes"] == 4 for m in METHODS)
        # one example per category: nothing to judge, raw prototypes are served
        assert target["1-shot"]["gate_choices"] == {"identity": 4}
        assert target["1-shot"]["gate_serves"] == target["1-shot"]["raw_prototypes"]
    assert "Proto-MAML" in format_transfer_table(report)
