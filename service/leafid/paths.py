"""Where the shipped model is found."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FILENAME = "leafid.onnx"
INT8_SUFFIX = ".int8.onnx"  # NAME.onnx -> NAME.int8.onnx, the INT8 copy beside a model
#: The INT8 copy; shipped (and then the default) only when the model card's rule passes.
INT8_MODEL_FILENAME = MODEL_FILENAME.removesuffix(".onnx") + INT8_SUFFIX
MODEL_ENV = "LEAFID_MODEL"

_PACKAGE_DIR = Path(__file__).resolve().parent


def int8_copy_path(model: str | os.PathLike[str]) -> Path:
    """Where the INT8 copy of an fp32 model lives: ``NAME.onnx`` -> ``NAME.int8.onnx``."""
    path = Path(model)
    return path.with_name(path.stem + INT8_SUFFIX)


def fp32_of_int8_copy(copy: str | os.PathLike[str]) -> Path | None:
    """The fp32 model an INT8 copy was made from (``NAME.int8.onnx`` -> ``NAME.onnx``).

    Returns None when ``copy`` is not named like an INT8 copy.
    """
    path = Path(copy)
    if not path.name.endswith(INT8_SUFFIX):
        return None
    return path.with_name(path.name.removesuffix(INT8_SUFFIX) + ".onnx")


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
