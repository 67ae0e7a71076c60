"""Reading the photos of a request as its body streams in (leafid.http.uploads)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import pytest

pytest.importorskip("fastapi")
from starlette.requests import Request  # noqa: E402

from leafid.errors import InvalidRequestError, TooLargeError  # noqa: E402
from leafid.http.errors import ClientDisconnectedError, MalformedBodyError  # noqa: E402
from leafid.http.uploads import SPOOL_BYTES, Uploads, read_uploads  # noqa: E402

BOUNDARY = "xyz"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, filename: str | None = "a.jpg") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Stream:
    """A request body given in chunks; counts the chunks the app took."""

    def __init__(self, data: bytes, chunk: int = 1000, disconnect_after: int | None = None):
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        self.taken = 0
        self.disconnect_after = disconnect_after

    async def receive(self) -> dict[str, Any]:
        if self.disconnect_after is not None and self.taken >= self.disconnect_after:
            return {"type": "http.disconnect"}
        chunk = self.chunks[self.taken]
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": self.taken < len(self.chunks)}


def read(
    stream: Stream, content_type: str = CONTENT_TYPE, max_files: int = 4, max_bytes: int = 5000
) -> Uploads:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", content_type.encode())],
    }
    request = Request(scope, stream.receive)  # type: ignore[arg-type]

    async def run() -> Uploads:
        return await read_uploads(
            request, max_files=max_files, max_image_bytes=max_bytes, what="images"
        )

    return anyio.run(run)


def spooled_bytes(uploads: Uploads) -> int:
    uploads.spool.seek(0, 2)
    return uploads.spool.tell()


def test_photos_in_order_with_their_bytes() -> None:
    datas = [b"\xff\xd8" + bytes([i]) * (1500 + i) for i in range(3)]
    stream = Stream(body(*(part("images", d, f"{i}.jpg") for i, d in enumerate(datas))))
    with read(stream) as uploads:
        assert [u.filename for u in uploads.items] == ["0.jpg", "1.jpg", "2.jpg"]
        assert [uploads.read(u) for u in uploads.items] == datas
        assert all(u.error is None for u in uploads.items)
    assert uploads.spool.closed


def test_photo_over_the_limit_is_not_kept_but_counted() -> None:
    small, big = b"s" * 100, b"b" * 20_000
    stream = Stream(
        body(part("images", small), part("images", big, "big.jpg"), part("images", small))
    )
    with read(stream, max_bytes=5000) as uploads:
        first, over, last = uploads.items
        assert isinstance(over.error, TooLargeError)
        assert str(over.error) == "file is 20000 bytes, over the limit of 5000"
        assert first.error is None and last.error is None
        assert uploads.read(first) == small and uploads.read(last) == small
        assert spooled_bytes(uploads) == 2 * len(small)  # nothing of the big one kept


def test_other_fields_are_skipped_and_empty_names_numbered() -> None:
    stream = Stream(
        body(part("note", b"hello", None), part("images", b"x", ""), part("extra", b"y"))
    )
    with read(stream) as uploads:
        assert [u.filename for u in uploads.items] == ["image-1"]
        assert spooled_bytes(uploads) == 1


def test_too_many_photos_are_refused_before_the_rest_is_read() -> None:
    stream = Stream(body(*(part("images", b"p" * 2000) for _ in range(20))), chunk=1000)
    with pytest.raises(InvalidRequestError, match="send 1 to 4 images, got more than 4"):
        read(stream, max_files=4)
    assert stream.taken < len(stream.chunks) / 2


def test_no_photo() -> None:
    with pytest.raises(InvalidRequestError, match="got 0"):
        read(Stream(body(part("note", b"x", None))))


@pytest.mark.parametrize(
    ("data", "content_type", "error"),
    [
        (b"images=x", "application/x-www-form-urlencoded", InvalidRequestError),
        (b"{}", "application/json", InvalidRequestError),
        (b"", "", InvalidRequestError),
        (body(part("images", b"x")), "multipart/form-data", MalformedBodyError),
        (b"--xyz\r\nnot a header\r\n\r\n", CONTENT_TYPE, MalformedBodyError),
        (body(part("images", b"text", None)), CONTENT_TYPE, InvalidRequestError),
    ],
    ids=["urlencoded", "json", "no-type", "no-boundary", "garbage", "text-images"],
)
def test_request_errors(data: bytes, content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        read(Stream(data), content_type=content_type)


@pytest.mark.parametrize(
    "data",
    [
        part("images", b"a" * 100) + part("images", b"b" * 9000)[:-2],  # last photo cut off
        part("images", b"a" * 100),  # no closing boundary
        body(part("images", b"a" * 100))[:-5],  # closing boundary cut off
    ],
    ids=["cut-photo", "no-close", "cut-close"],
)
def test_a_body_that_ends_before_its_closing_boundary_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedBodyError, match="closing boundary"):
        read(Stream(data))


def test_client_gone_mid_body() -> None:
    stream = Stream(body(part("images", b"z" * 10_000)), chunk=1000, disconnect_after=3)
    with pytest.raises(ClientDisconnectedError):
        read(stream)


def test_photos_past_the_spool_size_go_to_disk() -> None:
    datas: Iterable[bytes] = [b"q" * (SPOOL_BYTES // 2 + 1)] * 3
    stream = Stream(body(*(part("images", d) for d in datas)), chunk=64 * 1024)
    with read(stream, max_bytes=SPOOL_BYTES) as uploads:
        assert uploads.spool._rolled  # the request's memory stays at the spool size
        assert all(uploads.read(u) == b"q" * (SPOOL_BYTES // 2 + 1) for u in uploads.items)
