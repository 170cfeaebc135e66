"""The request-size limit as ASGI middleware: a body over the limit is answered 413 with the
API's JSON error, before any form parsing, whether the client declared its length or not.

The rest of an oversized body is read and dropped (up to ``drain_bytes``) before answering:
a server that answers while the client is still sending closes a socket with unread data,
and the client sees a reset connection instead of the 413.
"""
from __future__ import annotations

from starlette.responses import JSONResponse


class _TooLarge(Exception):
    """Raised inside ``receive`` once the body passed the limit (stops every reader)."""


class BodyLimit:
    """Wraps an ASGI app: HTTP request bodies over ``max_bytes`` get a 413."""

    def __init__(self, app, max_bytes: int, drain_bytes: int = 256 * 2**20):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, self.drain_bytes)
            return await self._refuse(declared, scope, receive, send)
        state = {"seen": 0, "over": False, "started": False, "ended": False}

        async def counted():
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            state["ended"] = not message.get("more_body", False)
            if state["seen"] > self.max_bytes:
                state["over"] = True
                raise _TooLarge
            return message

        async def guarded(message):
            # Whatever the app answers to a body cut short (a parse error, say) is replaced
            # by the 413 it really is.
            if state["over"]:
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        if state["over"] and not state["started"]:
            if not state["ended"]:   # past the last chunk, receive() would wait forever
                await _drain(receive, self.drain_bytes)
            await self._refuse(state["seen"], scope, receive, send)

    async def _refuse(self, size, scope, receive, send):
        response = JSONResponse(
            {"error": f"The upload is over the {self.max_bytes / 2**20:.0f} MB limit "
                      f"({size / 2**20:.1f} MB or more); send a smaller photo."},
            status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive, limit: int) -> None:
    """Reads and drops the rest of the body (at most ``limit`` bytes)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))
