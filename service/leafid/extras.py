"""Imports of optional dependencies (the extras of ``pip install 'leafid[...]'``).

:func:`require_extra` wraps imports that code cannot run without: a package that is
not installed becomes a :class:`~leafid.errors.MissingExtraError`, whose message is the
install hint. :func:`optional` imports a nicety that is left out without it (a progress
bar, HEIC). Only a package that is not installed counts as missing; any other import
failure (a bug in leafid, a broken install) is raised as it is by
:func:`require_extra`, so it is not mistaken for an install hint.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from leafid.errors import MissingExtraError

log = logging.getLogger(__name__)

OWN_PACKAGES = frozenset({"leafid", "leafid_train"})
"""Top-level packages of this distribution: one of them missing is a bug, not an extra."""


def not_installed(exc: BaseException) -> str | None:
    """The third-party module whose absence raised ``exc``; None for any other failure."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    if exc.name.partition(".")[0] in OWN_PACKAGES:
        return None
    return exc.name


@contextmanager
def require_extra(extra: str) -> Iterator[None]:
    """Imports in this block need the ``extra``: a package not installed says how to get it.

    Example::

        with require_extra("service"):
            import uvicorn

    Args:
        extra: The pyproject extra that installs what the block imports, e.g. ``service``.

    Raises:
        MissingExtraError: A package imported in the block is not installed.
    """
    try:
        yield
    except ImportError as exc:
        missing = not_installed(exc)
        if missing is None:
            raise
        raise MissingExtraError(extra, missing) from exc


def optional(module: str) -> ModuleType | None:
    """Import ``module`` if it can be, else None.

    Not installed is logged at debug level; installed but failing to import (a broken
    install) as a warning, as leafid works on without it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not_installed(exc) is None:
            log.warning("optional package %s cannot be imported: %s", module, exc)
        else:
            log.debug("optional package %s is not installed", module)
        return None
