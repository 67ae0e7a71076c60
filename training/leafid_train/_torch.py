"""Imports of the optional [train] dependencies, with a clear error when one is missing.

This module itself imports only the standard library and :mod:`leafid`, so it can be
imported without torch; the ``require_*`` helpers do the actual import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from leafid.errors import MissingExtraError


def require(module: str, extra: str = "train") -> ModuleType:
    """Import ``module``, or raise a :class:`MissingExtraError` naming the extra.

    Args:
        module: Top-level module name, e.g. ``torch``.
        extra: The pyproject extra that installs it.

    Raises:
        MissingExtraError: The module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(extra, module) from exc


def require_torch() -> ModuleType:
    """Import and return :mod:`torch` (raises :class:`MissingExtraError` if missing)."""
    return require("torch")


def require_timm() -> ModuleType:
    """Import and return :mod:`timm` (raises :class:`MissingExtraError` if missing)."""
    return require("timm")


def require_onnx() -> ModuleType:
    """Import and return :mod:`onnx` (raises :class:`MissingExtraError` if missing)."""
    return require("onnx")
