"""``python -m leafid.http serve|loadtest``: the service commands without the full CLI."""

from __future__ import annotations

import argparse
import sys

from leafid.console import echo
from leafid.errors import EXIT_USAGE, LeafidError
from leafid.http.commands import register


def main() -> int:
    """Parse the arguments and run the command."""
    parser = argparse.ArgumentParser(prog="python -m leafid.http")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    try:
        return int(args.func(args))
    except LeafidError as exc:
        echo(f"leafid: error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
