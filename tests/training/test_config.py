from __future__ import annotations

from pathlib import Path

import pytest

from leafid.errors import InvalidRequestError
from leafid_train.config import TrainConfig


def test_config_round_trip_and_validation(tmp_path: Path) -> None:
    cfg = TrainConfig(data=["a"], out=str(tmp_path), epochs=3, head_epochs=1)
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    with pytest.raises(InvalidRequestError, match="head_epochs"):
        TrainConfig(data=["a"], out="x", epochs=1, head_epochs=2)
    with pytest.raises(InvalidRequestError, match="ood_split"):
        TrainConfig(data=["a"], out="x", ood_split=(0.5, 0.5, 0.0))
    for name in ("loader_processes", "threads", "patience"):
        with pytest.raises(InvalidRequestError, match=name):
            TrainConfig(data=["a"], out="x", **{name: -1})


def test_a_retrained_model_is_versioned_after_its_run_not_as_a_release() -> None:
    assert TrainConfig(data=["a"], out="runs/v1").resolved_model_version() == "0.0.0+v1"
    assert TrainConfig(data=["a"], out="runs/my_run-2/").resolved_model_version() == (
        "0.0.0+my.run.2"
    )
    assert TrainConfig(data=["a"], out=".").resolved_model_version() == "0.0.0+dev"
    given = TrainConfig(data=["a"], out="runs/v1", model_version="2.0.0")
    assert given.resolved_model_version() == "2.0.0"


def test_an_older_runs_saved_version_is_kept(tmp_path: Path) -> None:
    old = TrainConfig(data=["a"], out="runs/v1", model_version="0.1.0")
    old.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json").resolved_model_version() == "0.1.0"
