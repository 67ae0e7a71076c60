"""Command-line options shared by several ``leafid`` subcommands, declared once here."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from leafid.argtypes import int_at_least
from leafid.console import echo
from leafid.paths import MODEL_ENV

MODEL_HELP = f"ONNX model file (default: ${MODEL_ENV} or the shipped model)"
DEFAULT_SIMILAR = 3
"""Reference photos shown per candidate species (``--similar``, the service's ``similar``)."""


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--model M``, the ONNX model file of every subcommand that loads one."""
    parser.add_argument("--model", metavar="M", help=MODEL_HELP)


def add_recursive_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-r``/``--recursive``: folders given as paths are searched with their sub-folders."""
    parser.add_argument("-r", "--recursive", action="store_true", help="look in sub-folders too")


class _DeprecatedAlias(argparse.Action):
    """Stores like the option it stands for, after a note on stderr naming the new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.new_flag: str = kwargs.pop("new_flag")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        echo(f"leafid: {option_string} is deprecated; use {self.new_flag}", err=True)
        setattr(namespace, self.dest, values)


def add_renamed_option(
    parser: argparse.ArgumentParser,
    flag: str,
    old_flag: str,
    type: Callable[[str], Any],
    **kwargs: Any,
) -> argparse.Action:
    """Add option ``flag`` and keep its former name ``old_flag`` working, hidden from help.

    Args:
        parser: The subcommand's parser.
        flag: The option's name, e.g. ``--decode-threads``.
        old_flag: Its former name, e.g. ``--workers``: still accepted, with a note on stderr.
        type: Converts the value (a :mod:`leafid.argtypes` checker), for both names.
        kwargs: Other ``add_argument`` keywords of ``flag`` (``default``, ``help``...).

    Returns:
        The action of ``flag``.
    """
    action = parser.add_argument(flag, type=type, **kwargs)
    parser.add_argument(
        old_flag,
        action=_DeprecatedAlias,
        new_flag=flag,
        dest=action.dest,
        type=type,
        metavar=action.metavar,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    return action


def add_references_options(parser: argparse.ArgumentParser, settings: bool = False) -> None:
    """Add ``--references FILE`` and ``--similar K``: similar reference photos per answer.

    Args:
        parser: The subcommand's parser.
        settings: The options override a setting (``leafid serve``): no default of their
            own, so that ``$LEAFID_SIMILAR`` holds when ``--similar`` is not given.
    """
    parser.add_argument(
        "--references",
        metavar="FILE",
        help="reference-photo index made with 'leafid index' (same model): each candidate "
        "species gets its reference photos most like the photo, with their similarity",
    )
    parser.add_argument(
        "--similar",
        type=int_at_least(0),
        default=None if settings else DEFAULT_SIMILAR,
        metavar="K",
        help=f"reference photos per candidate species (default: {DEFAULT_SIMILAR})",
    )


def add_explain_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--explain DIR``: write a heat overlay of where the model looked, per photo."""
    parser.add_argument(
        "--explain",
        metavar="DIR",
        help="write one PNG per photo into DIR: the part of the photo the model saw, with "
        "where it looked for its top answer as heat (red: most)",
    )


def add_decode_threads_option(parser: argparse.ArgumentParser, default: int) -> None:
    """Add ``--decode-threads N`` (formerly ``--workers``); ``default``: this machine's."""
    add_renamed_option(
        parser,
        "--decode-threads",
        "--workers",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help=f"decoding threads (default: number of CPUs, {default})",
    )
