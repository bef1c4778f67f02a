"""What every request passes before a route sees it: the API keys, and the body's type and size.

Keys (both optional; with neither set the service is open, as on a developer's machine):
- SEGMENTS_API_KEY, the write key: every route. Sent as `x-api-key` or `Authorization: Bearer`; as the password of
  HTTP Basic auth only on GET and HEAD, so a web page a signed-in marketer visits can never post with the
  credentials their browser remembers.
- SEGMENTS_READ_KEY, the read-only key: GET and HEAD only (the reports, /v1 reads), for marketers and dashboards.
The probes (/livez, /readyz, /healthz, /v1/health, /v1/ready) stay open. Keys are compared in constant time and
never logged or echoed.

Bodies: a request with a body must say `content-type: application/json` (415 otherwise: a multipart or HTML form
post never reaches a route), and may be at most SEGMENTS_MAX_BODY_BYTES (default 32 MiB; 413, decided on the
declared length before anything is read, or while a chunked body arrives).
"""

from __future__ import annotations

import base64
import hmac
import os

from starlette.responses import HTMLResponse, JSONResponse

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v1/health", "/v1/ready"})
READ_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def max_body_bytes() -> int:
    return int(os.environ.get("SEGMENTS_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)


class ApiKeyMiddleware:
    """401 for a request without an accepted key (module docstring), except the probes."""

    def __init__(self, app):
        self.app = app
        self.write_key = os.environ.get("SEGMENTS_API_KEY", "").encode()
        self.read_key = os.environ.get("SEGMENTS_READ_KEY", "").encode()

    async def __call__(self, scope, receive, send):
        guarded = scope["type"] == "http" and (self.write_key or self.read_key) and scope.get("path") not in OPEN_PATHS
        if guarded and not self.accepts(scope):
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def accepts(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        reading = scope.get("method", "GET") in READ_METHODS
        given = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if not given and authorization.lower().startswith(b"bearer "):
            given = authorization[7:].strip()
        if not given and reading and authorization.lower().startswith(b"basic "):
            given = basic_password(authorization[6:].strip())
        keys = [self.write_key, self.read_key] if reading else [self.write_key]
        return bool(given) and any(key and hmac.compare_digest(given, key) for key in keys)

    @staticmethod
    async def _refuse(scope, receive, send):
        if scope["path"].startswith("/reports"):
            response = HTMLResponse("<h1>API key needed</h1><p>Sign in with any user name and the service's API key "
                                    "as the password.</p>", status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="segments reports", charset="UTF-8"'})
        else:
            response = JSONResponse({"error": "missing or wrong API key: send it in the x-api-key header (writes "
                                              "need the write key)"}, status_code=401)
        await response(scope, receive, send)


def basic_password(encoded: bytes) -> bytes:
    """The password of an HTTP Basic credential (user:password, base64), b"" when malformed."""
    try:
        return base64.b64decode(encoded, validate=True).partition(b":")[2]
    except ValueError:
        return b""


class UnroutableMiddleware:
    """404 in the service's own error body (HTML under /reports) for a path with control characters: no route
    pattern matches a newline, and BentoML's outer router would answer in plain text, which the OpenAPI document
    does not promise."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
            if path.startswith("/reports"):
                response = HTMLResponse("<h1>Not found</h1><p>No such page.</p>", status_code=404)
            else:
                response = error_response(404, "no such route")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyMiddleware:
    """415 for a body that is not JSON, 413 for one above the cap (module docstring)."""

    def __init__(self, app):
        self.app = app
        self.limit = max_body_bytes()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not chunked and (length is None or length.strip() in (b"", b"0")):
            await self.app(scope, receive, send)  # no body: the route decides (405, 400, ...)
            return
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode("latin-1")[:100] or "none"
            await error_response(415, f"the body must be JSON (content-type: application/json), not {shown}")(scope, receive,
                                                                                                     send)
            return
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            await error_response(413, self._too_large())(scope, receive, send)
            return
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await error_response(413, self._too_large())(scope, receive, send)
                return
        await self.app(scope, _replay(b"".join(body), receive), send)

    def _too_large(self) -> str:
        return (f"the body is larger than {self.limit:,} bytes (SEGMENTS_MAX_BODY_BYTES): split the batch")


def error_response(status: int, message: str, detail: list | None = None) -> JSONResponse:
    """The service's error body: {"error": message} and, where there are some, field-level `detail`."""
    body = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _replay(body: bytes, receive):
    """An ASGI receive that hands the app the body read already, then the connection's own messages (a
    disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
