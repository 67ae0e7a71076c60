"""The INT8 release rule: a plain function of the comparison and the test metrics."""

from __future__ import annotations

from typing import Any

import pytest

from leafid_train.int8_rule import INT8_RULE, MAX_INT8_TOP1_DROP, Int8Decision, int8_decision


def _compare(val: tuple[float, float], int8_speed: tuple[float, float] = (150, 200)) -> dict:
    return {
        "n": 10,
        "top1_agreement": 0.99,
        "fp32": {"top1": val[0], "images_per_s_b1": 100.0, "images_per_s_b16": 120.0},
        "int8": {
            "top1": val[1],
            "images_per_s_b1": int8_speed[0],
            "images_per_s_b16": int8_speed[1],
        },
    }


def _test(top1: float) -> dict[str, Any]:
    return {"top1": top1}


def test_val_alone_decides_until_both_models_were_evaluated() -> None:
    decision = int8_decision(_compare((0.97, 0.966)))
    assert decision == Int8Decision(
        ships=True, faster=True, val_drop=pytest.approx(0.004), test_drop=None
    )
    # one evaluated model is not enough to judge test
    assert int8_decision(_compare((0.97, 0.966)), _test(0.9), None).test_drop is None


@pytest.mark.parametrize(
    ("test_top1", "ships"),
    [((0.960, 0.958), True), ((0.960, 0.955), True), ((0.960, 0.950), False)],
)
def test_test_drop_over_half_a_point_stops_it(test_top1: tuple[float, float], ships: bool) -> None:
    decision = int8_decision(_compare((0.97, 0.97)), _test(test_top1[0]), _test(test_top1[1]))
    assert decision.ships is ships
    assert decision.test_drop == pytest.approx(test_top1[0] - test_top1[1])


def test_slower_or_worse_on_val_never_ships() -> None:
    assert not int8_decision(_compare((0.97, 0.97), int8_speed=(90, 200))).ships
    assert not int8_decision(_compare((0.97, 0.97), int8_speed=(150, 100))).faster
    assert not int8_decision(_compare((0.97, 0.96))).ships


def test_the_rule_in_words_names_its_threshold() -> None:
    assert MAX_INT8_TOP1_DROP == 0.005
    assert INT8_RULE == (
        "faster at batch 1 and 16, top-1 drop <= 0.5 points on val and, once both models "
        "were evaluated, on test"
    )
