"""The safety report: figures of two models on the same val photos, compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_data import make_imagefolder, make_ood

from conftest import make_tiny_model, tiny_spec
from leafid.cli import main
from leafid_train import safety
from leafid_train.run_folder import RunFolder
from leafid_train.safety import SafetyError, check, compare, table, val_figures

CLASSES = ["a", "b"]


def _figures(model: str, right: int, rejected: int) -> dict[str, Any]:
    """4 leaf photos of dataset d1 (``right`` answered right) and 4 OOD photos of root o."""
    sure = np.array([[0.9, 0.1]] * right + [[0.1, 0.9]] * (4 - right))
    ood = np.array([[0.5, 0.5]] * rejected + [[0.95, 0.05]] * (4 - rejected))
    return val_figures(model, sure, CLASSES, ["a"] * 4, ["d1"] * 4, ood, ["o"] * 4, 0.8)


def test_val_figures_measure_rejection_auroc_ece_and_top1() -> None:
    f = _figures("m", right=3, rejected=2)
    assert f["rejected"] == {"o": 0.5} and f["top1"] == {"d1": 0.75}
    assert f["ece"] == pytest.approx(0.9 - 0.75)  # all four 0.9 sure, three right
    assert 0.0 < f["auroc"] < 1.0


def test_a_dataset_with_a_class_the_model_lacks_has_no_top1() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    f = val_figures("m", probs, CLASSES, ["a", "z"], ["d1", "d2"], np.zeros((0, 2)), [], 0.5)
    assert f["top1"] == {"d1": 1.0} and f["auroc"] is None and f["rejected"] == {}


def test_a_figure_worse_by_more_than_two_points_warns_and_fails_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report = compare(_figures("1.0", right=4, rejected=4), _figures("2.0", right=4, rejected=3))
    worse = [r["figure"] for r in report["rows"] if r["warn"]]
    assert worse == ["o rejected", "AUROC leaf vs OOD"]
    assert report["warnings"][0].startswith("o rejected is 25.0 points worse than 1.0's")
    text = table(report)
    assert "1.0" in text.splitlines()[0] and "-25.0 pt  WORSE" in text
    check(report, strict=False)
    assert "safety: o rejected" in caplog.text
    with pytest.raises(SafetyError, match="--strict"):
        check(report, strict=True)


def test_equal_or_better_figures_pass_strict() -> None:
    report = compare(_figures("1.0", right=3, rejected=3), _figures("2.0", right=4, rejected=4))
    assert report["warnings"] == [] and not any(r["warn"] for r in report["rows"])
    check(report, strict=True)
    assert safety.MAX_WORSE == 0.02


TINY = (
    "--arch test_efficientnet --no-pretrained --input-size 32 --resize-size 36 --epochs 1 "
    "--head-epochs 1 --batch-size 8 --no-verify --threads 1 --patience 0"
).split()


@pytest.mark.train
def test_train_writes_and_prints_its_safety_report_and_strict_fails_when_worse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from leafid_train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEAFID_MODEL", str(make_tiny_model(tmp_path / "shipped.onnx")))
    make_imagefolder(tmp_path / "setA", per_class=15)  # enough for the --strict checks
    make_ood(tmp_path / "nonleaf")
    args = ["train", "--data", "./setA", "--ood", "./nonleaf", *TINY]
    assert main([*args, "--out", "run"]) == 0
    err = capsys.readouterr().err
    assert "safety on val, beside 0.0.1-test" in err and "setA top-1" in err
    report = json.loads(RunFolder(tmp_path / "run").safety.read_text())
    assert report["base"]["model"] == tiny_spec().model_version
    assert {r["figure"] for r in report["rows"]} == {
        "nonleaf rejected",
        "AUROC leaf vs OOD",
        "ECE",
        "setA top-1",
    }

    real = train.val_figures

    def worse(model: str, *rest: Any) -> dict[str, Any]:
        f = real(model, *rest)
        if model != tiny_spec().model_version:  # the run's model rejects nothing
            f["rejected"] = {root: -1.0 for root in f["rejected"]}
        return f

    monkeypatch.setattr(train, "val_figures", worse)
    assert main([*args, "--out", "run2", "--strict"]) == 1
    assert "less safe" in capsys.readouterr().err
    assert RunFolder(tmp_path / "run2").safety.is_file()  # written before it failed
