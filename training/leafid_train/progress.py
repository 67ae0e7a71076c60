"""How far a training epoch is: images/s and the time left, as a bar or as log lines.

On a terminal with tqdm (the ``progress`` extra) the epoch is a bar; otherwise (a log
file, CI, no tqdm) a plain line goes to stderr now and then, so that a long epoch is not
silent. The bar over a list of files that are decoded is :func:`leafid_train.run_data.progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from leafid.console import echo
from leafid.extras import optional

LINE_INTERVAL_S = 30.0
"""Least seconds between two progress lines when there is no bar."""


def clock(seconds: float) -> str:
    """``seconds`` as ``M:SS``, or ``H:MM:SS`` from an hour on."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochProgress:
    """The progress of one epoch, counted step by step with :meth:`update`.

    Args:
        desc: What is shown, e.g. ``epoch 3``.
        steps: Steps in the epoch.
        images: Images in the epoch (this process's share under torchrun).
        show: Show anything at all (rank 0, not quiet).
        interval_s: Least seconds between two lines when there is no bar; default
            :data:`LINE_INTERVAL_S`.
        stream: Where it goes; default stderr.
    """

    def __init__(
        self,
        desc: str,
        steps: int,
        images: int,
        *,
        show: bool,
        interval_s: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.desc = desc
        self.steps = steps
        self.interval_s = LINE_INTERVAL_S if interval_s is None else interval_s
        self.stream = stream or sys.stderr
        self.steps_done = 0
        self.images_done = 0
        self.start = self.last_line = time.perf_counter()
        self.bar: Any = None
        self.lines = False
        if show:
            tqdm = optional("tqdm") if self.stream.isatty() else None
            if tqdm is None:
                self.lines = True
            else:
                self.bar = tqdm.tqdm(
                    total=images, desc=desc, unit="img", file=self.stream, leave=False
                )

    def update(self, images: int) -> None:
        """Count one finished step of ``images`` images."""
        self.steps_done += 1
        self.images_done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        now = time.perf_counter()
        # no line after the last step: the epoch's own summary line follows at once
        if self.lines and now - self.last_line >= self.interval_s and self.steps_done < self.steps:
            self.last_line = now
            echo(self.line(now), stream=self.stream)

    def line(self, now: float) -> str:
        """The plain progress line at time ``now`` (a :func:`time.perf_counter` value)."""
        elapsed = now - self.start
        rate = self.images_done / elapsed if elapsed > 0 else 0.0
        left = elapsed / max(1, self.steps_done) * max(0, self.steps - self.steps_done)
        return (
            f"{self.desc}: step {self.steps_done}/{self.steps}, {rate:.1f} img/s, "
            f"{clock(elapsed)} elapsed, ETA {clock(left)}"
        )

    def over(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield ``batches`` of (images, labels), counting each step when the next is asked for.

        The bar is removed when the batches end or the loop over them stops.
        """
        try:
            for batch in batches:
                yield batch
                self.update(len(batch[1]))
        finally:
            self.close()

    def close(self) -> None:
        """Remove the bar, if there is one."""
        if self.bar is not None:
            self.bar.close()
