from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_data import make_imagefolder

from leafid.errors import InvalidRequestError
from leafid_train.locations import DATA_DIR_ENV, resolve_root


def test_bare_name_resolves_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_imagefolder(tmp_path / "store" / "setA")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    assert resolve_root("setA") == tmp_path / "store" / "setA"
    with pytest.raises(InvalidRequestError, match="not found"):
        resolve_root("nope")
