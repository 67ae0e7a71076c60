import logging
import sys

import pytest

from leafid.errors import MissingExtraError
from leafid.extras import not_installed, optional, require_extra


def test_a_missing_package_becomes_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"'uvicorn'.*pip install 'leafid\[service\]'"):
        with require_extra("service"):
            import uvicorn  # noqa: F401


def test_other_import_failures_are_not_hidden_behind_a_hint() -> None:
    with pytest.raises(ModuleNotFoundError, match="leafid.no_such_module"):
        with require_extra("service"):
            import leafid.no_such_module  # noqa: F401
    with pytest.raises(ImportError, match="no_such_name"):
        with require_extra("service"):
            from leafid.errors import no_such_name  # noqa: F401


def test_not_installed_names_only_third_party_modules() -> None:
    assert not_installed(ModuleNotFoundError("x", name="torch.nn")) == "torch.nn"
    assert not_installed(ModuleNotFoundError("x", name="leafid_train.data")) is None
    assert not_installed(ModuleNotFoundError("x")) is None
    assert not_installed(ImportError("x", name="torch")) is None
    assert not_installed(RuntimeError("x")) is None


def test_optional_module(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert optional("json") is sys.modules["json"]
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with caplog.at_level(logging.DEBUG, logger="leafid.extras"):
        assert optional("tqdm") is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_optional_module_that_fails_to_import_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="leafid.extras"):
        assert optional("leafid.no_such_module") is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "leafid.no_such_module" in caplog.text
