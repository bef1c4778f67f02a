"""Posted events are processed in a process of their own, one beside each service worker.

An event costs ~20 ms of Python (the customer's features rebuilt from their history, scored, segments evaluated,
the store written: serving/segments/events.py). In the scoring worker, a /score arriving meanwhile waited for the
interpreter lock: with 30 scores and 10 events a second the score p99 was ~70 ms against ~17 ms without events
(bench/README.md). Here events run one at a time in arrival order (so each customer's order is kept) in a process
that loads the serve folder and opens the store itself, and scores go on beside them on the other core.

The process is spawned, not forked (the worker has threads and OpenMP state that a fork would copy half-way),
starts with the worker, and exits when its worker does, even one killed with SIGKILL. If it dies, the request it
was handling answers 503 (its records may or may not be stored; a retry is safe: records are stored once per id)
and the next request starts a new one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

logger = logging.getLogger("segments.events")
PARENT_CHECK_SECONDS = 1.0
LOAD_TIMEOUT_SECONDS = 300.0


class EventsUnavailable(Exception):
    """Events cannot be processed now (503): the message says why and whether to retry."""


# ---------------------------------------------------------------------------------------------------------------
# In the event process.

_processor = None


def _watch_parent(parent: int) -> None:
    """Exit when the worker that started this process is gone: nothing else would ever send it work."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _start(parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _event_processor():
    """This process's EventProcessor, built on first use and again after a failure (a store that opens later)."""
    global _processor
    if _processor is None:
        from serving.segments.events import open_event_path, opening_problem
        from serving.state import load_state, serve_dir

        state = load_state(serve_dir(), rows=1)  # the segments resolve on its columns; ids are the worker's
        if not state.ready:
            raise EventsUnavailable("not ready: " + "; ".join(state.problems))
        try:
            processor = open_event_path(state)
        except Exception as exc:  # noqa: BLE001 - the same readiness problem the worker reports
            raise EventsUnavailable("not ready: " + opening_problem(exc)) from None
        gc.collect()
        gc.freeze()  # the models' long-lived objects, out of every later collection (as in the worker)
        _processor = processor
    return _processor


def _warm() -> str | None:
    """Load everything before the first event; None, or why not yet (tried again by the first event)."""
    try:
        _event_processor()
    except EventsUnavailable as exc:
        return str(exc)
    return None


def _ingest(rows: list[dict]) -> list[dict]:
    from serving.segments.events import HistoryReplaced
    from serving.segments.store import STORE_DOWN, unavailable

    processor = _event_processor()
    try:
        return processor.ingest(rows)
    except STORE_DOWN as exc:  # each customer's records commit or not as one: none is half stored
        logger.error("segment store error: %s", exc)
        raise EventsUnavailable(unavailable(exc)) from None
    except HistoryReplaced as exc:  # raised before anything of the customer is written
        logger.error("%s", exc)
        raise EventsUnavailable(f"not ready: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# In the service worker.

class EventProcess:
    """The worker's handle on its event process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._warming = self._spawn()

    @staticmethod
    def _spawn() -> tuple[ProcessPoolExecutor, Future]:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_start,
                                   initargs=(os.getpid(),))
        return pool, pool.submit(_warm)

    def wait_loaded(self, seconds: float = LOAD_TIMEOUT_SECONDS) -> None:
        """Wait until the process has loaded the serve folder, so the worker says it is up only once events can be
        served at once (a later event would otherwise wait for the load)."""
        try:
            problem = self._warming.result(timeout=seconds)
        except Exception as exc:  # noqa: BLE001 - too slow or dead: the first event retries (and says why)
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            logger.error("the event process is not ready yet: %s", problem)

    async def ingest(self, rows: list[dict]) -> list[dict]:
        """`EventProcessor.ingest(rows)` in the event process; EventsUnavailable when it cannot run now."""
        pool = self._pool
        try:
            future = pool.submit(_ingest, rows)
        except BrokenProcessPool:  # it died while idle: nothing of this request reached it
            pool = self._restart(pool)
            future = pool.submit(_ingest, rows)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(pool)
            raise EventsUnavailable("the event process stopped while handling this request; send it again "
                                    "(records are stored once per id)") from None

    def _restart(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A new process in place of `broken` (once, however many requests found it broken)."""
        with self._lock:
            if self._pool is broken:
                logger.error("the event process stopped; starting another")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool, self._warming = self._spawn()
            return self._pool
