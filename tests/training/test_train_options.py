from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
from synthetic_data import train_parser

from leafid_train.config import TrainConfig
from leafid_train.train_options import config_from_args, train_command


def test_train_command_parses_back_to_the_same_config() -> None:
    cfg = TrainConfig(
        data=["swedish-leaf", "/photos/my species"],
        ood=["nonleaf"],
        out="runs/v1",
        arch="resnet18",
        pretrained=False,
        checkpoint="w.pth",
        epochs=7,
        head_epochs=2,
        lr=5e-4,
        patience=0,
        split=(0.8, 0.1, 0.1),
        ood_split=(0.5, 0.25, 0.25),
        cache_dir="/tmp/cache",
        verify=False,
        strict=True,
        keep_fraction=0.9,
        model_version="2.0.0",
        oversample=["swedish-leaf=2"],
        paste=["swedish-leaf"],
        paste_prob=0.7,
        greyscale_prob=0.1,
        device="cuda:1",
        outlier_exposure=0.5,
        unknown_rule="coverage",
        answered_right=0.97,
        reject=["nonleaf=0.95", "unlisted-plants=0.9"],
    )
    line = train_command(cfg)
    argv = shlex.split(line)  # also drops a trailing comment
    assert argv[:2] == ["leafid", "train"]
    args = train_parser().parse_args(argv[2:])  # the real parser: unknown flags exit
    assert config_from_args(args) == cfg
    assert "#" not in line


def test_fields_without_a_flag_are_named_not_invented() -> None:
    cfg = TrainConfig(data=["a"], out="r", warmup_steps_frac=0.1)
    line = train_command(cfg)
    command, comment = line.split(" # ")
    assert "warmup" not in command and "warmup_steps_frac=0.1" in comment
    args = train_parser().parse_args(shlex.split(command)[2:])
    got = config_from_args(args)
    changed = [f.name for f in fields(TrainConfig) if getattr(got, f.name) != getattr(cfg, f.name)]
    assert changed == ["warmup_steps_frac"]


def test_every_flag_keeps_its_spelling_and_default() -> None:
    train = train_parser()
    shown = [a for a in train._actions if a.option_strings and a.help != argparse.SUPPRESS]
    flags = [a.option_strings[0] for a in shown][1:]  # not -h
    assert (
        flags
        == (
            "--data --ood --out --resume --arch --checkpoint --no-pretrained --input-size "
            "--resize-size --epochs --head-epochs --batch-size --lr --head-lr-scale --weight-decay "
            "--label-smoothing --drop-rate --ema-decay --oversample --paste --paste-prob "
            "--greyscale-prob --patience --split --ood-split "
            "--seed "
            "--loader-processes --threads --device --cache-dir --no-verify --strict "
            "--keep-fraction --outlier-exposure --outlier-batch --unknown-rule --answered-right "
            "--reject "
            "--model-version "
            "--export --int8"
        ).split()
    )
    args = train.parse_args(["--data", "a", "--out", "r"])
    assert (args.epochs, args.patience) == (None, None)  # with --resume: the run's
    assert config_from_args(args) == TrainConfig(data=["a"], out="r")
    assert args.split == [0.7, 0.15, 0.15] and args.ood == [] and args.verify is True


def test_values_are_checked_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    train = train_parser()
    for flag, value in [("--epochs", "0"), ("--lr", "-1"), ("--split", "1.5"), ("--seed", "x")]:
        argv = ["--data", "a", "--out", "r", flag, value]
        if flag == "--split":
            argv += ["0", "0"]
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert flag in capsys.readouterr().err


def test_the_former_workers_flag_and_config_key_still_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_parser().parse_args(["--data", "a", "--out", "r", "--workers", "2"])
    assert config_from_args(args).loader_processes == 2
    assert "--workers is deprecated; use --loader-processes" in capsys.readouterr().err
    old = TrainConfig(data=["a"], out="r", loader_processes=3).to_dict()
    old["workers"] = old.pop("loader_processes")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert TrainConfig.load(tmp_path / "config.json").loader_processes == 3
