"""The run folder's owner: paths by role, loaders and writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leafid_train.config import TrainConfig
from leafid_train.run_folder import EvalFolder, RunFolder


def test_paths_are_the_files_old_run_folders_hold(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    names = {
        run.config: "config.json",
        run.split: "split.json",
        run.checkpoint: "checkpoint.pt",
        run.best: "best.pt",
        run.metrics: "metrics.jsonl",
        run.calibration: "calibration.json",
        run.summary: "summary.json",
        run.export: "export.json",
        run.int8_report: "int8_report.json",
        run.model: "model.onnx",
        run.model_int8: "model.int8.onnx",
        run.eval.metrics: "eval/metrics.json",
        run.eval_int8.reliability: "eval_int8/reliability.png",
        run.eval.confusion: "eval/confusion.png",
    }
    for path, rel in names.items():
        assert path == tmp_path / rel


def test_config_round_trip_and_a_started_run(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    assert not run.holds_run()
    cfg = TrainConfig(data=["a"], out=str(run.path), epochs=3, head_epochs=0)
    run.save_config(cfg)  # makes the folder
    assert run.holds_run() and run.load_config() == cfg
    assert json.loads(run.config.read_text())["epochs"] == 3
    assert run.missing_for_export() == ["best.pt", "split.json", "calibration.json", "summary.json"]


def test_epoch_rows_survive_a_torn_line_and_a_resume(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.epochs() == []
    for epoch in (1, 2, 3):
        run.append_epoch({"epoch": epoch, "val_loss": 1.0 / epoch})
    with run.metrics.open("a") as fh:
        fh.write('{"epoch": 4, "val')  # killed mid-write
    assert [row["epoch"] for row in run.epochs()] == [1, 2, 3]
    run.keep_epochs(2)  # the checkpoint has epoch 2: 3 and the torn line go
    assert (
        run.metrics.read_text() == '{"epoch": 1, "val_loss": 1.0}\n{"epoch": 2, "val_loss": 0.5}\n'
    )


def test_json_files_are_written_once_and_absent_ones_read_as_none(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.load_export() is None and run.load_int8_report() is None
    assert run.eval.load_metrics() is None
    report = {"onnx": "m.onnx", "parity_max_abs_diff": 1e-7}
    run.write_export(report)
    assert run.export.read_text() == json.dumps(report, indent=2) + "\n"
    assert run.load_export() == report
    run.write_int8_report({"ship_int8": False})
    assert run.load_int8_report() == {"ship_int8": False}
    run.write_calibration({"temperature": 1.5})
    run.write_summary({"epochs_run": 2})
    assert run.load_calibration() == {"temperature": 1.5}
    assert run.load_summary() == {"epochs_run": 2}
    with pytest.raises(FileNotFoundError):
        RunFolder(tmp_path / "none").load_calibration()


def test_eval_folder_makes_its_folder(tmp_path: Path) -> None:
    folder = EvalFolder(tmp_path / "a" / "eval")
    folder.write_metrics({"top1": 0.5})
    assert folder.load_metrics() == {"top1": 0.5}
    assert folder.metrics.read_text() == '{\n  "top1": 0.5\n}\n'
