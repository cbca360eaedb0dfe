"""trainer/plan/recipe.py: SwAV's two published recipes reproduced exactly, the rules between them, given flags."""

from __future__ import annotations

import argparse

import pytest

from trainer.plan import recipe

IMAGES, CLASSES = recipe.IMAGENET_IMAGES, recipe.IMAGENET_CLASSES
# method notes: batch 4096: lr 4.8 -> 0.0048, 10 warm-up epochs from 0.3, frozen 313 iterations, no queue;
# batch 256: lr 0.6 -> 0.0006, no warm-up, queue 3840 from epoch 15, frozen 5005 iterations; 3000 prototypes.
PUBLISHED = {
    4096: {"base_lr": 4.8, "final_lr": 0.0048, "warmup_epochs": 10, "start_warmup": 0.3, "queue_length": 0,
           "freeze_prototypes_niters": 313, "nmb_prototypes": 3000},
    256: {"base_lr": 0.6, "final_lr": 0.0006, "warmup_epochs": 0, "start_warmup": 0.0, "queue_length": 3840,
          "epoch_queue_starts": 15, "freeze_prototypes_niters": 5005, "nmb_prototypes": 3000},
}


def cfg(**values: object) -> argparse.Namespace:
    defaults = dict(optimizer="lars", epochs=200, feat_dim=128, base_lr=4.8, final_lr=0.0, warmup_epochs=10,
                    start_warmup=0.0, queue_length=0, epoch_queue_starts=15, freeze_prototypes_niters=313,
                    nmb_prototypes=3000)
    return argparse.Namespace(**{**defaults, **values})


@pytest.mark.parametrize("batch", sorted(PUBLISHED))
def test_the_rules_give_both_published_recipes_at_their_batch(batch: int) -> None:
    derived = {d.flag: d.value for d in recipe.derive(cfg(), set(), batch, IMAGES, CLASSES)}
    for flag, published in PUBLISHED[batch].items():
        assert derived[flag] == pytest.approx(published, rel=1e-9, abs=1e-12), flag
    assert set(derived) == set(recipe.DERIVED)


@pytest.mark.parametrize("batch", [32, 64, 128, 256, 384, 512, 768, 1000, 1024, 2048, 3000, 4096, 8192])
def test_properties_between_and_beyond_the_anchors(batch: int) -> None:
    derived = {d.flag: d for d in recipe.derive(cfg(), set(), batch, IMAGES, CLASSES)}
    queue = derived["queue_length"].value
    assert queue % batch == 0 and queue >= 0
    assert abs(queue + batch - recipe.QUEUE_EFFECTIVE) <= batch / 2 or queue == 0  # nearest multiple to 4096
    assert abs(derived["freeze_prototypes_niters"].value * batch - IMAGES) <= batch / 2  # one epoch of images
    assert 0 <= derived["warmup_epochs"].value <= 10
    assert derived["final_lr"].value == pytest.approx(derived["base_lr"].value / 1000)
    extrapolated = "EXTRAPOLATED" in derived["base_lr"].rule
    assert extrapolated == (not 256 <= batch <= 4096)


def test_learning_rate_grows_with_the_batch_slower_than_linearly() -> None:
    rates = [recipe.learning_rates(batch)[0] for batch in (256, 512, 1024, 2048, 4096)]
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    assert all(b / a == pytest.approx(2 ** 0.75) for a, b in zip(rates, rates[1:], strict=False))


def test_a_given_flag_is_kept_and_a_disagreeing_one_warned_with_the_reason() -> None:
    derived = {d.flag: d for d in recipe.derive(cfg(base_lr=4.8, queue_length=3840), {"base_lr", "queue_length"},
                                                 256, IMAGES, CLASSES)}
    lr = derived["base_lr"]
    assert lr.given and lr.value == 4.8 and lr.rule_value == pytest.approx(0.6)
    assert lr.warning and "--base_lr 4.8 (given)" in lr.warning and "0.6" in lr.warning
    assert derived["queue_length"].warning is None  # 3840 is the rule's value at 256
    assert not derived["final_lr"].given and derived["final_lr"].value == pytest.approx(0.0048)  # follows base_lr


def test_small_data_gets_fewer_prototypes_and_a_queue_that_holds_no_image_twice() -> None:
    derived = {d.flag: d.value for d in recipe.derive(cfg(), set(), 256, 2000, 10)}
    assert derived["nmb_prototypes"] == 256  # 10 x 10 classes, raised to 2 x feat_dim
    assert derived["queue_length"] + 256 <= 2000 and derived["queue_length"] % 256 == 0
    assert derived["freeze_prototypes_niters"] == 8  # one epoch: 2000 / 256


def test_adamw_learning_rates_are_kept_not_scaled() -> None:
    derived = {d.flag: d for d in recipe.derive(cfg(optimizer="adamw", base_lr=0.002, final_lr=1e-5), set(), 32,
                                                 1000, 4)}
    assert derived["base_lr"].value == 0.002 and "SwAV publishes LARS recipes only" in derived["base_lr"].rule


def test_rules_that_follow_another_flag_follow_the_users_value() -> None:
    derived = {d.flag: d for d in recipe.derive(cfg(base_lr=2.0, warmup_epochs=0, queue_length=8192),
                                                 {"base_lr", "warmup_epochs", "queue_length"}, 4096, IMAGES, CLASSES)}
    assert derived["final_lr"].value == pytest.approx(0.002)  # the given base_lr / 1000, not 0.0048
    assert derived["start_warmup"].value == 0.0  # no warm-up was given
    assert derived["epoch_queue_starts"].value == 15 and "unused" not in derived["epoch_queue_starts"].rule
