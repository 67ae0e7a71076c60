"""``leafid train``'s options, made from the :class:`TrainConfig` fields' metadata.

Each option is declared once, as its field's :func:`~leafid_train.config.option`
metadata; this module turns the fields into argparse options, parsed options back into a
config, and a config into the command line that reproduces it. Standard library and
:mod:`leafid` only, so ``leafid --help`` works without torch.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import MISSING, Field, fields
from typing import Any

from leafid.options import add_renamed_option
from leafid_train.config import TrainConfig

_TYPES: dict[str, type] = {"int": int, "float": float}


def option_flag(f: Field[Any]) -> str | None:
    """The flag of a field declared with :func:`option`, else None (no CLI option)."""
    if "flag" not in f.metadata:
        return None
    flag: str = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    return flag


def option_kind(f: Field[Any]) -> str:
    """How an option is written: ``switch``, ``append`` (repeated), ``values`` or ``value``."""
    kind = str(f.type)
    if kind == "bool":
        return "switch"
    if kind.startswith("list["):
        return "append"
    return "values" if kind.startswith("tuple[") else "value"


def field_default(f: Field[Any]) -> Any:
    """A field's default value, or :data:`dataclasses.MISSING` for a required field."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def option_fields() -> list[Field[Any]]:
    """The :class:`TrainConfig` fields that are ``leafid train`` options, in order."""
    return [f for f in fields(TrainConfig) if option_flag(f)]


def add_option(
    parser: argparse.ArgumentParser, f: Field[Any], *, required: bool | None = None
) -> None:
    """Add the option of one :class:`TrainConfig` field to ``parser`` (dest: the field).

    ``required``: overrides what the field says (a field without default is required).
    """
    meta, default, kind = f.metadata, field_default(f), option_kind(f)
    kwargs: dict[str, Any] = {"dest": f.name}
    if meta["help"]:
        kwargs["help"] = meta["help"].format(default=default)
    if kind == "switch":
        kwargs["action"] = "store_false" if default else "store_true"
    else:
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if kind == "append":
            kwargs["action"] = "append"
        elif kind == "values":
            items = str(f.type).removeprefix("tuple[").removesuffix("]").split(", ")
            kwargs.update(type=meta["check"] or _TYPES[items[0]], nargs=len(items))
            default = list(default)
        else:
            kwargs["type"] = meta["check"] or _TYPES.get(str(f.type))
        if (default is MISSING) if required is None else required:
            kwargs["required"] = True
        elif not meta["resumable"] and default is not MISSING:
            kwargs["default"] = default
    if meta["old_flag"]:
        add_renamed_option(parser, str(option_flag(f)), meta["old_flag"], **kwargs)
    else:
        parser.add_argument(option_flag(f), **kwargs)  # type: ignore[arg-type]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``leafid train`` options (None: the default)."""
    values = {f.name: getattr(args, f.name) for f in option_fields()}
    return TrainConfig(**{k: v for k, v in values.items() if v is not None})


def train_command(cfg: TrainConfig) -> str:
    """The ``leafid train`` command line that reproduces ``cfg``.

    Flags come from the options declared on :class:`TrainConfig` (the ones the CLI is
    built from), one per field that differs from the default, so the line cannot name
    a flag that does not exist. A changed field that has no flag (set through the
    Python API) is named in a trailing shell comment.
    """
    parts = ["leafid train"]
    unflagged = []
    for f in fields(TrainConfig):
        value, default, flag = getattr(cfg, f.name), field_default(f), option_flag(f)
        if value == default:
            continue
        if flag is None:
            unflagged.append(f"{f.name}={value!r}")
            continue
        kind = option_kind(f)
        if kind == "switch":
            parts.append(flag)
        elif kind == "append":
            parts += [f"{flag} {shlex.quote(str(v))}" for v in value]
        elif kind == "values":
            parts.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        elif value is not None:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    if unflagged:
        parts.append("# not settable from the CLI: " + ", ".join(unflagged))
    return " ".join(parts)
