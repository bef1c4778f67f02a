"""The scoring service (BentoML 1.4): thin HTTP around `serving.http.request_features` and `serving.scorer`.

Run with `segments serve` (or `bentoml serve serving.http.service:SegmentsService`). Each worker loads the serve folder
once (SEGMENTS_SERVE_DIR, built by `segments build`): the champion models at their pinned registry versions from the
BentoML store, the feature table ids are looked up in, and the population's typical values.

Endpoints: POST /score, POST /explain (JSON; schemas in the OpenAPI at /docs.json and the UI at /);
POST /events; GET /v1/customers/{id}, /v1/customers/{id}/counterfactual, /v1/segments, /v1/segments/{name},
/v1/flows; GET /v1/health, /v1/ready (503 with the reason when a model is missing or incompatible; `warnings` for
stale, decaying or drifting models, which stay 200: serving.health), /v1/info;
BentoML's own /livez, /readyz and Prometheus /metrics. Marketers' HTML, read-only: /reports/ (the files
`segments report` wrote into SEGMENTS_REPORTS_DIR) and /reports/customers/{id} (rendered per request).

Status codes: 400 for a body that breaks the schema (field-level errors, BentoML's format: loc, msg, type; a record's
time or amount outside the data contract's rules is one of them) or a query parameter out of range; 422 for a valid
body that cannot be served as asked (feature rows lacking features, ids at another as_of, duplicate records); 413
above the batch cap (SEGMENTS_MAX_BATCH, default 10,000) or the body cap; 415 for a body that is not JSON; 401
without an accepted key (serving.http.guard: the write key SEGMENTS_API_KEY, the read-only SEGMENTS_READ_KEY; the
probes stay open); 503 when not ready. An unknown customer is an error in its own item; the rest is scored.
POST /events is all or nothing for input errors: one bad record refuses the request (400, naming it) before anything
is stored; valid records are processed in the worker's event process (serving.http.event_process), so an event's
work never holds the interpreter a score needs. Errors never carry stack traces (they go to the server log).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import html
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import bentoml
from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from features.catalog import FEATURE_SET_VERSION
from features.time import naive_utc
from serving.http.event_process import EventProcess, EventsUnavailable
from serving.http.guard import ApiKeyMiddleware, BodyMiddleware, UnroutableMiddleware, error_response
from serving.http.metrics import install as install_route_metrics
from serving.http.openapi import OpenApiMiddleware
from serving.http.request_features import RequestError, resolve_features
from serving.http.schemas import (
    DEFAULT_MAX_BATCH,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplainResponse,
    ScoreRequest,
    ScoreResponse,
    SubscriptionBody,
)
from serving.http.traffic import install as install_request_timeout
from serving.segments import export as exports
from serving.segments.counterfactuals import DEFAULT_GOAL, DEFAULT_MAX_ACTIONS
from serving.segments.events import HistoryReplaced
from serving.segments.store import STORE_DOWN, unavailable
from serving.state import load_state, serve_dir

logger = logging.getLogger("segments.service")
MAX_OFFSET = 10**9  # members paged past: beyond any programme, and far inside both databases' integers
MAX_MEMBERS = 10_000  # members in one page
MAX_DAILY_DAYS = 3660  # a segment's day-by-day changes over at most ten years per request
MAX_GOAL_CHARACTERS = 500
SUBSCRIPTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # 1-100 letters, digits, '_', '.' or '-'
MOMENT = ("An ISO 8601 date or date-time (e.g. 2026-01-01 or 2026-01-01T08:00:00+01:00); without an offset, UTC "
          "(Unix seconds are taken too).")
STORE_RETRY_SECONDS = 5  # a store that failed to open is tried again at most this often


def store_down(error: Exception) -> JSONResponse:
    """503 for a database that stopped answering: the request can be retried once it is back (nothing was half
    written: every write is one transaction)."""
    logger.error("segment store error: %s", error)
    return error_response(503, unavailable(error))


def store_errors_as_503(route):
    """A read route whose store calls may meet a database that is down, or whose features would be rebuilt from a
    serve folder replaced under the service: 503 with the reason, not 500."""
    @functools.wraps(route)
    def guarded(*args, **kwargs):
        try:
            return route(*args, **kwargs)
        except STORE_DOWN as error:
            return store_down(error)
        except HistoryReplaced as error:
            return error_response(503, f"not ready: {error}")

    return guarded

status_app = FastAPI(title="segments status", openapi_url=None, docs_url=None, redoc_url=None)
# Marketers' HTML: the report files written by `segments report` (SEGMENTS_REPORTS_DIR) and a page per customer.
reports_app = FastAPI(title="segments reports", openapi_url=None, docs_url=None, redoc_url=None)
# Reports are self-contained HTML (charts inline): nothing else is served, so no file from the folder (an SVG, say) can
# run script from the API's origin; the pages have no script of their own, and the policy header keeps it so.
REPORT_TYPE = "text/html; charset=utf-8"
REPORT_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                            "form-action 'self'", "X-Content-Type-Options": "nosniff"}


@status_app.exception_handler(StarletteHTTPException)
async def status_error(_request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors of the routing itself (no such route, a path that matches none) in the API's JSON error body."""
    return error_response(exc.status_code, str(exc.detail))


@status_app.exception_handler(RequestValidationError)
async def status_bad_request(_request, exc: RequestValidationError) -> JSONResponse:
    """A query parameter or body that breaks the route's types: 400 with the fields, as the scoring routes answer."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return error_response(400, f"{len(detail)} invalid field(s): see detail", detail)


@reports_app.exception_handler(StarletteHTTPException)
async def report_error(_request, exc: StarletteHTTPException) -> HTMLResponse:
    return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{html.escape(str(exc.detail))}</p>", status_code=exc.status_code,
                        headers=REPORT_HEADERS)


def segment_evaluation(rules) -> dict:
    """The `SegmentEvaluation` of a score response from the `SegmentRules` it was evaluated with."""
    as_of = rules.thresholds_as_of
    return {"definitions_hash": rules.evaluated.definitions_hash,
            "thresholds_as_of": as_of.isoformat() if as_of is not None else None,
            "not_evaluated": rules.not_evaluated}


def max_batch() -> int:
    return int(os.environ.get("SEGMENTS_MAX_BATCH") or DEFAULT_MAX_BATCH)


def reports_dir() -> Path:
    return Path(os.environ.get("SEGMENTS_REPORTS_DIR") or "reports").resolve()


def report_file(path: str) -> Path | None:
    """The file `path` names inside the reports folder, or None: no way out of the folder, only report file types."""
    folder = reports_dir()
    if "\x00" in path:
        return None
    target = (folder / (path or "index.html")).resolve()
    if target.is_dir():
        target = target / "index.html"
    if not target.is_relative_to(folder) or target.suffix != ".html" or not target.is_file():
        return None
    return target


def worker_count() -> int:
    """SEGMENTS_WORKERS (`segments serve --workers`): worker processes, each with the models loaded (default 1)."""
    value = os.environ.get("SEGMENTS_WORKERS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SEGMENTS_WORKERS must be a whole number >= 1, got {value!r}")
    return int(value)


@bentoml.service(name="segments", traffic={"timeout": 120}, workers=worker_count())
@bentoml.asgi_app(status_app, path="/v1")
@bentoml.asgi_app(reports_app, path="/reports")
class SegmentsService:
    """Predictive segments, scores and reasons for loyalty-programme customers."""

    def __init__(self) -> None:
        self.event_process = EventProcess()  # loads beside this worker, on the other core
        self.state = load_state(serve_dir())
        self.max_batch = max_batch()
        self.store, self.events = None, None
        self.segments_problem: str | None = None
        self._segments_tried = 0.0
        if self.state.ready:
            self._start_segments()
        for problem in self.state.problems:
            logger.error("not ready: %s", problem)
        self.event_process.wait_loaded()
        # The loaded models and tables are ~400k long-lived objects: a full collection scanning them paused requests
        # for ~230 ms once per ~1,000 requests. Frozen, collections scan only what requests allocate.
        gc.collect()
        gc.freeze()

    def _start_segments(self) -> None:
        """The membership store (SEGMENTS_DB_URL) and the event path. A failure is a readiness problem, tried again
        (at most every STORE_RETRY_SECONDS) by the requests that need them, so a database that comes up later is
        used without a restart."""
        from serving.segments.events import open_event_path, opening_problem

        self._segments_tried = time.monotonic()
        try:
            self.events = open_event_path(self.state)
            store = self.store = self.events.store
            self.segments_problem = None
            if os.environ.get("SEGMENTS_DELIVER") == "1":  # `segments serve --deliver`: webhooks from this worker
                self._start_delivery(store)
        except Exception as exc:  # noqa: BLE001 - reported by readiness, with its reason
            self.segments_problem = opening_problem(exc)
            logger.error("not ready: %s", self.segments_problem)

    def _start_delivery(self, store) -> None:
        """A daemon thread posting the outbox (serving/segments/delivery.py); workers share it through leases."""
        import threading

        from serving.segments.delivery import Deliverer

        def deliver() -> None:
            while True:
                try:
                    Deliverer(store).run(threading.Event())
                except Exception:  # a database that went away: logged, tried again shortly
                    logger.exception("webhook delivery stopped; retrying in %s s", STORE_RETRY_SECONDS)
                    time.sleep(STORE_RETRY_SECONDS)

        threading.Thread(target=deliver, name="webhook-delivery", daemon=True).start()

    def _segments_ready(self) -> str | None:
        """None when the models, the store and the event path are up (starting the last two if due), else why
        not."""
        if not self.state.ready:
            return "; ".join(self.state.problems)
        if self.events is None and time.monotonic() - self._segments_tried >= STORE_RETRY_SECONDS:
            self._start_segments()
        if self.events is not None:
            return None
        return self.segments_problem or "the segment store is not open"

    def _problems(self) -> list[str]:
        """Why the service cannot serve now: the serve folder's problems, the store not opening or not answering."""
        if not self.state.ready:
            return list(self.state.problems)
        problem = self._segments_ready() or self.store.ping() or self.events.history_problem()
        return [problem] if problem else []

    def __is_ready__(self) -> bool:
        return not self._problems()

    def _versions(self, as_of) -> dict:
        return {"models": self.state.versions, "feature_set_version": FEATURE_SET_VERSION,
                "as_of": as_of.isoformat()}

    def _resolve(self, request):
        """Common checks of score and explain: readiness, batch cap, then features (or an error response)."""
        if not self.state.ready:
            return None, error_response(503, "not ready: " + "; ".join(self.state.problems))
        if len(request.customers) > self.max_batch:
            return None, error_response(413, f"{len(request.customers):,} customers in one request; the limit is "
                                     f"{self.max_batch:,} (SEGMENTS_MAX_BATCH): split the batch")
        try:
            return resolve_features(self.state, request.customers, request.as_of), None
        except RequestError as exc:
            return None, error_response(422, str(exc), exc.detail)

    @bentoml.api(route="/score")
    def score(self, request: ScoreRequest, /) -> ScoreResponse:
        """Scores and segments per customer (and reasons with explain: true). `segments` are the served segment
        definitions the customer satisfies (the membership store's names); `in top N%` conditions use the last
        refresh's thresholds, and segments that cannot be evaluated are listed in `segment_evaluation`."""
        resolved, error = self._resolve(request)
        if error is not None:
            return error
        problem = self._segments_ready()
        if problem is not None:
            return error_response(503, "not ready: " + problem)
        try:
            rules = self.events.segment_rules()
        except STORE_DOWN as exc:
            return store_down(exc)
        scored = iter(self.state.scorer.results(resolved.features, request.explain, request.top_k, rules))
        items = [item_error if item_error is not None else next(scored) for item_error in resolved.errors]
        return ScoreResponse.model_validate({"versions": self._versions(resolved.as_of),
                                             "segment_evaluation": segment_evaluation(rules), "customers": items})

    @bentoml.api(route="/explain")
    def explain(self, request: ExplainRequest, /) -> ExplainResponse:
        """Top reasons per customer and model, grouped to business attributes (exact TreeSHAP)."""
        resolved, error = self._resolve(request)
        if error is not None:
            return error
        explained = iter(self.state.scorer.explanations(resolved.features, request.top_k)
                         if not resolved.features.empty else [])
        items = []
        for customer, item_error in zip(request.customers, resolved.errors, strict=True):
            if item_error is not None:
                items.append({"customer_id": item_error["customer_id"], "error": item_error["error"]})
            else:
                items.append({"customer_id": customer.customer_id, "reasons": next(explained)})
        return ExplainResponse.model_validate({"versions": self._versions(resolved.as_of), "customers": items})

    @bentoml.api(route="/events")
    async def post_events(self, request: EventsRequest, /) -> EventsResponse:
        """Push new transactions and engagement events. Each is stored durably (once per id) before the answer; the
        customer's features are rebuilt, rescored and their segments updated; the answer lists the changes."""
        # Once started this is a check of memory; before, it may open the store: not on the event loop.
        problem = self._segments_ready() if self.events is not None else await asyncio.to_thread(self._segments_ready)
        if problem is not None:
            return error_response(503, "not ready: " + problem)
        rows = request.rows()
        if len(rows) > self.max_batch:
            return error_response(413, f"{len(rows):,} records in one request; the limit is {self.max_batch:,} "
                               f"(SEGMENTS_MAX_BATCH): split the batch")
        try:  # in the event process (serving.http.event_process): never holding this worker's interpreter
            updates = await self.event_process.ingest(rows)
        except EventsUnavailable as exc:
            return error_response(503, str(exc))
        return EventsResponse.model_validate({"models": self.state.versions,
                                              "feature_set_version": FEATURE_SET_VERSION, "customers": updates})

    @status_app.get("/customers/{customer_id}")
    @store_errors_as_503
    def customer_segments(self, customer_id: str):
        """A customer's current segments and their history of entries and exits with causes (newest first)."""
        store, error = self._read_store()
        if error is not None:
            return error
        info = store.current.customer(customer_id)
        if not info["segments"] and not info["history"]:
            return error_response(404, f"customer {customer_id!r} has no membership record")
        return json.loads(json.dumps(info, default=str))

    @status_app.get("/segments")
    @store_errors_as_503
    def segments(self):
        """Every evaluated segment: kind, description, holdout share and exact current size."""
        store, error = self._read_store()
        if error is not None:
            return error
        return {"segments": [{"name": s.name, "kind": s.kind, "description": s.description,
                              "holdout_percent": s.holdout_percent, "size": store.current.segment_size(s.name)}
                             for s in self.events.segments],
                "not_evaluated": self.events.skipped}

    @status_app.get("/segments/{name}")
    @store_errors_as_503
    def segment(self, name: str, limit: Annotated[int, Query(ge=1, le=MAX_MEMBERS)] = 100,
                offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                start: Annotated[datetime | None, Query(description=MOMENT)] = None,
                end: Annotated[datetime | None, Query(description=MOMENT)] = None):
        """A segment's exact size, a page of members (by customer id), and with start and end its entries, exits and
        size per day."""
        store, error = self._read_store()
        if error is not None:
            return error
        if name not in self.events.segments.names():
            return error_response(404, f"no segment named {name!r}")
        body = {"segment": name, "size": store.current.segment_size(name),
                "members": store.current.members(name, limit=limit, offset=offset), "limit": limit, "offset": offset}
        if start is not None and end is not None:
            try:
                start_at, end_at = naive_utc(start), naive_utc(end)
                if not 0 <= (end_at - start_at).days <= MAX_DAILY_DAYS:
                    raise ValueError(f"end must be after start and at most {MAX_DAILY_DAYS:,} days later")
                daily = store.changes.daily_changes(name, start_at, end_at)
            except (ValueError, OverflowError) as exc:
                return error_response(400, f"start/end: {exc}")
            body["daily"] = daily.to_dict(orient="records")
        return json.loads(json.dumps(body, default=str))

    @status_app.get("/segments/{name}/export")
    @store_errors_as_503
    def segment_export(self, name: str, format: exports.ExportFormat = "csv", include_holdout: bool = False,
                       changes_since: Annotated[datetime | None, Query(description=MOMENT)] = None, fields: str = ""):
        """A segment's audience for a campaign tool, streamed in chunks (constant memory): its current members, or
        with changes_since its entries and exits logged since then; csv, parquet or jsonl. The holdout is left out
        unless include_holdout; fields adds values the customers were last evaluated on. Headers name the store
        position it reflects (X-Segments-Log-Seq, X-Segments-Refresh-Id)."""
        store, error = self._read_store()
        if error is not None:
            return error
        if name not in self.events.segments.names():
            return error_response(404, f"no segment named {name!r}")
        try:
            since = naive_utc(changes_since) if changes_since is not None else None
            request = exports.ExportRequest(name, self.events.segments[name].holdout_percent, include_holdout, since,
                                    tuple(f.strip() for f in fields.split(",") if f.strip()))
            export = exports.SegmentExport(store, request).__enter__()
        except (ValueError, OverflowError) as exc:  # ExportError is a ValueError
            return error_response(400, str(exc))

        def body():
            try:
                yield from exports.stream_export(export, format)
            finally:
                export.__exit__(None, None, None)

        headers = {**export.position.headers(), "Content-Disposition": f'attachment; filename="{name}.{format}"'}
        return StreamingResponse(body(), media_type=exports.MEDIA_TYPES[format], headers=headers)

    @status_app.get("/subscriptions")
    @store_errors_as_503
    def subscriptions(self):
        """Webhook subscriptions, each with its queued, delivered and dead changes (serving/segments/delivery.py)."""
        from serving.segments.delivery import list_subscriptions

        store, error = self._read_store()
        if error is not None:
            return error
        return {"subscriptions": list_subscriptions(store)}

    @status_app.put("/subscriptions/{name}")
    @store_errors_as_503
    def put_subscription(self, name: Annotated[str, PathParam(pattern=SUBSCRIPTION_NAME)], body: SubscriptionBody):
        """Add or replace a webhook subscription: from now on every entry or exit of its segments is queued for it
        in the change's transaction (write key)."""
        from serving.segments.delivery import Subscription, put_subscription, subscription_problems

        store, error = self._read_store()
        if error is not None:
            return error
        sub = Subscription(name, body.url, tuple(body.segments), tuple(body.changes), body.secret_env)
        problems = subscription_problems(sub, self.events.segments)
        if problems:
            return error_response(422, "; ".join(problems))
        created = put_subscription(store, sub)
        return {"name": name, "created": created, "url": sub.url, "segments": list(sub.segments),
                "changes": list(sub.changes), "secret_env": sub.secret_env}

    @status_app.delete("/subscriptions/{name}")
    @store_errors_as_503
    def delete_subscription(self, name: str):
        """Stop a webhook subscription (changes queued before are still delivered)."""
        from serving.segments.delivery import deactivate_subscription

        store, error = self._read_store()
        if error is not None:
            return error
        if not deactivate_subscription(store, name):
            return error_response(404, f"no active subscription named {name!r}")
        return {"name": name, "active": False}

    @status_app.get("/flows")
    @store_errors_as_503
    def flows(self, start: Annotated[datetime, Query(description=MOMENT)],
              end: Annotated[datetime, Query(description=MOMENT)],
              segments: Annotated[str, Query(description="Segment names, comma-separated.")]):
        """Customers moving between the comma-separated segments from start to end (null: none of them)."""
        store, error = self._read_store()
        if error is not None:
            return error
        try:
            start, end = naive_utc(start), naive_utc(end)
        except OverflowError as exc:  # an offset that moves year 1 or 9999 out of range
            return error_response(400, f"start/end: {exc}")
        table = store.changes.flows(start, end, [s for s in segments.split(",") if s])
        return json.loads(table.to_json(orient="records"))

    @status_app.get("/customers/{customer_id}/counterfactual")
    @store_errors_as_503
    def counterfactual(self, customer_id: str,
                       goal: Annotated[str, Query(max_length=MAX_GOAL_CHARACTERS)] = DEFAULT_GOAL,
                       max_actions: Annotated[int, Query(ge=1, le=6)] = DEFAULT_MAX_ACTIONS):
        """The smallest change of actionable behaviour (purchases, visits, clicks, redemptions; never age, region or
        tenure) that reaches `goal` ("leave SEGMENT", "enter SEGMENT" or a condition such as "churn_probability <
        0.3"), tried for real: the records are added to the history, the features rebuilt and the models rerun."""
        from serving.segments.counterfactuals import SearchLimits, counterfactuals

        _, error = self._read_store()
        if error is not None:
            return error
        if not self._knows(customer_id):
            return error_response(404, f"customer {customer_id!r} is not in the served feature table and has no posted "
                               f"records")
        try:
            result = counterfactuals(self.events, customer_id, goal, limits=SearchLimits(max_actions=max_actions))
        except ValueError as exc:
            return error_response(422, str(exc))
        return json.loads(json.dumps(result.to_dict(), default=str))

    def _knows(self, customer_id: str) -> bool:
        return customer_id in self.state.table.index or any(
            len(frame) for frame in self.store.current.posted([customer_id]).values())

    @reports_app.get("/customers/{customer_id}")
    def customer_page(self, customer_id: str, goal: str | None = None):
        """A customer's page: scores with reasons, segments and their history, and what would move them."""
        from serving.reports.customer import customer_page

        _, error = self._read_store()
        if error is not None:
            return HTMLResponse(f"<h1>Not ready</h1><p>{html.escape(error.body.decode())}</p>", status_code=503)
        if not self._knows(customer_id):
            return HTMLResponse(f"<h1>Unknown customer</h1><p>No customer {html.escape(customer_id)!r} in the served "
                                f"feature table or the posted events.</p>", status_code=404)
        try:
            page = customer_page(self.events, customer_id, goal)
        except HistoryReplaced as exc:
            return HTMLResponse(f"<h1>Not ready</h1><p>{html.escape(str(exc))}</p>", status_code=503)
        return HTMLResponse(page, headers=REPORT_HEADERS)

    @reports_app.get("/{path:path}")
    def report(self, path: str = ""):
        """A report file written by `segments report` (read-only)."""
        target = report_file(path)
        if target is None:
            return HTMLResponse(f"<h1>Not found</h1><p>No report {html.escape(path)!r} in the reports folder. "
                                f"Write the reports with <code>segments report --out DIR</code> and start the service "
                                f"with <code>segments serve --reports DIR</code>.</p>", status_code=404)
        return FileResponse(target, media_type=REPORT_TYPE, headers=REPORT_HEADERS)

    def _served_segments(self) -> dict:
        """/v1/info's segments: those /score evaluates now, and those it leaves out with the reason."""
        if self.events is None:
            return {"evaluated": [], "not_evaluated": {}, "thresholds_as_of": None}
        rules = self.events.segment_rules()
        return {"evaluated": [{"name": s.name, "kind": s.kind, "description": s.description}
                              for s in rules.evaluated],
                **segment_evaluation(rules)}

    def _read_store(self):
        problem = self._segments_ready()
        if problem is not None:
            return None, error_response(503, "not ready: " + problem)
        return self.store, None

    @status_app.get("/health")
    def health(self) -> dict:
        """Liveness: the worker answers."""
        return {"status": "ok"}

    def _health(self) -> tuple[dict, list[str]]:
        """Per served model: age since its training as_of, stale or not, the latest monitoring result; and the
        warnings (serving.health: SEGMENTS_MAX_MODEL_AGE_DAYS and monitoring.json are read per call)."""
        from serving.health import max_model_age_days, read_status, served_health

        return served_health(self.state.manifest.get("models", {}), read_status(), max_age_days=max_model_age_days())

    @status_app.get("/ready")
    def ready(self):
        """Readiness: true when every model loaded and matches the feature set, the serve folder could be read and
        the segment store answers; otherwise false with the reason (503), true again once the cause is gone.
        `warnings` lists stale models and those the last `segments monitor` found decaying or drifting: they still
        serve (200), as they did yesterday; retraining is the cure, not an outage."""
        warnings = self._health()[1]
        problems = self._problems()
        if not problems:
            return {"ready": True, "warnings": warnings}
        return JSONResponse({"ready": False, "reason": "; ".join(problems), "warnings": warnings}, status_code=503)

    @status_app.get("/info")
    def info(self) -> dict:
        """Models (registry versions, BentoML tags, training as_of and `health`: age, stale, latest monitoring
        result), feature set, as_of of the feature table, limits, engines, `warnings` (as /v1/ready), and the
        segments /score evaluates (name, kind, description) with those it cannot evaluate and why."""

        manifest = self.state.manifest
        engines = {}
        if self.state.scorer is not None:
            engines = {e.target.key: "pred_contrib" for e in self.state.scorer.explainers.values()}
        health, warnings = self._health()
        problems = self._problems()
        models = {name: {**entry, "health": health.get(name)} for name, entry in manifest.get("models", {}).items()}
        return json.loads(json.dumps({
            "ready": self.state.ready and not problems, "problems": problems, "warnings": warnings,
            "feature_set_version": FEATURE_SET_VERSION, "as_of": manifest.get("as_of"),
            "models": models, "customers_in_feature_table": manifest.get("customers"),
            "built_at": manifest.get("built_at"), "max_batch": self.max_batch,
            "explanation_engines": engines, "segments": self._served_segments(),
            "api_key_required": bool(os.environ.get("SEGMENTS_API_KEY")),
        }, default=str))


# The first added is the outermost (Starlette's order): the key is checked before the body is read, and both answer
# before BentoML's Prometheus middleware, so refused requests add no metric series.
SegmentsService.add_asgi_middleware(ApiKeyMiddleware)
SegmentsService.add_asgi_middleware(UnroutableMiddleware)
SegmentsService.add_asgi_middleware(BodyMiddleware)
SegmentsService.add_asgi_middleware(OpenApiMiddleware, spec=lambda: SegmentsService.openapi_spec.asdict())
# Prometheus series by route template (serving/http/metrics.py) and a timeout that lets each request go when it is
# answered (serving/http/traffic.py), before BentoML builds the HTTP app.
install_route_metrics(lambda: SegmentsService.openapi_spec.asdict())
install_request_timeout()
