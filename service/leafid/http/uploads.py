"""The photos of an upload request, read while the body streams in.

The ``images`` parts of a ``multipart/form-data`` body are parsed with python-multipart's
streaming parser as the body arrives and written to one spooled temporary file per
request (in memory up to :data:`SPOOL_BYTES`, on disk beyond), so a request that waits
for an inference slot holds little memory. A photo over the per-image byte limit is
counted but not kept: it becomes that photo's :class:`~leafid.errors.TooLargeError`.
Too many photos, a field ``images`` that is not a file, or a body that is not a
multipart form refuse the whole request as soon as they are seen. The size of the
whole body is :class:`~leafid.http.middleware.BodyLimitMiddleware`'s to check.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from types import TracebackType

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from leafid.errors import InvalidRequestError, TooLargeError
from leafid.http.errors import ClientDisconnectedError, MalformedBodyError

FIELD = "images"
SPOOL_BYTES = 1024 * 1024  # per request; the rest of its photos waits on disk


@dataclass
class Upload:
    """One uploaded photo.

    Attributes:
        filename: The name the client gave, or ``image-N`` (N counted from 1).
        size: Its size in bytes.
        offset: Where its bytes start in the request's spool.
        error: Why it is not kept (over the byte limit), else None.
    """

    filename: str
    size: int = 0
    offset: int = 0
    error: TooLargeError | None = None


@dataclass
class Uploads:
    """The photos of one request, in order; close it (or use ``with``) to drop the spool."""

    items: list[Upload]
    spool: SpooledTemporaryFile[bytes]

    def read(self, upload: Upload) -> bytes:
        """One kept photo's bytes (blocking file I/O when spooled to disk: call off the loop)."""
        self.spool.seek(upload.offset)
        return self.spool.read(upload.size)

    def close(self) -> None:
        """Drop the spooled bytes."""
        self.spool.close()

    def __enter__(self) -> Uploads:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def count_error(max_files: int, what: str, got: str) -> InvalidRequestError:
    """The refusal of a request with a wrong number of photos."""
    return InvalidRequestError(f"send 1 to {max_files} {what}, got {got}")


@dataclass
class _PartsReader:
    """python-multipart callbacks: keep the ``images`` files, skip every other part."""

    spool: SpooledTemporaryFile[bytes]
    max_files: int
    max_image_bytes: int
    what: str
    charset: str
    items: list[Upload] = field(default_factory=list)
    _header: bytes = b""
    _value: bytes = b""
    _disposition: bytes = b""
    _current: Upload | None = None

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if self._decode(options.get(b"name", b"")) != FIELD:
            return  # another field: its bytes only count towards the body limit
        if b"filename" not in options:
            raise InvalidRequestError(f"'{FIELD}' must be files, got a text field")
        if len(self.items) == self.max_files:
            raise count_error(self.max_files, self.what, f"more than {self.max_files}")
        name = self._decode(options[b"filename"]) or f"image-{len(self.items) + 1}"
        self._current = Upload(name, offset=self.spool.tell())
        self.items.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None:
            return
        before = upload.size
        upload.size += end - start
        if upload.size <= self.max_image_bytes:
            # One received chunk at most; past the spool's memory size the write goes
            # to the page cache, cheap enough to do here on the event loop.
            self.spool.write(data[start:end])
        elif before <= self.max_image_bytes:  # it just went over: drop what was kept
            self.spool.seek(upload.offset)
            self.spool.truncate()

    def on_part_end(self) -> None:
        upload = self._current
        if upload is not None and upload.size > self.max_image_bytes:
            upload.error = TooLargeError(
                f"file is {upload.size} bytes, over the limit of {self.max_image_bytes}"
            )
        self._current = None

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):  # as Starlette does: keep the bytes
            return raw.decode("latin-1")


async def read_uploads(
    request: Request, *, max_files: int, max_image_bytes: int, what: str
) -> Uploads:
    """Read the request's photos from its multipart body as it streams in.

    Args:
        request: The request; its body must not have been read yet.
        max_files: Most photos accepted.
        max_image_bytes: Largest photo kept; a larger one gets its own TooLargeError.
        what: What the photos are, for the error message on their number.

    Returns:
        The photos, 1 to ``max_files`` of them, in the order sent.

    Raises:
        InvalidRequestError: Not a multipart form, no photo or too many, or an
            ``images`` field that is not a file.
        MalformedBodyError: The multipart body is malformed.
        ClientDisconnectedError: The client went away before the body was in.
        TooLargeError: The body is over the upload limit (from the body limit).
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise InvalidRequestError(f"send the photos as a multipart/form-data field '{FIELD}'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedBodyError("the multipart body has no boundary")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    spool: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(max_size=SPOOL_BYTES)
    reader = _PartsReader(spool, max_files, max_image_bytes, what, charset)
    callbacks = {
        name: getattr(reader, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                parser.write(chunk)
        parser.finalize()  # checks nothing: a body cut short is caught by the state below
        if parser.state != MultipartState.END:
            raise MalformedBodyError("the multipart body ends before its closing boundary")
        if not reader.items:
            raise count_error(max_files, what, "0")
    except BaseException as exc:
        spool.close()
        if isinstance(exc, FormParserError):
            raise MalformedBodyError(f"malformed multipart body: {exc}") from exc
        if isinstance(exc, ClientDisconnect):
            raise ClientDisconnectedError("the client closed the connection") from exc
        raise
    return Uploads(reader.items, spool)
