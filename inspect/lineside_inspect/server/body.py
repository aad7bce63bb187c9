"""Reading request bodies within the size limit, and images out of them."""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from lineside_inspect.errors import ImageError, ImageTooLargeError, UnsupportedMediaError

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/bmp", "image/x-ms-bmp",
               "application/octet-stream"}
IDENTITY = ("", "identity")


def content_type(request: Request) -> str:
    """The media type alone, lower-cased, without its parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_encoding(request: Request) -> None:
    """Refuse a compressed body: the server reads bodies as sent, so a gzipped image would
    otherwise fail later as an unrecognised image with no word about the encoding."""
    refuse_encoding(request.headers.get("content-encoding", ""))


def refuse_encoding(value: str) -> None:
    """:func:`check_encoding` of a ``Content-Encoding`` value (the gate checks every API
    body so: a gzip tensor under /v2 was "not valid JSON")."""
    encoding = value.strip()
    if encoding.lower() not in IDENTITY:
        raise UnsupportedMediaError(
            f"content encoding {encoding[:32]!r} is not accepted; send the body uncompressed "
            "(JPEG and PNG are compressed already)")


async def read_image_body(request: Request, limit: int) -> bytes:
    """An encoded image sent as the raw body (image/jpeg|png|bmp), its content type and
    encoding checked before a byte of it is read."""
    check_encoding(request)
    ctype = content_type(request)
    if ctype not in IMAGE_TYPES:
        raise UnsupportedMediaError(
            f"content type {ctype or '(none)'!r} is not accepted here; send the image as the "
            "raw body with content-type image/jpeg, image/png or image/bmp")
    return await read_body(request, limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ImageTooLargeError(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLargeError(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Upload:
    data: bytes  # the encoded image as sent
    reference: bytes | None = None  # multipart 'reference' field, still encoded


async def _field(upload: object, name: str, limit: int) -> bytes:
    if not isinstance(upload, UploadFile):
        raise ImageError(f"multipart field {name!r} must be a file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"{name} is over the limit of {limit} bytes")
    if not data:
        raise ImageError(f"multipart field {name!r} is empty: send an encoded image")
    return data


def _once(form: FormData) -> None:
    """Refuse a field given more than once: the form keeps each, but only the last would be
    inspected, silently. ``file`` is another name of ``image``, so both count as twice."""
    images = [n for n in ("image", "file") if n in form]
    if len(images) == 2:
        raise ImageError("multipart fields 'image' and 'file' were both given: "
                         "send one image per request, in the field 'image'")
    for name in (*images, "reference"):
        if len(form.getlist(name)) > 1:
            raise ImageError(f"multipart field {name!r} was given twice: "
                             f"send one {'reference image' if name == 'reference' else 'image'} "
                             "per request")


async def read_upload(request: Request, limit: int) -> Upload:
    """The encoded image sent as the raw body (image/jpeg|png|bmp) or as a multipart
    ``image``/``file`` field (with, for reference models, a ``reference`` file field).
    Nothing is decoded here: that happens in the limiter's slot, off the event loop."""
    check_encoding(request)
    ctype = content_type(request)
    reference: bytes | None = None
    if ctype == "multipart/form-data":
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ImageTooLargeError(f"body of {declared} bytes is over the limit of {limit} bytes")
        form = await _read_form(request)
        try:
            _once(form)
            upload = form.get("image") or form.get("file")
            if upload is None:
                raise ImageError("multipart body needs a file field named 'image'")
            data = await _field(upload, "image", limit)
            if form.get("reference") is not None:
                reference = await _field(form.get("reference"), "reference", limit)
        finally:
            await form.close()  # spooled parts go now, not when the GC gets to them
    elif ctype in IMAGE_TYPES:
        data = await read_body(request, limit)
    else:
        raise UnsupportedMediaError(
            f"content type {ctype or '(none)'!r} is not accepted; send image/jpeg, image/png, "
            "image/bmp or multipart/form-data")
    if not data:
        raise ImageError("the request body is empty: send an encoded image")
    return Upload(data, reference)


class _Parser(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary came:
    python-multipart accepts a body cut short and silently drops its unfinished part."""

    complete = False

    def on_end(self) -> None:
        super().on_end()
        self.complete = True


async def _read_form(request: Request) -> FormData:
    try:
        async with aclosing(request.stream()) as stream:
            parser = _Parser(request.headers, stream, max_files=2, max_fields=8)
            form = await parser.parse()
    except MultiPartException as exc:
        raise ImageError(f"malformed multipart body: {exc.message}") from None
    if not parser.complete:
        await form.close()
        raise ImageError("malformed multipart body: it ends before its closing boundary "
                         "('--' + boundary + '--'); the last part may be cut short")
    return form
