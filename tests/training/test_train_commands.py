from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder, make_ood

from leafid.cli import main
from leafid.errors import InvalidRequestError, MissingExtraError
from leafid.results import CAVEAT
from leafid_train import commands
from leafid_train.config import TrainConfig
from leafid_train.int8_rule import Int8Decision

TINY = (
    "--arch test_efficientnet --no-pretrained --input-size 32 --resize-size 36 --epochs 2 "
    "--head-epochs 1 --batch-size 8 --no-verify --threads 1 --patience 0"
).split()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafid")
    commands.register(parser.add_subparsers(dest="command"))
    return parser


def test_register_adds_commands_with_handlers() -> None:
    parser = _parser()
    args = parser.parse_args(["train", "--data", "a", "--data", "b", "--out", "r"])
    assert args.func is commands.cmd_train and args.data == ["a", "b"] and args.verify
    args = parser.parse_args(["evaluate", "m.onnx", "--out", "e", "--split-file", "s.json"])
    assert args.func is commands.cmd_evaluate and args.split == "test"
    assert parser.parse_args(["export", "run", "--out", "m.onnx"]).func is commands.cmd_export
    assert parser.parse_args(["datasets", "manifest", "x"]).func is commands.cmd_datasets


class Started(Exception):
    pass


def test_resume_keeps_the_runs_epochs_and_patience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from leafid_train import train

    def started(cfg: TrainConfig, *args: object, **kwargs: object) -> None:
        raise Started(cfg)

    monkeypatch.setattr(train, "_run", started)  # what the command would train

    def config_of(argv: list[str]) -> TrainConfig:
        args = _parser().parse_args(argv)
        with pytest.raises(Started) as info:
            args.func(args)
        cfg: TrainConfig = info.value.args[0]
        return cfg

    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data=["a"], out=str(run), epochs=7, patience=2, lr=0.01).save(run / "config.json")
    (run / "checkpoint.pt").write_bytes(b"")
    resume = ["train", "--out", str(run), "--resume"]  # the run knows its data
    cfg = config_of(resume)
    assert (cfg.epochs, cfg.patience, cfg.lr) == (7, 2, 0.01)
    cfg = config_of([*resume, "--epochs", "9", "--patience", "0", "--lr", "0.5"])
    assert (cfg.epochs, cfg.patience, cfg.lr) == (9, 0, 0.01)  # --lr: the run's
    args = _parser().parse_args(["train", "--out", str(tmp_path / "new")])
    with pytest.raises(InvalidRequestError, match="needs --data ROOT"):
        args.func(args)
    default = TrainConfig(data=["-"], out="-")
    cfg = config_of(["train", "--data", "a", "--out", str(tmp_path / "new")])
    assert (cfg.epochs, cfg.patience) == (default.epochs, default.patience) != (7, 2)


def test_only_resumable_settings_change_on_resume() -> None:
    saved = TrainConfig(data=["a"], out="r", epochs=7, patience=2)
    assert saved.resumed(epochs=None, patience=None) == saved
    assert saved.resumed(epochs=9) == TrainConfig(data=["a"], out="r", epochs=9, patience=2)
    with pytest.raises(InvalidRequestError, match="keeps its own lr"):
        saved.resumed(lr=0.1)


def test_missing_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "torch" or name.startswith(("torch.", "leafid_train.")):
            if name != "leafid_train.commands":
                monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" fail
    args = _parser().parse_args(["train", "--data", "a", "--out", "r"])
    with pytest.raises(MissingExtraError, match=r"pip install 'leafid\[train\]'"):
        args.func(args)


def test_missing_dependency_names_the_extra_and_the_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name.startswith("leafid_train.") and name != "leafid_train.commands":
            monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.figure"):  # imported at the top of plots
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"leafid\[train\]") as info:
        commands.load("evaluate")
    assert info.value.module == "matplotlib"
    assert commands.load("config").__name__ == "leafid_train.config"  # stdlib + leafid only


def test_cli_train_own_species_export_evaluate_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    make_imagefolder(tmp_path / "setA")
    make_imagefolder(
        tmp_path / "my_photos",
        classes={"mitragyna_speciosa": (150, 110, 30)},
        with_tsv=False,
        nested_images=False,
    )
    make_ood(tmp_path / "nonleaf")
    rc = main(
        [
            "train",
            "--data",
            "setA",
            "--data",
            "./my_photos",
            "--ood",
            "./nonleaf",
            "--out",
            "run",
            "--export",
            "run/model.onnx",
            *TINY,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model.onnx").is_file()

    rc = main(
        [
            "evaluate",
            "run/model.onnx",
            "--split-file",
            "run/split.json",
            "--ood",
            "./nonleaf",
            "--out",
            "run/eval",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "OOD" in text
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics["per_dataset"]) == {"setA", "my_photos"}

    rc = main(["export", "run", "--out", "run/model.onnx", "--card", "card"])
    assert rc == 0
    card = (tmp_path / "card" / "MODEL_CARD.md").read_text()
    assert CAVEAT in card
    assert card.startswith("# Model card: leafid-test-efficientnet 0.0.0+run\n")  # the run's
    assert "| my_photos |" in card and "mitragyna_speciosa" in card
    assert "leafid train --data setA --data ./my_photos --ood ./nonleaf --out run" in card
    assert "--arch test_efficientnet" in card and "Test results: fp32 model (test split" in card
    assert (tmp_path / "card" / "confusion.png").is_file()
    assert (tmp_path / "card" / "reliability.png").is_file()

    rc = main(["train", "--data", "setA", "--out", "run", *TINY])
    assert rc == 2 and "--resume" in capsys.readouterr().err

    # with --int8 the copy stays beside the model only if it qualifies; without, an old
    # copy beside the model is stale and goes
    import leafid_train.export_run as export_module

    timed = export_module.compare
    monkeypatch.setattr(
        export_module, "compare", lambda *a, **k: timed(*a, **(k | {"min_seconds": 0.02}))
    )
    copy = tmp_path / "ship" / "leafid.int8.onnx"
    for ships in (False, True):
        decision = Int8Decision(ships=ships, faster=True, val_drop=0.0, test_drop=None)
        monkeypatch.setattr(export_module, "int8_decision", lambda *a, d=decision: d)
        rc = main(["export", "run", "--out", "ship/leafid.onnx", "--int8", "--card", "ship"])
        assert rc == 0
        assert copy.is_file() is ships
        assert ("no INT8 copy kept" in capsys.readouterr().out) is not ships
    assert main(["export", "run", "--out", "ship/leafid.onnx"]) == 0
    assert not copy.is_file() and "removed the INT8 copy" in capsys.readouterr().out
