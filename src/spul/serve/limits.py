"""Request limits, before any work: body size (413) and read time (408), then the body's shape (422).

Bodies are parsed here, not by pydantic, so a bad body costs one bounded check and a 422 never echoes
its input: each message is one line naming the field or the text index (at most `MAX_DETAIL` chars).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DETAIL = 200
# Control characters refused in texts: C0 except tab, line feed and carriage return; DEL; C1.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (declared or streamed), unread beyond it; 408 when
    the whole body has not arrived within `timeout_s` (a short or stalled upload cannot hold a worker)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, 413)
            return
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.timeout_s):
                size = await self._read(receive, chunks)
        except TimeoutError:
            await self._reject(scope, receive, send, 408)
            return
        if size is None:  # the client went away
            return
        if size > self.max_bytes:
            await self._reject(scope, receive, send, 413)
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as with the real stream

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, chunks: list[bytes]) -> int | None:
        """Read the body into `chunks`; its size (stops past the limit), None on a disconnect."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return size

    async def _reject(self, scope: Scope, receive: Receive, send: Send, code: int) -> None:
        if code == 413:
            detail = f"request body too large: the limit is {self.max_bytes} bytes"
        else:
            detail = f"request body not received within {self.timeout_s:g} s"
        response = JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
        await response(scope, receive, send)


def unprocessable(detail: str) -> HTTPException:
    """A 422 with a one-line message, capped at `MAX_DETAIL` characters."""
    line = " ".join(detail.split())
    return HTTPException(422, detail=line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "...")


def parse_body(body: bytes, fields: dict[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object whose fields are among `fields` (name -> "str" or "list"); 422 otherwise."""
    if not body.strip() and not required:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, huge integers, deep nesting
        raise unprocessable("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise unprocessable(f"the body must be a JSON object with {', '.join(fields)}")
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise unprocessable(f"unknown field in the body; the fields are {', '.join(fields)}")
    for name in required:
        if name not in data:
            raise unprocessable(f"the body has no {name!r} field")
    for name, value in data.items():
        kind = fields[name]
        if value is not None and not isinstance(value, list if kind == "list" else str):
            raise unprocessable(f"{name} must be a {'list of strings' if kind == 'list' else 'string'}")
    return data


def check_texts(texts: list[Any], max_texts: int, max_chars: int) -> list[str]:
    """The texts, checked: how many, each a non-empty string of valid Unicode without control characters."""
    if not texts:
        raise unprocessable("texts is empty: send at least one text")
    if len(texts) > max_texts:
        raise unprocessable(f"{len(texts)} texts in one request; the limit is {max_texts}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise unprocessable(f"texts[{i}] is not a string")
        if len(text) > max_chars:
            raise unprocessable(f"texts[{i}] has {len(text)} characters; the limit is {max_chars}")
        if not text.strip():
            raise unprocessable(f"texts[{i}] is empty")
        if SURROGATE.search(text):
            raise unprocessable(f"texts[{i}] contains a lone surrogate (invalid Unicode)")
        if CONTROL.search(text):
            raise unprocessable(f"texts[{i}] has a control character (only tab and newlines are allowed)")
    return texts
