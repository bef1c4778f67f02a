"""Webhooks from an outbox (serving/segments/delivery.py): queued in the change's transaction, delivered at least once
with one idempotency key per change, signed, in each customer's order, across a failing receiver and a killed
deliverer; dead letters and redelivery. Receivers run on 127.0.0.1. Store tests on SQLite and PostgreSQL."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from features.segments import load_segments
from serving.segments.delivery import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    Deliverer,
    DeliveryPolicy,
    Subscription,
    SubscriptionError,
    load_subscriptions,
    redeliver,
    sync_subscriptions,
    verify_signature,
)
from serving.segments.store import SegmentStore, delivery_attempts, outbox

SECRET = "test-webhook-secret"
T0 = datetime(2026, 7, 1, 9, 0)
FAST = DeliveryPolicy(max_attempts=50, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5, lease_s=5)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to a share of requests (seeded) and records every request."""

    def __init__(self, fail_share: float = 0.0, delay_s: float = 0.0, port: int = 0, seed: int = 7):
        self.requests: list[dict] = []
        self.fail_share, self.delay_s, self.random = fail_share, delay_s, random.Random(seed)
        self.in_flight = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.in_flight.set()
                time.sleep(receiver.delay_s)
                fail = receiver.random.random() < receiver.fail_share
                receiver.requests.append({"body": body, "key": self.headers[KEY_HEADER], "failed": fail,
                                          "signature": self.headers[SIGNATURE_HEADER]})
                self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> dict[str, dict]:
        """Idempotency key -> body of the accepted requests."""
        return {r["key"]: json.loads(r["body"]) for r in self.requests if not r["failed"]}


@pytest.fixture
def store(store_url):
    store = SegmentStore(store_url)
    yield store
    store.close()


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("SEGMENTS_WEBHOOK_SECRET", SECRET)


def _changes(customers: int, rounds: int, segment: str = "loyal") -> list[list[dict]]:
    """`rounds` transactions, each moving every customer in or out of `segment` (alternating), an hour apart."""
    return [[{"customer_id": f"C{c:03d}", "segment": segment, "change": "entered" if r % 2 == 0 else "exited",
              "at": T0 + timedelta(hours=r), "cause": [{"text": f"round {r}"}], "source": "event"}
             for c in range(customers)] for r in range(rounds)]


def _record(store: SegmentStore, rounds: list[list[dict]]) -> None:
    for changes in rounds:
        with store.transaction() as conn:
            store.write.record(conn, changes, {c["customer_id"]: {"churn_probability": 0.5} for c in changes},
                               changes[0]["at"])


def _outbox(store: SegmentStore) -> list:
    with store.db._read() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def test_changes_of_subscribed_segments_are_queued_in_their_transaction(store):
    sync_subscriptions(store, [Subscription("crm", "http://127.0.0.1:9/x", ("loyal",), ("entered",))])
    _record(store, _changes(3, 2))  # entered, then exited
    _record(store, _changes(2, 1, segment="at_risk_vip"))
    rows = _outbox(store)
    assert [(r.customer_id, r.segment, r.change) for r in rows] == [(f"C{c:03d}", "loyal", "entered")
                                                                     for c in range(3)]
    assert json.loads(rows[0].payload)["values"] == {"churn_probability": 0.5}
    with pytest.raises(RuntimeError), store.transaction() as conn:  # a change that rolls back queues nothing
        store.write.record(conn, _changes(1, 1)[0], {}, T0)
        raise RuntimeError("the writer failed after recording")
    assert len(_outbox(store)) == 3 and len(store.changes.log()) == 8


def test_every_change_reaches_a_failing_receiver_once_accepted_signed_and_in_order(store):
    receiver = Receiver(fail_share=0.4)
    try:
        sync_subscriptions(store, [Subscription("crm", receiver.url, ("loyal",))])
        _record(store, _changes(5, 4))
        deliverer = Deliverer(store, FAST)
        for _ in range(200):
            deliverer.run_once()
            if all(r.status == "delivered" for r in _outbox(store)):
                break
            time.sleep(0.02)
    finally:
        receiver.stop()
    rows = _outbox(store)
    assert len(rows) == 20 and all(r.status == "delivered" for r in rows)
    assert any(r["failed"] for r in receiver.requests)  # the receiver did fail some
    accepted = receiver.delivered()
    assert sorted(accepted) == sorted(f"crm-{r.id}" for r in rows)  # one key per change, each accepted
    for request in receiver.requests:
        assert verify_signature(SECRET, request["signature"], request["body"])
        assert not verify_signature("another-secret", request["signature"], request["body"])
    for customer in {r.customer_id for r in rows}:  # each customer's accepted changes in recording order
        sent = [json.loads(r["body"]) for r in receiver.requests
                if not r["failed"] and json.loads(r["body"])["customer_id"] == customer]
        assert [b["change"] for b in sent] == ["entered", "exited", "entered", "exited"]
    with store.db._read() as conn:
        attempts = len(list(conn.execute(select(delivery_attempts))))
    assert attempts == len(receiver.requests)  # every attempt logged


def test_dead_letters_after_the_limit_and_redelivery(store):
    receiver = Receiver(fail_share=1.0)
    policy = DeliveryPolicy(max_attempts=3, base_delay_s=0.0, timeout_s=5)
    try:
        sync_subscriptions(store, [Subscription("crm", receiver.url, ("loyal",))])
        _record(store, _changes(2, 1))
        for _ in range(3):
            Deliverer(store, policy).run_once()
        assert [r.status for r in _outbox(store)] == ["dead", "dead"]
        assert [r.last_error for r in _outbox(store)] == ["HTTP 500", "HTTP 500"]
        assert len(receiver.requests) == 6
        assert redeliver(store, "crm") == 2
        receiver.fail_share = 0.0
        report = Deliverer(store, policy).run_once()
    finally:
        receiver.stop()
    assert report.delivered == 2 and [r.status for r in _outbox(store)] == ["delivered", "delivered"]
    assert len({r["key"] for r in receiver.requests}) == 2  # the same two keys, attempt after attempt


def test_a_missing_secret_or_a_refused_connection_is_retried_not_lost(store, monkeypatch):
    receiver = Receiver()
    url = receiver.url
    receiver.stop()  # nobody listens there now
    sync_subscriptions(store, [Subscription("crm", url, ("loyal",))])
    _record(store, _changes(1, 1))
    report = Deliverer(store, FAST).run_once()
    assert report.retried == 1 and "ConnectionRefusedError" in report.errors[0] + str(_outbox(store)[0].last_error)
    monkeypatch.delenv("SEGMENTS_WEBHOOK_SECRET")
    time.sleep(0.1)
    report = Deliverer(store, FAST).run_once()
    assert report.retried == 1 and "SEGMENTS_WEBHOOK_SECRET" in report.errors[0]
    assert _outbox(store)[0].status == "pending"


def test_subscription_files_are_checked(tmp_path):
    definitions = load_segments(None)
    good = tmp_path / "subs.yaml"
    good.write_text("subscriptions:\n  crm:\n    url: https://crm.example.com/h\n    segments: [loyal, cluster_2]\n"
                    "    changes: [entered]\n    secret_env: CRM_SECRET\n")
    [sub] = load_subscriptions(good, definitions)
    assert sub == Subscription("crm", "https://crm.example.com/h", ("loyal", "cluster_2"), ("entered",),
                               "CRM_SECRET")
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscriptions:\n  x:\n    url: ftp://nope\n    segments: [no_such]\n    changes: [moved]\n"
                   "    colour: red\n")
    with pytest.raises(SubscriptionError) as error:
        load_subscriptions(bad, definitions)
    for problem in ("unknown keys colour", "http:// or https://", "no segment named no_such", "changes must be"):
        assert problem in str(error.value)


def test_a_deliverer_killed_mid_post_loses_nothing(tmp_path):
    """`segments deliver` killed (SIGKILL) while a request is in flight, and the receiver stopped and started again:
    every change is accepted, the interrupted one posted again with the same key."""
    url = f"sqlite:///{tmp_path / 'segments.db'}"
    store = SegmentStore(url)
    receiver = Receiver(delay_s=0.3)
    port = receiver.server.server_address[1]
    sync_subscriptions(store, [Subscription("crm", receiver.url, ("loyal",))])
    _record(store, _changes(4, 3))
    segments = Path(sys.executable).with_name("segments")
    env = {**os.environ, "SEGMENTS_WEBHOOK_SECRET": SECRET}

    def deliverer(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([str(segments), "deliver", "--db", url, "--lease-seconds", "1",
                                 "--retry-base-seconds", "0.05", *extra], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    first = deliverer()
    assert receiver.in_flight.wait(60)
    time.sleep(0.1)  # mid-request: the receiver holds each one 0.3 s
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    time.sleep(0.3)
    receiver.stop()  # the receiver goes away for a while, then comes back on the same port
    second = deliverer()
    time.sleep(1.0)
    receiver_back = Receiver(port=port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(r.status != "delivered" for r in _outbox(store)):
            time.sleep(0.2)
    finally:
        second.terminate()
        second.wait(10)
        receiver_back.stop()
    rows = _outbox(store)
    assert all(r.status == "delivered" for r in rows), [(r.id, r.status, r.last_error) for r in rows]
    keys = {**receiver.delivered(), **receiver_back.delivered()}
    assert sorted(keys) == sorted(f"crm-{r.id}" for r in rows)
    every_key = [r["key"] for r in receiver.requests + receiver_back.requests]
    assert len(every_key) > len(set(every_key))  # at least one change was posted twice, under one key
    store.close()
