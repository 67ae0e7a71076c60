"""Bounded inference: how many requests may decode and classify at once, and wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from prometheus_client import Counter

from leafid.http.errors import ServiceBusyError


class InferenceGate:
    """At most ``slots`` requests in decode+inference, at most ``queue_size`` waiting.

    A request arriving when all slots are busy and the queue is full is refused at
    once with :class:`ServiceBusyError` (503 + ``Retry-After``) and counted in
    ``rejected``: by :meth:`check` before its body is read, and by :meth:`slot` if the
    queue filled up while it was being read.
    """

    def __init__(self, slots: int, queue_size: int, retry_after_s: int, rejected: Counter) -> None:
        self._semaphore = anyio.Semaphore(slots)
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.rejected = rejected
        self.waiting = 0

    def check(self) -> None:
        """Refuse a request that could not even wait for a slot now.

        Raises:
            ServiceBusyError: Every slot is busy and the queue is full.
        """
        if self._semaphore.value == 0 and self.waiting >= self.queue_size:
            self.rejected.inc()
            raise ServiceBusyError(
                f"the service is busy ({self.waiting} requests waiting); retry shortly",
                self.retry_after_s,
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one inference slot for the duration of the block (see :meth:`check`)."""
        self.check()
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()
