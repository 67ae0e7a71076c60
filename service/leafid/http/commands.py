"""The ``leafid serve`` and ``leafid loadtest`` subcommands.

:mod:`leafid.cli` registers them directly (and ``python -m leafid.http``). This module
imports only the standard library and leafid at its top, so the CLI loads fast and
works without the ``service`` extra; FastAPI and uvicorn are imported when ``serve`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from leafid.argtypes import fraction, int_at_least, positive_float
from leafid.errors import EXIT_OK, InvalidRequestError
from leafid.extras import require_extra
from leafid.options import add_model_option, add_references_options, add_renamed_option

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``loadtest`` to the ``leafid`` command's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP identification service and upload page",
        description=(
            "Run the HTTP service (API at /v1, docs at /docs, upload page at /). "
            "Other settings come from LEAFID_* environment variables, e.g. "
            "LEAFID_API_KEYS=key1,key2, LEAFID_MAX_UPLOAD_BYTES, LEAFID_CORS_ORIGINS, "
            "LEAFID_HEADER_TIMEOUT_S, LEAFID_BODY_TIMEOUT_S, LEAFID_MAX_CONNECTIONS."
        ),
    )
    add_model_option(serve)
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address (default: {DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=int_at_least(0), default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}"
    )
    add_renamed_option(
        serve,
        "--processes",
        "--workers",
        type=int_at_least(1),
        default=1,
        metavar="N",
        help="server processes, each with its own copy of the model (default 1)",
    )
    serve.add_argument(
        "--threads", type=int_at_least(0), metavar="N", help="onnxruntime threads per inference"
    )
    add_renamed_option(
        serve,
        "--inference-slots",
        "--concurrency",
        type=int_at_least(1),
        metavar="N",
        help="requests decoded and classified at once, per process",
    )
    serve.add_argument(
        "--queue-size", type=int_at_least(0), metavar="N", help="requests allowed to wait"
    )
    add_references_options(serve, settings=True)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: info)",
    )
    serve.set_defaults(func=cmd_serve)

    load = subparsers.add_parser(
        "loadtest",
        help="measure a running service: req/s, latency percentiles, errors, RSS",
        description=(
            "Post generated JPEGs to /v1/identify from N concurrent clients for a bounded "
            "number of requests and time. Only loopback URLs unless --allow-remote. With "
            "--spawn, the server runs --model. Adversarial mix: --hostile-share and "
            "--slow-clients add hostile files and slow connections to a measured phase, "
            "compared with a clean phase run first."
        ),
    )
    load.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help=f"service URL (default: http://{DEFAULT_HOST}:{DEFAULT_PORT}); repeat for "
        "several replicas, sent requests round-robin",
    )
    add_renamed_option(
        load,
        "--clients",
        "--concurrency",
        type=int_at_least(1),
        default=8,
        metavar="N",
        help="clients sending at the same time (default 8)",
    )
    load.add_argument("--requests", type=int_at_least(1), default=1000, help="most requests sent")
    load.add_argument("--duration", type=positive_float, default=20.0, help="most seconds (20)")
    load.add_argument("--warmup", type=int_at_least(0), default=16, help="untimed requests first")
    load.add_argument("--image-size", default="1MP", help="photo size: 1MP, 0.3MP or WxH")
    load.add_argument("--pid", type=int_at_least(1), help="server process id, to report its RSS")
    load.add_argument(
        "--rss-every",
        type=positive_float,
        metavar="S",
        help="sample the server's RSS every S seconds during the run and report start, end "
        "and highest (soak runs; needs --spawn or --pid)",
    )
    load.add_argument(
        "--spawn",
        action="store_true",
        help="start 'leafid serve' on a free loopback port, measure, then stop it",
    )
    add_model_option(load)
    load.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="with --spawn: extra argument for 'leafid serve' (repeatable)",
    )
    load.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
    load.add_argument(
        "--hostile-share",
        type=fraction,
        default=0.0,
        metavar="F",
        help="share of the requests that post a generated hostile file (huge decodes, "
        "header bombs, truncated or corrupt images, non-images) instead of the photo, "
        "e.g. 0.1",
    )
    load.add_argument(
        "--hostile-side",
        type=int_at_least(1),
        metavar="PX",
        help="width and height of the hostile images that decode huge (default: 7000, "
        "just under the service's default pixel limit)",
    )
    load.add_argument(
        "--slow-clients",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="connections that stall or trickle their headers or body, re-opened when the "
        "server drops them, beside the normal clients",
    )
    load.add_argument(
        "--no-baseline",
        action="store_true",
        help="with --hostile-share or --slow-clients: skip the clean phase run first",
    )
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(func=cmd_loadtest)


class _Terminated(Exception):
    """SIGTERM reached leafid's own handler (see :func:`_sigterm_exits_cleanly`)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextmanager
def _sigterm_exits_cleanly() -> Iterator[None]:
    """Make a SIGTERM-requested graceful shutdown end with exit status 0.

    uvicorn handles SIGTERM itself (stop accepting, finish requests in flight), then
    puts the previous handler back and raises the signal again, which with the default
    handler kills the process (status -15 / 143) after a clean shutdown. With this
    handler in place the re-raised signal ends the block instead. A SIGTERM before
    uvicorn installs its own handlers also just ends the block (nothing was served).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except _Terminated:
        log.info("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, then run uvicorn until interrupted.

    The model is loaded before uvicorn starts so that a missing or invalid model is
    reported as one clear error (raised as a LeafidError for the CLI to print). SIGTERM
    stops the server gracefully (requests in flight are answered, for at most 30 s;
    those still unanswered then get 503) and the command returns 0, as after Ctrl-C
    (SIGINT). Connection timeouts and the connection cap: :mod:`leafid.http.server`.
    """
    with require_extra("service"):
        import uvicorn
        from pydantic import ValidationError

        from leafid.http.app import create_app, load_classifier, load_references
        from leafid.http.server import uvicorn_options
        from leafid.http.settings import Settings

    overrides: dict[str, Any] = {
        "model": Path(args.model).resolve() if args.model else None,
        "threads": args.threads,
        "inference_slots": args.inference_slots,
        "queue_size": args.queue_size,
        "references": Path(args.references).resolve() if args.references else None,
        "similar": args.similar,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid LEAFID_* setting: {exc}") from exc
    classifier = load_classifier(settings)  # clear ModelNotFoundError / InvalidModelError
    references = load_references(settings, classifier)  # clear InvalidReferencesError
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": args.log_level == "debug",
        **uvicorn_options(settings),  # connection timeouts and cap
    }
    with _sigterm_exits_cleanly():
        if args.processes == 1:
            uvicorn.run(create_app(settings, classifier, references), **common)
        else:
            del classifier, references  # each process loads its own copy
            for key, value in overrides.items():  # processes read their settings from the env
                os.environ[f"LEAFID_{key.upper()}"] = str(value)
            uvicorn.run(
                "leafid.http.app:create_app", factory=True, workers=args.processes, **common
            )
    return EXIT_OK


def cmd_loadtest(args: argparse.Namespace) -> int:
    """Run the load test (see :mod:`leafid.http.loadtest`)."""
    from leafid.http.loadtest import run_from_args

    return run_from_args(args)
