"""How answers are put to people at a terminal (the upload page words them the same way).

Rows keep their numbers and codes for programs; these sentences are for the table and
``leafid identify``'s text output.
"""

from __future__ import annotations

from typing import Any

from leafid.results import PHOTOS_DISAGREE

UNSURE_STEPS = (
    "The photo may not show a leaf clearly: retake it closer, on a plain background, with a "
    "single leaf filling the frame. Or the species may not be one the model knows "
    "(leafid info lists them)."
)
ONE_PLANT = "send photos of one plant at a time (leafid classify answers each photo on its own)"


def chance(score: float) -> str:
    """A calibrated score as a rounded percentage: ``93%``, ``<1%``, ``>99%``."""
    if score < 0.005:
        return "<1%"
    if score >= 0.995:
        return ">99%"
    return f"{score:.0%}"


def likely(score: float) -> str:
    """A calibrated score in words: ``about 93% likely (calibrated)``."""
    shown = chance(score)
    if shown[0] in "<>":
        return f"{'under' if shown[0] == '<' else 'over'} {shown[1:]} likely (calibrated)"
    return f"about {shown} likely (calibrated)"


def backed_off(answer: dict[str, Any]) -> str:
    """A genus or family answer in words: ``genus Salix (between Salix aurita, ...)``."""
    between = ", ".join(c["display_name"] for c in answer["hesitates_between"])
    return f"{answer['rank']} {answer['best_match']} (no species sure; between {between})"


def why_unknown(answer: dict[str, Any]) -> str:
    """Why an unknown answer (a row or identify result) is unknown, in words."""
    if answer.get("reason_code") == PHOTOS_DISAGREE:
        return "these photos look like different plants"
    top = answer["results"][0]
    return (
        f"no species is likely enough to name; the closest, {top['display_name']}, "
        f"is {likely(top['score'])}"
    )


def next_steps(answer: dict[str, Any]) -> str:
    """What to do about an unknown answer, as a sentence."""
    if answer.get("reason_code") == PHOTOS_DISAGREE:
        return ONE_PLANT.capitalize() + "."
    return UNSURE_STEPS
