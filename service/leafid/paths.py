"""Where the shipped model is found."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FILENAME = "leafid.onnx"
#: The INT8 copy; shipped (and then the default) only when the model card's rule passes.
INT8_MODEL_FILENAME = "leafid.int8.onnx"
MODEL_ENV = "LEAFID_MODEL"

_PACKAGE_DIR = Path(__file__).resolve().parent


def int8_copy_path(model: str | os.PathLike[str]) -> Path:
    """Where the INT8 copy of an fp32 model lives: ``NAME.onnx`` -> ``NAME.int8.onnx``."""
    path = Path(model)
    return path.with_name(path.stem + ".int8.onnx")


def shipped_model_candidates() -> list[Path]:
    """Places the shipped model may be, in order.

    A built wheel carries it in ``leafid/model/``; an editable install or a source
    checkout has it in the repository's ``model/`` folder. In each folder the INT8 copy
    comes first: it is only shipped when it qualified to be the default.
    """
    folders = [_PACKAGE_DIR / "model", _PACKAGE_DIR.parent.parent / "model"]
    return [folder / name for folder in folders for name in (INT8_MODEL_FILENAME, MODEL_FILENAME)]


def default_model_path() -> Path:
    """The model used when none is given: ``$LEAFID_MODEL``, else the shipped model.

    Returns the first existing candidate, or the last one (the repository's ``model/``
    folder) when none exists, so that the error names a place to put it.
    """
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    candidates = shipped_model_candidates()
    for path in candidates:
        if path.is_file():
            return path
    return candidates[-1]
