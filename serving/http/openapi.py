"""The OpenAPI document apps generate clients from, made to say what the service really answers.

BentoML writes the document from the routes' types, but it documents its 400 body's `detail` as a string (it sends a
list of field errors) and knows nothing of the statuses our guard and routes send (401, 404, 413, 415, 503) nor of
the reports' HTML. `document(spec)` completes it; `OpenApiMiddleware` serves the result at /docs.json (and the
docs UI reads it from there). CI fuzzes the live service against it (schemathesis, tests/test_serving_http.py).
"""

from __future__ import annotations

import copy
import json

from serving.http.guard import OPEN_PATHS
from serving.segments.export import MEDIA_TYPES as EXPORT_MEDIA_TYPES

ERROR = {"type": "object", "title": "Error", "required": ["error"],
         "properties": {"error": {"type": "string", "description": "What is wrong, in words."},
                        "detail": {"description": "Field-level errors (a list of {loc, msg, type}) where there are "
                                                  "some."}}}
# status -> why, for every operation the guard sees (the probes excepted)
GUARDED = {"401": "Missing or wrong API key (SEGMENTS_API_KEY; SEGMENTS_READ_KEY for GET)."}
WITH_BODY = {"400": "The body breaks the schema: `detail` lists the fields.",
             "413": "Too many customers or records (SEGMENTS_MAX_BATCH), or a body above SEGMENTS_MAX_BODY_BYTES.",
             "415": "The body is not application/json.",
             "422": "A valid body that cannot be served as asked (the message says why).",
             "503": "Not ready: the reason is in `error`."}
READS = {"400": "A query parameter out of range.", "404": "No such customer or segment.",
         "503": "Not ready, or the segment store is unavailable: the reason is in `error`."}
PROBES = OPEN_PATHS  # what the guard lets through without a key (/metrics is guarded)
# Where an answer leads (OpenAPI links: a client, and the fuzzer's stateful phase, can follow them):
# (path, method) of the answer -> link name -> (path, method) of the next operation, its parameters from the answer.
SEGMENT_NAME = {"name": "$response.body#/segments/0/name"}
LINKS = {("/v1/segments", "get"): {"segment": ("/v1/segments/{name}", "get", SEGMENT_NAME),
                                   "export": ("/v1/segments/{name}/export", "get", SEGMENT_NAME)},
         ("/v1/subscriptions/{name}", "put"): {"delete": ("/v1/subscriptions/{name}", "delete",
                                                          {"name": "$response.body#/name"})},
         ("/score", "post"): {"customer": ("/v1/customers/{customer_id}", "get",
                                           {"customer_id": "$response.body#/customers/0/customer_id"})}}
HTML = {"text/html": {"schema": {"type": "string"}}}


def document(spec: dict) -> dict:
    """BentoML's document with every status the service sends, its error body, and HTML for the reports."""
    out = copy.deepcopy(spec)
    out.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for path, operations in out.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if path.startswith("/reports"):
                _reports(responses)
            elif method == "post":
                _add(responses, WITH_BODY, replace=("400", "404", "500"))
            elif path.startswith("/v1") and path not in PROBES:
                _add(responses, {**READS, **WITH_BODY} if method == "put" else READS)
            if path not in PROBES:
                _add(responses, GUARDED)
            if path.endswith("/export"):
                responses["200"] = {"description": "The export, streamed (csv, parquet or jsonl as asked).",
                                    "content": {media: {"schema": {"type": "string", "format": "binary"}}
                                                for media in EXPORT_MEDIA_TYPES.values()}}
            if path == "/v1/ready":
                _add(responses, {"503": "Not ready: `reason` says why."}, schema={"type": "object"})
    _link(out["paths"])
    return out


def _link(paths: dict) -> None:
    """Add LINKS to the 200 answers, each naming its target by operationId (operations absent here are skipped)."""
    for (path, method), links in LINKS.items():
        answer = paths.get(path, {}).get(method, {}).get("responses", {}).get("200")
        targets = {name: paths.get(target, {}).get(how, {}).get("operationId")
                   for name, (target, how, _) in links.items()}
        if answer is not None:
            answer["links"] = {name: {"operationId": targets[name], "parameters": parameters}
                               for name, (_, _, parameters) in links.items() if targets[name]}


def _add(responses: dict, statuses: dict[str, str], replace: tuple[str, ...] = (), schema: dict | None = None) -> None:
    for status in replace:
        responses.pop(status, None)
    for status, why in statuses.items():
        responses[status] = {"description": why, "content": {
            "application/json": {"schema": schema or {"$ref": "#/components/schemas/Error"}}}}


def _reports(responses: dict) -> None:
    """The marketers' pages: HTML, including the 401 challenge, a 404 page and a 503 page."""
    for status, why in {"200": "The page.", "401": "Sign in (HTTP Basic).", "404": "No such page or customer.",
                        "503": "Not ready."}.items():
        responses[status] = {"description": why, "content": HTML}


class OpenApiMiddleware:
    """Serves `document(spec())` at GET /docs.json (built once per worker); `spec` returns the service's own
    document (BentoML's)."""

    def __init__(self, app, spec):
        self.app, self.spec = app, spec
        self.body: bytes | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != "/docs.json" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        if self.body is None:
            self.body = json.dumps(document(self.spec())).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self.body)).encode())]})
        await send({"type": "http.response.body", "body": self.body})
