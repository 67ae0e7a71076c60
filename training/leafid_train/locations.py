"""Where datasets, their manifests and caches are found: the ``LEAFID_*_DIR`` settings."""

from __future__ import annotations

import os
from pathlib import Path

from leafid.errors import InvalidRequestError

DATA_DIR_ENV = "LEAFID_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/datasets"
MANIFEST_DIR_ENV = "LEAFID_MANIFEST_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO_ROOT / "datasets"


def manifest_dir() -> Path:
    """Where dataset manifests live: ``$LEAFID_MANIFEST_DIR`` or the repository's ``datasets/``."""
    return Path(os.environ.get(MANIFEST_DIR_ENV) or MANIFEST_DIR)


def taxonomy_path(name: str) -> Path:
    """The repository's genus and family of a staged dataset's classes (may not exist).

    ``<manifest dir>/<name>.taxonomy.tsv``: columns ``class_slug``, ``genus``,
    ``family`` and ``source`` (where each name comes from).
    """
    return manifest_dir() / f"{name}.taxonomy.tsv"


def data_dir() -> Path:
    """Where bare dataset names are looked up: ``$LEAFID_DATA_DIR`` or ``../shared/datasets``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def resolve_root(name_or_path: str) -> Path:
    """Turn a ``--data`` value into a dataset folder.

    A bare name (no path separator, not an existing folder here) is looked up under
    :func:`data_dir`; anything else is used as a path.

    Raises:
        InvalidRequestError: The folder does not exist.
    """
    candidate = Path(name_or_path).expanduser()
    is_bare = os.sep not in name_or_path and "/" not in name_or_path
    if is_bare and not candidate.is_dir():
        candidate = data_dir() / name_or_path
    if not candidate.is_dir():
        where = f" (looked under {data_dir()}, set {DATA_DIR_ENV})" if is_bare else ""
        raise InvalidRequestError(f"dataset folder not found: {name_or_path}{where}")
    return candidate


CACHE_DIR_ENV = "LEAFID_CACHE_DIR"


def cache_dir() -> Path:
    """Where leafid keeps what it can compute again: ``$LEAFID_CACHE_DIR``, else the user's.

    The user's cache folder is ``$XDG_CACHE_HOME/leafid`` (default ``~/.cache/leafid``).
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "leafid"
