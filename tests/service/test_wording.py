import pytest

from leafid.results import LOW_SCORE, PHOTOS_DISAGREE
from leafid.wording import chance, likely, next_steps, why_unknown


@pytest.mark.parametrize(
    ("score", "shown", "words"),
    [
        (0.93, "93%", "about 93% likely (calibrated)"),
        (0.9991, ">99%", "over 99% likely (calibrated)"),
        (0.001, "<1%", "under 1% likely (calibrated)"),
        (0.565, "56%", "about 56% likely (calibrated)"),
    ],
)
def test_a_score_is_a_calibrated_chance(score: float, shown: str, words: str) -> None:
    assert chance(score) == shown
    assert likely(score) == words


def _answer(code: str) -> dict[str, object]:
    top = {"display_name": "Planta rubra (red plant)", "score": 0.565}
    return {"unknown": True, "reason_code": code, "results": [top]}


def test_unknown_is_explained_with_next_steps_not_thresholds() -> None:
    low = _answer(LOW_SCORE)
    assert why_unknown(low) == (
        "no species is likely enough to name; the closest, Planta rubra (red plant), "
        "is about 56% likely (calibrated)"
    )
    assert "retake it closer" in next_steps(low) and "leafid info" in next_steps(low)
    apart = _answer(PHOTOS_DISAGREE)
    assert why_unknown(apart) == "these photos look like different plants"
    assert "one plant at a time" in next_steps(apart)
    assert not any("threshold" in t for t in (why_unknown(low), next_steps(low)))
