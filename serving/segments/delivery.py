"""Webhooks: membership changes told to campaign tools, at least once, signed, in each customer's order.

Subscriptions (a YAML file synced into the store by `segments subscribe`) name segments, change kinds and a URL.
Every change of a subscribed segment gets an outbox row in the transaction that records the change
(`StoreWriter.record`: batch refreshes and events alike). `Deliverer` posts due rows as JSON:

    {"idempotency_key", "subscription", "customer_id", "segment", "change", "at", "cause", "source", "values"}

with headers `Segments-Idempotency-Key` (the same on every retry of a row) and `Segments-Signature:
t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the subscription's secret>` (`verify_signature` checks one).
A 2xx answer delivers the row; anything else (an error status, a refused connection, a timeout) is retried after an
exponential backoff with full jitter, and after `max_attempts` the row is dead (a dead letter), kept until
`redeliver`. Every attempt is logged (`delivery_attempts`). A row is claimed with a lease before it is posted, so
several deliverers (the CLI, service workers) never post the same row at once, and a deliverer killed mid-post
leaves its row to be posted again once the lease ends: receivers de-duplicate on the idempotency key. A customer's
rows for one subscription are posted one after another in the order the changes were recorded (a row waits while an
earlier one of the same customer is pending; a dead one no longer holds the line).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import aliased

from features.segments import SegmentSet
from features.time import utc_now
from serving.segments.store import delivery_attempts, outbox, subscriptions

CHANGE_KINDS = ("entered", "exited")
SIGNATURE_HEADER = "Segments-Signature"
KEY_HEADER = "Segments-Idempotency-Key"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any non-2xx (following it would re-send a signed POST as a GET elsewhere)."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class SubscriptionError(ValueError):
    """A subscriptions file that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    segments: tuple[str, ...]
    changes: tuple[str, ...] = CHANGE_KINDS
    secret_env: str = "SEGMENTS_WEBHOOK_SECRET"


def load_subscriptions(path: Path, definitions: SegmentSet) -> list[Subscription]:
    """The subscriptions of a YAML file:

        subscriptions:
          crm:
            url: https://crm.example.com/hooks/segments
            segments: [at_risk_vip, loyal]
            changes: [entered]                 # default: entered and exited
            secret_env: CRM_WEBHOOK_SECRET     # default: SEGMENTS_WEBHOOK_SECRET

    Every problem is listed at once (unknown segments, bad URLs, unknown change kinds)."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SubscriptionError(f"{path}: {exc}") from exc
    entries = document.get("subscriptions") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise SubscriptionError(f"{path}: expected a mapping `subscriptions:` of name -> url, segments, changes")
    out, problems = [], []
    for name, spec in entries.items():
        where = f"{path}: subscription {name!r}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected url, segments, changes")
            continue
        unknown_keys = sorted(set(spec) - {"url", "segments", "changes", "secret_env"})
        if unknown_keys:
            problems.append(f"{where}: unknown keys {', '.join(unknown_keys)}")
        segments, changes = spec.get("segments") or [], spec.get("changes") or list(CHANGE_KINDS)
        sub = Subscription(str(name), str(spec.get("url")), tuple(segments) if isinstance(segments, list) else (),
                           tuple(changes) if isinstance(changes, list) else (str(changes),),
                           str(spec.get("secret_env") or Subscription.secret_env))
        problems += [f"{where}: {problem}" for problem in subscription_problems(sub, definitions)]
        out.append(sub)
    if problems:
        raise SubscriptionError("\n".join(problems))
    return out


def subscription_problems(sub: Subscription, definitions: SegmentSet) -> list[str]:
    """What is wrong with a subscription (empty when nothing): the URL (http or https; its host among
    SEGMENTS_WEBHOOK_HOSTS when that is set, so webhooks go only where the operator allows), the segments, the change
    kinds, the secret's variable name."""
    problems = []
    host = urllib.parse.urlsplit(sub.url).hostname if sub.url.startswith(("http://", "https://")) else None
    if host is None:
        problems.append(f"url must be an http:// or https:// URL, got {sub.url!r}")
    allowed = [h.strip() for h in os.environ.get("SEGMENTS_WEBHOOK_HOSTS", "").split(",") if h.strip()]
    if host is not None and allowed and host not in allowed:
        problems.append(f"webhooks may only go to {', '.join(allowed)} (SEGMENTS_WEBHOOK_HOSTS), not {host}")
    if not sub.segments:
        problems.append("segments must be a non-empty list")
    missing = [s for s in sub.segments if definitions.definition_of(str(s)) is None]
    if missing:
        problems.append(f"no segment named {', '.join(map(str, missing))} (defined: {', '.join(definitions.names())})")
    if not sub.changes or not set(sub.changes) <= set(CHANGE_KINDS):
        problems.append(f"changes must be a list of {' and '.join(CHANGE_KINDS)}, got {list(sub.changes)!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", sub.secret_env):
        problems.append(f"secret_env must be an environment variable name, got {sub.secret_env!r}")
    return problems


def sync_subscriptions(store, wanted: list[Subscription]) -> dict[str, int]:
    """Make the store's active subscriptions exactly `wanted` (added, changed, others deactivated; their queued rows
    stay and are still delivered). Returns counts."""
    with store.transaction() as conn:
        active = {row.name for row in conn.execute(select(subscriptions.c.name).where(subscriptions.c.active))}
        for sub in wanted:
            _put(store, conn, sub)
        gone = active - {sub.name for sub in wanted}
        for name in sorted(gone):
            _deactivate(conn, name)
    return {"active": len(wanted), "deactivated": len(gone)}


def put_subscription(store, sub: Subscription) -> bool:
    """Add or replace one subscription (active); True when it is new."""
    with store.transaction() as conn:
        new = conn.execute(select(subscriptions.c.name).where(subscriptions.c.name == sub.name)).first() is None
        _put(store, conn, sub)
    return new


def deactivate_subscription(store, name: str) -> bool:
    """Stop queueing changes for `name` (its queued rows are still delivered); False when it is not active."""
    with store.transaction() as conn:
        return _deactivate(conn, name)


def list_subscriptions(store) -> list[dict]:
    """Every subscription with its outbox rows per status."""
    counts = outbox_counts(store)
    with store.db._read() as conn:
        rows = conn.execute(select(subscriptions).order_by(subscriptions.c.name)).mappings().all()
    return [{"name": r["name"], "url": r["url"], "segments": json.loads(r["segments"]),
             "changes": json.loads(r["changes"]), "secret_env": r["secret_env"], "active": bool(r["active"]),
             "updated_at": r["updated_at"].isoformat(), "outbox": counts.get(r["name"], {})} for r in rows]


def _put(store, conn, sub: Subscription) -> None:
    values = {"url": sub.url, "segments": json.dumps(list(sub.segments)), "changes": json.dumps(list(sub.changes)),
              "secret_env": sub.secret_env, "active": True, "updated_at": utc_now()}
    statement = store.db._insert(subscriptions).values(name=sub.name, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[subscriptions.c.name], set_=values))


def _deactivate(conn, name: str) -> bool:
    return conn.execute(update(subscriptions).where(subscriptions.c.name == name, subscriptions.c.active)
                        .values(active=False, updated_at=utc_now())).rowcount == 1


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None) -> bool:
    """True when `header` (Segments-Signature) signs `body` with `secret` and its time is within `tolerance_s` of now
    (a replayed old request fails). For receivers."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")


@dataclass
class DeliveryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 2.0  # the first retry waits up to this, the n-th up to base * 2**(n-1)
    max_delay_s: float = 3600.0
    timeout_s: float = 10.0
    lease_s: float = 60.0  # a claimed row is left alone this long (longer than the timeout)
    batch: int = 100

    def retry_after(self, attempts: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempts-1))] seconds."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempts - 1)))


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


class Deliverer:
    """Posts the outbox's due rows (module docstring). `run_once` for a pass, `run` until stopped."""

    def __init__(self, store, policy: DeliveryPolicy | None = None):
        self.store, self.policy = store, policy or DeliveryPolicy()

    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        while not stop.is_set():
            if not self.run_once().delivered:
                stop.wait(idle_s)

    def run_once(self) -> DeliveryReport:
        """Deliver what is due now (each row at most once in this pass)."""
        report, tried = DeliveryReport(), set()
        while True:
            rows = [row for row in self._due() if row.id not in tried]
            if not rows:
                return report
            subs = self._subscriptions()
            for row in rows:
                tried.add(row.id)
                if self._claim(row.id):
                    self._deliver(row, subs.get(row.subscription), report)

    def _due(self) -> list:
        """Pending rows due now, not leased, each the first pending row of its (subscription, customer)."""
        now, earlier = utc_now(), aliased(outbox)
        blocked = (select(earlier.c.id).where(earlier.c.subscription == outbox.c.subscription,
                                              earlier.c.customer_id == outbox.c.customer_id,
                                              earlier.c.status == "pending", earlier.c.id < outbox.c.id).exists())
        query = (select(outbox).where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now, _unleased(now),
                                      ~blocked)
                 .order_by(outbox.c.id).limit(self.policy.batch))
        with self.store.db._read() as conn:
            return list(conn.execute(query))

    def _subscriptions(self) -> dict:
        with self.store.db._read() as conn:
            return {row.name: row for row in conn.execute(select(subscriptions))}

    def _claim(self, row_id: int) -> bool:
        """Lease the row if nobody holds it (one UPDATE: atomic on both databases)."""
        now = utc_now()
        with self.store.transaction() as conn:
            claimed = conn.execute(update(outbox).where(outbox.c.id == row_id, outbox.c.status == "pending",
                                                        _unleased(now))
                                   .values(lease_until=now + timedelta(seconds=self.policy.lease_s)))
            return claimed.rowcount == 1

    def _deliver(self, row, sub, report: DeliveryReport) -> None:
        started, status, error = time.monotonic(), None, None
        secret = os.environ.get(sub.secret_env) if sub is not None else None
        if sub is None:
            error = f"subscription {row.subscription!r} no longer exists"
        elif not secret:
            error = f"the signing secret is not set: environment variable {sub.secret_env}"
        else:
            status, error = self._post(sub.url, secret, row)
        self._settle(row, status, error, int((time.monotonic() - started) * 1000), report)

    def _post(self, url: str, secret: str, row) -> tuple[int | None, str | None]:
        key = f"{row.subscription}-{row.id}"
        body = json.dumps({"idempotency_key": key, "subscription": row.subscription, **json.loads(row.payload)},
                          sort_keys=True).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", KEY_HEADER: key,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())), "User-Agent": "loyalty-segments-webhooks"})
        try:
            with _OPENER.open(request, timeout=self.policy.timeout_s) as answer:
                return answer.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except urllib.error.URLError as exc:  # no answer: refused, unknown host, TLS ...
            reason = exc.reason
            return None, f"{type(reason).__name__}: {reason}" if isinstance(reason, Exception) else str(reason)
        except OSError as exc:  # a timeout while reading the answer
            return None, f"{type(exc).__name__}: {exc}"

    def _settle(self, row, status: int | None, error: str | None, ms: int, report: DeliveryReport) -> None:
        now, attempts = utc_now(), row.attempts + 1
        values = {"attempts": attempts, "lease_until": None, "last_error": error}
        if error is None:  # `_post` answers without an error only for a 2xx
            values.update(status="delivered", delivered_at=now)
            report.delivered += 1
        elif attempts >= self.policy.max_attempts:
            values.update(status="dead")
            report.dead += 1
        else:
            values.update(next_attempt_at=now + timedelta(seconds=self.policy.retry_after(attempts)))
            report.retried += 1
        if error:
            report.errors.append(f"{row.subscription} #{row.id}: {error}")
        with self.store.transaction() as conn:
            conn.execute(delivery_attempts.insert().values(outbox_id=row.id, attempt=attempts, at=now,
                                                           status_code=status, error=error, milliseconds=ms))
            conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))


def _unleased(now):
    """The outbox rows no deliverer holds at `now`."""
    return outbox.c.lease_until.is_(None) | (outbox.c.lease_until < now)


def redeliver(store, subscription: str | None = None) -> int:
    """Dead rows (of one subscription, or all) back to pending with a fresh count of attempts. Returns how many."""
    condition = outbox.c.status == "dead"
    if subscription is not None:
        condition = and_(condition, outbox.c.subscription == subscription)
    with store.transaction() as conn:
        return conn.execute(update(outbox).where(condition).values(
            status="pending", attempts=0, next_attempt_at=utc_now(), lease_until=None)).rowcount


def outbox_counts(store) -> dict[str, dict[str, int]]:
    """subscription -> status -> rows."""
    query = select(outbox.c.subscription, outbox.c.status, func.count()).group_by(outbox.c.subscription,
                                                                                   outbox.c.status)
    out: dict[str, dict[str, int]] = {}
    with store.db._read() as conn:
        for name, status, count in conn.execute(query):
            out.setdefault(name, {})[status] = count
    return out
