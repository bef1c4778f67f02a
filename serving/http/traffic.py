"""BentoML's request timeout without keeping every request alive for the whole timeout.

BentoML 1.4's TimeoutMiddleware schedules one timer per request (`loop.call_later(timeout, ...)`) and never cancels
it. A timer keeps the context it was scheduled in, and with it the request's OpenTelemetry span and what the span
holds, until it fires: with the service's 120 s timeout and 40 requests/s, ~4,800 finished requests stayed alive in
the worker, and every full garbage collection (one each ~5 s under that load) walked them, pausing every request in
flight for ~100 ms (bench/README.md, "Load in the README's configuration"). The subclass here answers as BentoML's
does (504 when no answer has started within the timeout; once it has started, the answer is waited for) and
cancels its timer as soon as the answer starts or the route ends; the timer runs in an empty context, so a cancelled
one holds nothing of the request. A route that fails before answering now fails at once, not after the timeout.
`install()` puts it in place of BentoML's class before the HTTP app is built.
"""

from __future__ import annotations

import asyncio
import contextvars

from bentoml._internal.server.http import traffic

from serving.http.guard import error_response


def install() -> None:
    """Replace BentoML's TimeoutMiddleware (its HTTP app imports the class when it builds the middleware stack)."""
    if not getattr(traffic.TimeoutMiddleware, "cancels_its_timer", False):
        traffic.TimeoutMiddleware = _releasing(traffic.TimeoutMiddleware)


def _releasing(base):
    class ReleasingTimeoutMiddleware(base):
        cancels_its_timer = True

        async def __call__(self, scope, receive, send):
            if scope["type"] not in ("http", "websocket"):
                await self.app(scope, receive, send)
                return
            loop = asyncio.get_running_loop()
            answered = loop.create_future()  # done when the answer starts or the route ends

            def settle(_=None) -> None:
                if not answered.done():
                    answered.set_result(None)

            async def send_and_settle(message) -> None:
                settle()
                await send(message)

            route = asyncio.ensure_future(self.app(scope, receive, send_and_settle))
            route.add_done_callback(settle)
            timer = loop.call_later(self.timeout, _time_out, answered, context=contextvars.Context())
            try:
                await answered
            except TimeoutError:
                if route.cancel():
                    await error_response(504, f"no answer within {self.timeout:g} seconds")(scope, receive, send)
                    return
            finally:
                timer.cancel()
            await route

    return ReleasingTimeoutMiddleware


def _time_out(answered: asyncio.Future) -> None:
    if not answered.done():
        answered.set_exception(TimeoutError())
