from __future__ import annotations

import shlex
from dataclasses import fields

from leafid_train import commands
from leafid_train.card import train_command, train_parser
from leafid_train.config import TrainConfig


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
        cache_dir="/tmp/cache",
        verify=False,
        keep_fraction=0.9,
        model_version="2.0.0",
    )
    line = train_command(cfg)
    argv = shlex.split(line)  # also drops a trailing comment
    assert argv[:2] == ["leafid", "train"]
    args = train_parser().parse_args(argv[2:])  # the real parser: unknown flags exit
    args.resume = False
    assert commands._config(args) == cfg
    assert "#" not in line


def test_fields_without_a_flag_are_named_not_invented() -> None:
    cfg = TrainConfig(data=["a"], out="r", warmup_steps_frac=0.1)
    line = train_command(cfg)
    command, comment = line.split(" # ")
    assert "warmup" not in command and "warmup_steps_frac=0.1" in comment
    args = train_parser().parse_args(shlex.split(command)[2:])
    args.resume = False
    got = commands._config(args)
    changed = [f.name for f in fields(TrainConfig) if getattr(got, f.name) != getattr(cfg, f.name)]
    assert changed == ["warmup_steps_frac"]
