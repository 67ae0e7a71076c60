"""The one place command-line output goes through.

Results go to stdout (or a file); messages for the person at the terminal go to stderr.
"""

from __future__ import annotations

import sys
from typing import TextIO


def echo(text: str = "", *, err: bool = False, stream: TextIO | None = None) -> None:
    """Write one line and flush it.

    Args:
        text: The line, without its newline.
        err: Write to stderr instead of stdout.
        stream: Write here instead (overrides ``err``).
    """
    out = stream if stream is not None else (sys.stderr if err else sys.stdout)
    out.write(text + "\n")
    out.flush()
