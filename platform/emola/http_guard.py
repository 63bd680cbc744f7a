"""The request body cap at Ray Serve's HTTP proxy, before anything is buffered.

Serve's proxy reads every request body from the client into an unbounded queue, whatever
the application later does with it: a cap that only the application enforces still lets a
chunked upload of any size fill the proxy's memory. :class:`BodyCap` runs inside the proxy
(Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` hook, set to
``emola.http_guard:proxy_middlewares``) and counts the bytes as they arrive: a declared
``Content-Length`` over the cap, or a body that passes it, is answered 413 at once; the rest
of the body is not read (the connection closes), and the request ends for the application.

The cap is ``EMOLA_MAX_BODY_BYTES`` (default 10 MiB, ``serve.max_body_bytes``'s default);
``serve/local.py`` and the RayService set it from ``serve.max_body_bytes``.
"""

from __future__ import annotations

import json
import os

MAX_BODY_ENV = "EMOLA_MAX_BODY_BYTES"
CALLBACK = "emola.http_guard:proxy_middlewares"
DEFAULT_MAX_BODY = 10 * 2**20


class BodyCap:
    """A plain ASGI middleware: 413 for a body over ``max_bytes``, counted on what is received."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 20 or int(length) > self.max_bytes):
            await self._refuse(send, f"request body of {length.decode(errors='replace')[:24]} bytes exceeds the cap "
                                     f"of {self.max_bytes}")
            return
        state = {"received": 0, "refused": False, "started": False}

        async def capped_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await self._refuse(send, f"request body exceeds the cap of {self.max_bytes} bytes")
                    return {"type": "http.disconnect"}   # the application's request ends here
            return message

        async def guarded_send(message):
            if state["refused"]:
                return   # the 413 went out; nothing the application sends after it
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, capped_receive, guarded_send)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                     "code": "body_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def max_body_bytes() -> int:
    value = os.environ.get(MAX_BODY_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_MAX_BODY


def proxy_middlewares() -> list:
    """What Serve's proxy applies around its HTTP app (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    from starlette.middleware import Middleware

    return [Middleware(BodyCap, max_bytes=max_body_bytes())]
