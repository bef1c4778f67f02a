"""The request timeout in front of every route (serving/http/traffic.py), as BentoML's HTTP app stacks it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref

import pytest
from bentoml._internal.server.http import traffic

SPAN = contextvars.ContextVar("span")  # what an outer middleware (OpenTelemetry's) leaves in a request's context


class Span:
    pass


def _app(pause_before_s: float = 0.0, pause_between_s: float = 0.0, fail: bool = False):
    async def app(scope, receive, send):
        await asyncio.sleep(pause_before_s)
        if fail:
            raise RuntimeError("the route failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(pause_between_s)
        await send({"type": "http.response.body", "body": b"{}"})
    return app


async def _request(middleware) -> tuple[weakref.ref, list[dict]]:
    """One request through `middleware`, in a task of its own as the server runs it: (its span, what was sent)."""
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def one():
        span = Span()
        SPAN.set(span)
        await middleware({"type": "http", "path": "/score", "method": "POST"}, receive, send)
        return weakref.ref(span)

    return await asyncio.create_task(one()), sent


def _alive_after(middleware_class) -> bool:
    async def main():
        span, sent = await _request(middleware_class(_app(), timeout=120))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        await asyncio.sleep(0)
        gc.collect()
        return span() is not None
    return asyncio.run(main())


@pytest.fixture(scope="module")
def ours():
    """The TimeoutMiddleware BentoML builds its HTTP app with once the service's module is imported (as `segments
    serve` imports it)."""
    import serving.http.service  # noqa: F401 - installs serving/http/traffic.py's class

    return traffic.TimeoutMiddleware


def test_the_service_uses_the_timeout_that_lets_requests_go(ours):
    assert ours.cancels_its_timer and not getattr(ours.__mro__[1], "cancels_its_timer", False)


def test_an_answered_request_is_not_kept_alive_for_the_timeout(ours):
    assert not _alive_after(ours)


def test_bentomls_own_timeout_still_keeps_answered_requests_alive(ours):
    """Why serving/http/traffic.py exists. When this fails, BentoML has fixed it: drop the replacement."""
    assert _alive_after(ours.__mro__[1])


def test_no_answer_within_the_timeout_is_a_504_in_the_service_error_body(ours):
    async def main():
        return await _request(ours(_app(pause_before_s=5), timeout=0.05))
    _, sent = asyncio.run(main())
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "no answer within 0.05 seconds"}


def test_an_answer_started_in_time_is_not_cut_off(ours):
    async def main():
        return await _request(ours(_app(pause_between_s=0.2), timeout=0.05))
    _, sent = asyncio.run(main())
    assert sent == [{"type": "http.response.start", "status": 200, "headers": []},
                    {"type": "http.response.body", "body": b"{}"}]


def test_a_route_that_fails_before_answering_fails_at_once_not_after_the_timeout(ours):
    async def main():
        return await asyncio.wait_for(_request(ours(_app(fail=True), timeout=120)), timeout=5)
    with pytest.raises(RuntimeError, match="the route failed"):
        asyncio.run(main())
