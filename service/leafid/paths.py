"""Where the shipped model is found."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FILENAME = "leafid.onnx"
MODEL_ENV = "LEAFID_MODEL"

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_model_candidates() -> list[Path]:
    """Places the shipped model may be, in order.

    A built wheel carries it as ``leafid/model/leafid.onnx``; an editable install or
    a source checkout has it in the repository's ``model/`` folder.
    """
    return [
        _PACKAGE_DIR / "model" / MODEL_FILENAME,
        _PACKAGE_DIR.parent.parent / "model" / MODEL_FILENAME,
    ]


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
