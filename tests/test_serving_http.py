"""End to end: `segments serve` (a real `bentoml serve`) on 127.0.0.1, with an API key and a small batch cap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
from serving_setup import build_served, fresh_environment

KEY = "test-key-5b1c"
READ_KEY = "read-key-77a0"
MAX_BODY = 200_000
READY_TIMEOUT_S = 120
WEBHOOK_SECRET = "webhook-secret-3f2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, generated_validation, small_models):
    root = tmp_path_factory.mktemp("http")
    served = build_served(root, generated_validation, small_models)
    # --deliver (webhooks from the outbox, inside the service): only subscriptions tests make, all to 127.0.0.1
    process, base, log = _serve(root, served["serve_dir"], served["env"], "server.log", SEGMENTS_DELIVER="1",
                                SEGMENTS_WEBHOOK_SECRET=WEBHOOK_SECRET, SEGMENTS_WEBHOOK_HOSTS="127.0.0.1")
    _wait_ready(base, process, log)
    yield {"base": base, "process": process, "log": log, "state": served, "root": root}
    _stop(process)


def _serve(root: Path, serve_dir: Path, served_env: dict, log_name: str, **extra: str):
    """Start `segments serve` on a free loopback port: (process, base URL, log file)."""
    port = _free_port()
    env = {**os.environ, **served_env, "SEGMENTS_API_KEY": KEY, "SEGMENTS_READ_KEY": READ_KEY,
           "SEGMENTS_MAX_BATCH": "5", "SEGMENTS_MAX_BODY_BYTES": str(MAX_BODY),
           "BENTOML_DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", **extra}
    log = root / log_name
    segments = Path(sys.executable).with_name("segments")
    with open(log, "w") as out:
        process = subprocess.Popen([str(segments), "serve", "--serve-dir", str(serve_dir),
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=root, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}", log


def _answering(base: str, process: subprocess.Popen, log: Path) -> None:
    """Wait until the worker answers /v1/health (whatever readiness says)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(process)
    pytest.fail(f"server not answering\n{log.read_text()[-3000:]}")


def _until(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def _wait_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    """Poll /v1/ready until 200; fail with the server log when it exits, says 503 (a load problem that waiting
    will not fix) or takes longer than READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    answer = "no answer"
    while True:
        try:
            ready = httpx.get(f"{base}/v1/ready", timeout=2)
            answer = ready.text
            if ready.status_code == 200:
                return
            if ready.status_code == 503:
                deadline = 0
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"server not ready: {answer}\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _ids(server, n):
    return list(server["state"]["features"]["customer_id"].iloc[:n])


def test_score_and_explain_with_the_key(server):
    headers = {"x-api-key": KEY}
    ids = _ids(server, 2)
    body = {"customers": [{"customer_id": ids[0]}, {"customer_id": "nobody"}, {"customer_id": ids[1]}],
            "explain": True, "top_k": 2}
    response = httpx.post(f"{server['base']}/score", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    items = response.json()["customers"]
    assert items[1]["error"]["code"] == "unknown_customer"
    assert len(items[0]["reasons"]["churn"]) == 2 and "churn risk" in items[0]["reasons"]["churn"][0]["sentence"]
    assert response.json()["versions"]["models"]["segments-churn"] == "1"
    # this server's store has had no batch refresh: `in top N%` segments are reported as not evaluated, not false
    evaluation = response.json()["segment_evaluation"]
    assert evaluation["thresholds_as_of"] is None and {"vip", "at_risk_vip"} <= set(evaluation["not_evaluated"])
    assert not any({"vip", "at_risk_vip"} & set(item["segments"]) for item in items)
    explained = httpx.post(f"{server['base']}/explain", json={"customers": [{"customer_id": ids[0]}], "top_k": 1},
                           headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert explained.status_code == 200, explained.text
    assert explained.json()["customers"][0]["reasons"]["churn"] == items[0]["reasons"]["churn"][:1]


def test_api_key_is_required_and_never_logged(server):
    ids = _ids(server, 1)
    for headers in ({}, {"x-api-key": "wrong"}):
        response = httpx.post(f"{server['base']}/score", json={"customers": [{"customer_id": ids[0]}]},
                              headers=headers, timeout=30)
        assert response.status_code == 401
    assert httpx.get(f"{server['base']}/v1/info", timeout=10).status_code == 401
    assert httpx.get(f"{server['base']}/v1/health", timeout=10).status_code == 200  # probes stay open
    assert KEY not in server["log"].read_text()


def test_bad_inputs_batch_cap_and_no_traces(server):
    headers = {"x-api-key": KEY}
    bad = httpx.post(f"{server['base']}/score", json={"customers": [{"customer_id": "x", "oops": 1}]},
                     headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["customers", 0, "oops"]
    too_many = httpx.post(f"{server['base']}/score", json={"customers": [{"customer_id": f"c{i}"} for i in range(6)]},
                          headers=headers, timeout=30)
    assert too_many.status_code == 413 and "limit is 5" in too_many.json()["error"]
    for response in (bad, too_many):
        assert "Traceback" not in response.text and 'File "' not in response.text


def test_docs_metrics_and_info(server):
    headers = {"x-api-key": KEY}
    spec = httpx.get(f"{server['base']}/docs.json", headers=headers, timeout=10).json()
    assert {"/score", "/explain"} <= set(spec["paths"])
    for path in ("/v1/customers/C-metrics-1", "/v1/customers/C-metrics-2", "/no-such-route-5f2a"):
        httpx.get(f"{server['base']}{path}", headers=headers, timeout=10)
    metrics = httpx.get(f"{server['base']}/metrics", headers=headers, timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    # series by route template: no customer id, no random path, ever becomes a label
    assert 'endpoint="/v1/customers/{customer_id}"' in metrics.text and 'endpoint="other"' in metrics.text
    assert "C-metrics-1" not in metrics.text and "no-such-route" not in metrics.text
    assert "segment_evaluation" in json.dumps(spec["components"]) and "not_evaluated" in json.dumps(spec)
    info = httpx.get(f"{server['base']}/v1/info", headers=headers, timeout=10).json()
    assert info["ready"] and info["max_batch"] == 5
    served = {s["name"]: s for s in info["segments"]["evaluated"]}
    assert served["loyal"]["kind"] == "rule" and served["likely_to_churn"]["kind"] == "predictive"
    assert "vip" not in served and "refresh" in info["segments"]["not_evaluated"]["vip"]


def test_bento_builds_offline_and_serves(server, generated, tmp_path):
    """`segments build --bento` packages code, serve folder and pinned models; `bentoml serve` runs the bento."""
    env = {**os.environ, **server["state"]["env"], "BENTOML_DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    env.pop("SEGMENTS_SERVE_DIR", None)  # the bento carries its own serve folder
    segments = Path(sys.executable).with_name("segments")
    built = subprocess.run([str(segments), "build", "--data", str(generated[1]), "--as-of", "2026-07-01",
                            "--serve-dir", str(tmp_path / "serve"), "--bento"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "Bento segments:" in built.stdout
    # Served from an environment holding only the bento's own requirements: a dependency or a data file the bento
    # lacks fails here, not on the user's machine.
    bento = Path(env["BENTOML_HOME"]) / "bentos" / "segments" / built.stdout.split("Bento segments:")[1].split()[0]
    fresh = fresh_environment(tmp_path / "bento-env", bento / "env" / "python" / "requirements.txt")
    env = {key: value for key, value in env.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{fresh}{os.pathsep}{env['PATH']}"
    port = _free_port()
    log = tmp_path / "bento.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(fresh / "bentoml"), "serve", "segments:latest",
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process, log)
        ids = _ids(server, 2)
        answer = httpx.post(f"http://127.0.0.1:{port}/score", json={"customers": [{"customer_id": i} for i in ids]},
                            headers={"x-api-key": KEY}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [c["customer_id"] for c in body["customers"]] == ids
        assert body["versions"]["models"] == {name: entry["version"]
                                              for name, entry in server["state"]["manifest"]["models"].items()}
        overview = httpx.get(f"http://127.0.0.1:{port}/reports/customers/{ids[0]}", headers={"x-api-key": KEY},
                             timeout=60)  # the report templates travel with the bento
        assert overview.status_code == 200 and ids[0] in overview.text, overview.text[:500]
    finally:
        _stop(process)


def _customer_with_history(server) -> str:
    features = server["state"]["features"]
    return str(features.loc[features["orders_count_365d"] >= 12, "customer_id"].iloc[0])


def _transaction(customer_id: str, i: int, hour: int) -> dict:
    return {"customer_id": customer_id, "transaction_id": f"rt-{customer_id}-{i}",
            "timestamp": f"2026-07-01T{hour:02d}:00:00Z", "amount": 90.0, "channel": "app"}


def test_events_move_customers_with_causes_and_are_idempotent(server):
    headers = {"x-api-key": KEY}
    cid = _customer_with_history(server)
    body = {"transactions": [_transaction(cid, 1, 9), _transaction(cid, 2, 10)]}
    first = httpx.post(f"{server['base']}/events", json=body, headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    update = first.json()["customers"][0]
    assert update["stored"] == [f"rt-{cid}-1", f"rt-{cid}-2"] and update["duplicates"] == []
    assert update["as_of"].startswith("2026-07-01T10:00:00")
    entered = {c["segment"]: c for c in update["changes"] if c["change"] == "entered"}
    assert "loyal" in entered and "loyal" in update["segments"]   # two orders of 90 within 14 days
    assert any(c["field"] == "orders_count_14d" for c in entered["loyal"]["cause"])
    again = httpx.post(f"{server['base']}/events", json=body, headers=headers, timeout=60).json()["customers"][0]
    assert again["stored"] == [] and again["changes"] == [] and again["segments"] == update["segments"]
    history = httpx.get(f"{server['base']}/v1/customers/{cid}", headers=headers, timeout=30).json()
    assert any(h["segment"] == "loyal" and h["change"] == "entered" and h["source"] == "event"
               for h in history["history"])
    loyal = httpx.get(f"{server['base']}/v1/segments/loyal", headers=headers, timeout=30).json()
    assert loyal["size"] >= 1 and cid in [m["customer_id"] for m in loyal["members"]]


def test_the_service_tells_subscribed_webhooks_about_changes_from_events(server):
    """`segments serve --deliver`: an event that moves a customer into `loyal` reaches a subscribed receiver on
    127.0.0.1, signed, with its idempotency key, without `segments deliver` running."""
    from test_delivery import Receiver

    from serving.segments.delivery import Subscription, sync_subscriptions, verify_signature
    from serving.segments.store import SegmentStore

    features = server["state"]["features"]
    cid = str(features.loc[features["orders_count_365d"] >= 12, "customer_id"].iloc[1])
    store, receiver = SegmentStore(server["state"]["env"]["SEGMENTS_DB_URL"]), Receiver()
    try:
        sync_subscriptions(store, [Subscription("crm", receiver.url, ("loyal",), ("entered",))])
        body = {"transactions": [_transaction(cid, 71, 9), _transaction(cid, 72, 10)]}
        answer = httpx.post(f"{server['base']}/events", json=body, headers={"x-api-key": KEY}, timeout=60).json()
        assert any(c["segment"] == "loyal" and c["change"] == "entered" for c in answer["customers"][0]["changes"])
        assert _until(lambda: any(json.loads(r["body"])["customer_id"] == cid for r in receiver.requests), 30)
    finally:
        sync_subscriptions(store, [])  # later tests' changes are not queued for a receiver that is gone
        receiver.stop()
        store.close()
    [request] = [r for r in receiver.requests if json.loads(r["body"])["customer_id"] == cid]
    sent = json.loads(request["body"])
    assert verify_signature(WEBHOOK_SECRET, request["signature"], request["body"])
    assert (sent["segment"], sent["change"], sent["source"]) == ("loyal", "entered", "event")
    assert request["key"] == sent["idempotency_key"] and sent["values"]["orders_count_14d"] >= 2


def test_subscriptions_over_the_api(server):
    """PUT, GET and DELETE /v1/subscriptions: the write key adds, checks say what is wrong, hosts are limited to
    SEGMENTS_WEBHOOK_HOSTS (127.0.0.1 here), a stopped subscription queues nothing more."""
    base, write, read = server["base"], {"x-api-key": KEY}, {"x-api-key": READ_KEY}
    url = f"{base}/v1/subscriptions/crm-api"
    body = {"url": "http://127.0.0.1:9/hooks", "segments": ["loyal"], "changes": ["entered"]}
    assert httpx.put(url, json=body, headers=read, timeout=30).status_code == 401
    created = httpx.put(url, json=body, headers=write, timeout=30)
    assert created.status_code == 200 and created.json()["created"] is True
    assert httpx.put(url, json=body, headers=write, timeout=30).json()["created"] is False
    listed = httpx.get(f"{base}/v1/subscriptions", headers=read, timeout=30).json()["subscriptions"]
    assert {"name": "crm-api", "active": True, "segments": ["loyal"]}.items() <= next(
        s for s in listed if s["name"] == "crm-api").items()
    for wrong, status, said in (({**body, "url": "http://example.com/h"}, 422, "SEGMENTS_WEBHOOK_HOSTS"),
                                ({**body, "segments": ["nope"]}, 422, "no segment named nope"),
                                ({**body, "changes": ["moved"]}, 400, "invalid field"),
                                ({"segments": ["loyal"]}, 400, "invalid field")):
        answer = httpx.put(url, json=wrong, headers=write, timeout=30)
        assert answer.status_code == status and said in answer.json()["error"], answer.text
    assert httpx.delete(url, headers=write, timeout=30).json() == {"name": "crm-api", "active": False}
    assert httpx.delete(url, headers=write, timeout=30).status_code == 404
    listed = httpx.get(f"{base}/v1/subscriptions", headers=read, timeout=30).json()["subscriptions"]
    assert next(s for s in listed if s["name"] == "crm-api")["active"] is False


def test_bad_events_are_field_errors(server):
    headers = {"x-api-key": KEY}
    missing = httpx.post(f"{server['base']}/events", json={"transactions": [{"customer_id": "a", "amount": 1.0}]},
                         headers=headers, timeout=30)
    assert missing.status_code == 400 and {tuple(d["loc"])[-1] for d in missing.json()["detail"]} >= {
        "transaction_id", "timestamp"}
    empty = httpx.post(f"{server['base']}/events", json={}, headers=headers, timeout=30)
    assert empty.status_code == 400 and "at least one" in empty.text
    unauthorised = httpx.post(f"{server['base']}/events", json={"transactions": [_transaction("x", 1, 9)]},
                              timeout=30)
    assert unauthorised.status_code == 401


def test_killing_the_service_mid_stream_loses_no_acknowledged_event_and_counts_none_twice(server, generated,
                                                                                           tmp_path):
    """A stream of events to a second server on the same store, with two workers (`--workers 2`: both take
    events); SIGKILL it mid-stream, restart, resend everything (a client retries what it does not know was stored):
    every acknowledged event is stored once, none twice, and the customer's features count each one once."""
    from serving.segments.store import SegmentStore

    cid = str(server["state"]["features"]["customer_id"].iloc[-1])
    events = [_transaction(cid, i, 0) | {"timestamp": f"2026-07-01T{i // 60:02d}:{i % 60:02d}:00Z",
                                         "amount": 5.0} for i in range(40)]
    db = f"sqlite:///{tmp_path / 'stream.db'}"

    def start():
        port = _free_port()
        log = tmp_path / f"stream-{port}.log"
        env = {**os.environ, **server["state"]["env"], "SEGMENTS_API_KEY": KEY, "BENTOML_DO_NOT_TRACK": "1"}
        with open(log, "w") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("segments")), "serve", "--serve-dir",
                 str(server["state"]["serve_dir"]), "--port", str(port), "--db", db, "--workers", "2"], env=env,
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(f"http://127.0.0.1:{port}", process, log)
        assert _until(lambda: log.read_text().count("Service segments initialized") == 2, 120), log.read_text()
        logs.append(log)
        return process, f"http://127.0.0.1:{port}"

    logs: list[Path] = []
    process, base = start()
    acknowledged = []
    for i, event in enumerate(events):
        if i == 15:  # SIGKILL the whole tree: BentoML's workers run in sessions of their own
            tree = psutil.Process(process.pid)
            for proc in [tree, *tree.children(recursive=True)]:
                proc.kill()
            process.wait(timeout=30)
        try:
            answer = httpx.post(f"{base}/events", json={"transactions": [event]}, headers={"x-api-key": KEY},
                                timeout=30)
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            acknowledged.append(event["transaction_id"])
    assert 10 <= len(acknowledged) < len(events)
    process, base = start()
    try:
        for event in events:  # resend everything, acknowledged or not
            answer = httpx.post(f"{base}/events", json={"transactions": [event]}, headers={"x-api-key": KEY},
                                timeout=30)
            assert answer.status_code == 200, answer.text
            update = answer.json()["customers"][0]
            assert (update["duplicates"] == [event["transaction_id"]]) == (event["transaction_id"] in acknowledged)
    finally:
        _stop(process)
    served_by = {worker for log in logs for worker in ("segments:1]", "segments:2]")
                 if any(worker in line and "path=/events" in line for line in log.read_text().splitlines())}
    assert served_by == {"segments:1]", "segments:2]"}  # each connection is new: both workers took events
    store = SegmentStore(db)
    posted = store.current.posted([cid])["transactions"]
    assert sorted(posted["transaction_id"]) == sorted(e["transaction_id"] for e in events)
    state = store.current.states([cid])[cid]
    last = pd.Timestamp("2026-07-01 00:39:00.000001")  # the evaluation clock: just after the last event
    history = generated[0].transactions
    orders = history[(history["customer_id"] == cid) & (history["amount"] > 0) & ~history["is_return"].astype(bool)
                     & (history["timestamp"] >= last - pd.Timedelta(days=14)) & (history["timestamp"] < last)]
    assert state["orders_count_14d"] == len(orders) + len(events)
    store.close()


def _riskiest(server, ids: list[str]) -> dict:
    scored = httpx.post(f"{server['base']}/score", json={"customers": [{"customer_id": c} for c in ids]},
                        headers={"x-api-key": KEY}, timeout=60).json()["customers"]
    return max(scored, key=lambda item: item["churn"]["probability"])


def test_counterfactual_api_proposes_actions_and_refuses_bad_goals(server):
    headers = {"x-api-key": KEY}
    ids = list(server["state"]["features"]["customer_id"].iloc[100:105])
    risky = _riskiest(server, ids)
    target = round(risky["churn"]["probability"] * 0.8, 4)
    url = f"{server['base']}/v1/customers/{risky['customer_id']}/counterfactual"
    answer = httpx.get(url, params={"goal": f"churn_probability < {target}"}, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["customer_id"] == risky["customer_id"] and body["goal"]["measure"] == "churn_probability"
    assert body["current"]["churn_probability"] == pytest.approx(risky["churn"]["probability"])
    assert body["reached"], body["message"]  # a 20% cut in churn risk is within reach of a few purchases or visits
    assert body["plan"]["predicted"]["churn_probability"] < target
    # posting the plan's records to /events evaluates the customer as the plan predicted
    records = body["plan"]["records"]
    assert records["transactions"] + records["events"]
    assert all(r["customer_id"] == risky["customer_id"] for r in records["transactions"] + records["events"])
    posted = httpx.post(f"{server['base']}/events", json=records, headers=headers, timeout=60)
    assert posted.status_code == 200, posted.text
    update = posted.json()["customers"][0]
    assert datetime.fromisoformat(update["as_of"]).replace(tzinfo=None) == datetime.fromisoformat(body["as_of"])
    stored = httpx.get(f"{server['base']}/v1/customers/{risky['customer_id']}", headers=headers, timeout=30).json()
    assert sorted(s["segment"] for s in stored["segments"]) == body["plan"]["predicted"]["segments"]
    assert httpx.get(url, params={"goal": "enter no_such_segment"}, headers=headers, timeout=60).status_code == 422
    unknown = httpx.get(f"{server['base']}/v1/customers/nobody/counterfactual", headers=headers, timeout=60)
    assert unknown.status_code == 404
    assert httpx.get(url, timeout=30).status_code == 401


def test_reports_folder_is_served_read_only(server):
    headers = {"x-api-key": KEY}
    reports = server["root"] / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "index.html").write_text("<!DOCTYPE html><title>Overview</title><h1>Overview</h1>")
    (server["root"] / "secret.html").write_text("not a report")
    index = httpx.get(f"{server['base']}/reports/", headers=headers, timeout=30)
    assert index.status_code == 200 and "<h1>Overview</h1>" in index.text
    assert index.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{server['base']}/reports/index.html", headers=headers, timeout=30).text == index.text
    assert "default-src 'none'" in index.headers["content-security-policy"]
    (reports / "chart.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    for path in ("../secret.html", "%2e%2e/secret.html", "..%2fsecret.html", "missing.html", "index.py",
                 "chart.svg", "%00.html"):
        answer = httpx.get(f"{server['base']}/reports/{path}", headers=headers, timeout=30)
        assert answer.status_code == 404 and "not a report" not in answer.text, path
    assert httpx.post(f"{server['base']}/reports/index.html", headers=headers, timeout=30).status_code == 405
    # a browser cannot send x-api-key: the key is the password of HTTP Basic auth, asked for by a challenge
    refused = httpx.get(f"{server['base']}/reports/", timeout=30)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{server['base']}/reports/", auth=("marketer", KEY), timeout=30).text == index.text
    assert httpx.get(f"{server['base']}/reports/", auth=("marketer", "wrong"), timeout=30).status_code == 401


def test_customer_page_renders_in_chromium(server):
    from browser import browser, open_page

    headers = {"x-api-key": KEY}
    risky = _riskiest(server, list(server["state"]["features"]["customer_id"].iloc[110:115]))
    cid = risky["customer_id"]
    url = f"{server['base']}/reports/customers/{cid}"
    assert httpx.get(f"{server['base']}/reports/customers/nobody", headers=headers, timeout=60).status_code == 404
    with browser() as instance:
        opened = open_page(instance, f"{url}?goal=churn_probability < 0.01", "customer-page", headers=headers)
        page = opened.page
        assert opened.problems == []
        assert page.inner_text("[data-metric=customer-id]") == cid
        shown = float(page.get_attribute("[data-metric=churn-probability]", "data-value"))
        assert shown == pytest.approx(risky["churn"]["probability"])
        assert page.inner_text("[data-metric=churn-band]") == risky["churn"]["band"]
        for section in ("scores", "reasons", "segments", "whatif", "history"):
            assert page.locator(f"[data-section={section}]").count() == 1, section
        assert page.locator("table[data-model=churn] tbody tr").count() >= 1
        assert page.locator("figure svg.chart").count() >= 1
        # the goal form submits to the same page (GET), and the answer is the API's
        api = httpx.get(f"{server['base']}/v1/customers/{cid}/counterfactual",
                        params={"goal": "churn_probability < 0.01"}, headers=headers, timeout=120).json()
        reached = page.get_attribute("[data-metric=whatif-reached]", "data-value")
        assert reached == str(api["reached"]).lower()


# ---------------------------------------------------------------------------------------------------------------
# Hostile input (issue 13): every door answers 4xx with what is wrong, never 500, and stores nothing it refuses


def _history(server, cid: str) -> list:
    answer = httpx.get(f"{server['base']}/v1/customers/{cid}", headers={"x-api-key": KEY}, timeout=30)
    return answer.json().get("history", []) if answer.status_code == 200 else []


def test_only_json_bodies_reach_a_route(server):
    headers = {"x-api-key": KEY}
    cid = _ids(server, 1)[0]
    before = _history(server, cid)
    for route in ("/score", "/explain", "/events"):
        multipart = httpx.post(f"{server['base']}{route}", files={"f": ("a.json", b"{}")}, headers=headers,
                               timeout=30)
        assert multipart.status_code == 415 and "application/json" in multipart.json()["error"], route
    # a plain HTML form (what any web page can make a signed-in browser send) is refused, and stores nothing
    form = httpx.post(f"{server['base']}/events", data={"transactions": "x"}, headers=headers, timeout=30)
    assert form.status_code == 415
    assert _history(server, cid) == before
    text = httpx.post(f"{server['base']}/score", content=b'{"customers": []}',
                      headers={**headers, "content-type": "text/plain"}, timeout=30)
    assert text.status_code == 415


def test_bodies_above_the_cap_are_refused_before_parsing(server):
    headers = {"x-api-key": KEY}
    big = json.dumps({"customers": [{"customer_id": "x" * 150}] * 2000}).encode()
    assert len(big) > MAX_BODY
    declared = httpx.post(f"{server['base']}/score", content=big,
                          headers={**headers, "content-type": "application/json"}, timeout=30)
    assert declared.status_code == 413 and "SEGMENTS_MAX_BODY_BYTES" in declared.json()["error"]

    def chunks():  # no content-length: the cap is counted as the body arrives
        for start in range(0, len(big), 16_384):
            yield big[start:start + 16_384]

    chunked = httpx.post(f"{server['base']}/score", content=chunks(),
                         headers={**headers, "content-type": "application/json"}, timeout=30)
    assert chunked.status_code == 413


def test_the_read_key_reads_and_basic_auth_never_writes(server):
    base, cid = server["base"], _customer_with_history(server)
    assert httpx.get(f"{base}/v1/info", headers={"x-api-key": READ_KEY}, timeout=30).status_code == 200
    assert httpx.get(f"{base}/v1/segments", auth=("marketer", READ_KEY), timeout=30).status_code == 200
    body = {"transactions": [_transaction(cid, 90, 8)]}
    assert httpx.post(f"{base}/events", json=body, headers={"x-api-key": READ_KEY}, timeout=30).status_code == 401
    # the write key as a browser's remembered Basic credential: a cross-site form could use it, so POST refuses it
    assert httpx.post(f"{base}/events", json=body, auth=("marketer", KEY), timeout=30).status_code == 401
    assert httpx.post(f"{base}/score", json={"customers": [{"customer_id": cid}]}, auth=("m", KEY),
                      timeout=30).status_code == 401
    assert not any(h["source"] == "event" and h["at"].startswith("2026-07-01T08") for h in _history(server, cid))


def test_a_segment_export_streams_the_audience_the_store_holds(server):
    """GET /v1/segments/{name}/export: the members without their holdout (csv, parquet), the position in the
    headers, the read key enough; unknown segments, formats and fields are 4xx."""
    import io

    import pyarrow.parquet as pq

    from features.segments import in_holdout
    from serving.segments.store import SegmentStore

    base, headers = server["base"], {"x-api-key": READ_KEY}
    store = SegmentStore(server["state"]["env"]["SEGMENTS_DB_URL"])
    at = datetime(2026, 7, 2)
    ids = [f"export-{i:03d}" for i in range(40)]
    with store.transaction() as conn:
        store.write.record(conn, [{"customer_id": c, "segment": "at_risk_vip", "change": "entered", "at": at,
                                   "cause": [], "source": "refresh"} for c in ids],
                           {c: {"churn_probability": i / 40} for i, c in enumerate(ids)}, at)
    members = sorted(m["customer_id"] for m in store.current.members("at_risk_vip", limit=10_000))
    expected = [c for c, held in zip(members, in_holdout(members, "at_risk_vip", 10.0), strict=True) if not held]
    log_seq = store.changes.last_seq()
    store.close()

    csv = httpx.get(f"{base}/v1/segments/at_risk_vip/export", headers=headers, timeout=60)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert int(csv.headers["x-segments-log-seq"]) >= log_seq
    assert list(pd.read_csv(io.StringIO(csv.text), dtype={"customer_id": str})["customer_id"]) == expected
    parquet = httpx.get(f"{base}/v1/segments/at_risk_vip/export", headers=headers, timeout=60,
                        params={"format": "parquet", "include_holdout": "true", "fields": "churn_probability"})
    table = pq.read_table(io.BytesIO(parquet.content)).to_pandas()
    assert list(table["customer_id"]) == members and table["in_holdout"].sum() == len(members) - len(expected)
    assert table.set_index("customer_id").loc["export-020", "churn_probability"] == 0.5
    for path, params, status in (("nope", {}, 404), ("at_risk_vip", {"format": "xlsx"}, 400),
                                 ("at_risk_vip", {"fields": "no_such_value"}, 400),
                                 ("at_risk_vip", {"changes_since": "yesterday"}, 400)):
        answer = httpx.get(f"{base}/v1/segments/{path}/export", params=params, headers=headers, timeout=30)
        assert answer.status_code == status and answer.json()["error"], (path, params, answer.text)


def test_event_records_follow_the_data_contract_all_or_nothing(server):
    headers = {"x-api-key": KEY}
    good, other = _ids(server, 2)
    cases = {"9999-12-31T23:59:59.999999": "timestamp", "2300-01-01T00:00:00Z": "timestamp",
             "1800-01-01T00:00:00Z": "timestamp"}
    for stamp, field in cases.items():
        record = {**_transaction(good, 7, 9), "timestamp": stamp}
        answer = httpx.post(f"{server['base']}/events", json={"transactions": [record]}, headers=headers, timeout=30)
        assert answer.status_code == 400, (stamp, answer.text)
        assert answer.json()["detail"][0]["loc"][-1] == field and stamp[:4] in answer.json()["detail"][0]["msg"]
    for field, value in (("amount", 1e308), ("amount", -1e12), ("quantity", 1e12), ("points_earned", -2e9)):
        answer = httpx.post(f"{server['base']}/events", json={"transactions": [
            {**_transaction(good, 8, 9), field: value}]}, headers=headers, timeout=30)
        assert answer.status_code == 400 and answer.json()["detail"][0]["loc"][-1] == field, answer.text
    # one bad record refuses the whole request: the good customer's record before it is not stored either
    before = _history(server, other)
    mixed = {"transactions": [_transaction(other, 11, 9), {**_transaction(good, 12, 9), "timestamp": "2300-01-01"}]}
    refused = httpx.post(f"{server['base']}/events", json=mixed, headers=headers, timeout=30)
    assert refused.status_code == 400 and refused.json()["detail"][0]["loc"][:3] == ["transactions", 1, "timestamp"]
    assert _history(server, other) == before
    retried = httpx.post(f"{server['base']}/events", json={"transactions": mixed["transactions"][:1]},
                         headers=headers, timeout=60)
    assert retried.status_code == 200 and retried.json()["customers"][0]["stored"] == [f"rt-{other}-11"]


def test_paging_and_ranges_are_bounded(server):
    headers, base = {"x-api-key": KEY}, server["base"]
    huge = httpx.get(f"{base}/v1/segments/loyal", params={"offset": "99999999999999999999"}, headers=headers,
                     timeout=30)
    assert _field_error(huge, ["query", "offset"])
    centuries = httpx.get(f"{base}/v1/segments/loyal", params={"start": "1900-01-01", "end": "2100-01-01"},
                          headers=headers, timeout=30)
    assert centuries.status_code == 400 and "3,660 days" in centuries.json()["error"]
    backwards = httpx.get(f"{base}/v1/segments/loyal", params={"start": "2026-07-01", "end": "2026-06-01"},
                          headers=headers, timeout=30)
    assert backwards.status_code == 400
    fine = httpx.get(f"{base}/v1/segments/loyal", params={"start": "2026-06-01", "end": "2026-07-01"},
                     headers=headers, timeout=30)
    assert fine.status_code == 200 and len(fine.json()["daily"]) == 30


def test_counterfactual_goals_cannot_expand_or_overflow(server):
    headers = {"x-api-key": KEY}
    url = f"{server['base']}/v1/customers/{_ids(server, 1)[0]}/counterfactual"
    laughs = "churn_band in [&a [x, x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]]"
    for goal in (laughs, "churn_probability < .inf", "churn_probability < .nan", "churn_band in [[[[low]]]]"):
        answer = httpx.get(url, params={"goal": goal}, headers=headers, timeout=60)
        assert answer.status_code == 422, (goal, answer.text)
        assert len(answer.text) < 1_000 and "x, x, x, x, x, x, x, x, x, x, x" not in answer.text, goal
    long = httpx.get(url, params={"goal": "churn_probability < 0.1 " + " " * 600}, headers=headers, timeout=30)
    assert _field_error(long, ["query", "goal"], "500 characters")
    for actions in ("0", "7", "two"):
        assert _field_error(httpx.get(url, params={"max_actions": actions}, headers=headers, timeout=30),
                            ["query", "max_actions"])


def test_query_and_path_constraints_are_in_the_document_and_enforced(server):
    """What the routes refuse, the document says (so generated clients and the fuzzer know it): the flows' moments,
    the counterfactual's bounds, the subscription name's pattern; moments may carry an offset."""
    headers, base = {"x-api-key": KEY}, server["base"]
    spec = httpx.get(f"{base}/docs.json", headers=headers, timeout=10).json()

    def parameters(path, method):
        return {p["name"]: p["schema"] for p in spec["paths"][path][method]["parameters"]}

    flows = parameters("/v1/flows", "get")
    assert flows["start"]["format"] == flows["end"]["format"] == "date-time"
    counterfactual = parameters("/v1/customers/{customer_id}/counterfactual", "get")
    assert (counterfactual["max_actions"]["minimum"], counterfactual["max_actions"]["maximum"]) == (1, 6)
    assert counterfactual["goal"]["maxLength"] == 500
    assert parameters("/v1/subscriptions/{name}", "put")["name"]["pattern"].startswith("^[A-Za-z0-9]")
    segment = parameters("/v1/segments/{name}", "get")
    assert (segment["limit"]["minimum"], segment["limit"]["maximum"], segment["offset"]["minimum"]) == (1, 10_000, 0)
    assert parameters("/v1/segments/{name}/export", "get")["format"]["enum"] == ["csv", "parquet", "jsonl"]
    # a listing links to its items, so a client (and the fuzzer's stateful phase) can follow it
    links = spec["paths"]["/v1/segments"]["get"]["responses"]["200"]["links"]
    assert {link["parameters"]["name"] for link in links.values()} == {"$response.body#/segments/0/name"}
    operations = {op["operationId"] for ops in spec["paths"].values() for op in ops.values() if "operationId" in op}
    assert {link["operationId"] for link in links.values()} <= operations and len(links) == 2

    def flows_between(start, end):
        return httpx.get(f"{base}/v1/flows", params={"start": start, "end": end, "segments": "loyal,inactive,likely_to_churn"},
                         headers=headers, timeout=30)

    for end in ("2026-06-01", "2026-06-01T02:00:00+02:00", "2026-06-01T00:00:00Z"):
        answer = flows_between("2026-01-01", end)
        assert answer.status_code == 200 and isinstance(answer.json(), list), answer.text
    assert _field_error(flows_between("yesterday", "2026-06-01"), ["query", "start"])
    out_of_range = flows_between("0001-01-01T00:00:00+01:00", "2026-06-01")
    assert out_of_range.status_code == 400 and "start/end" in out_of_range.json()["error"]
    named = httpx.put(f"{base}/v1/subscriptions/-no", headers=headers, timeout=30,
                      json={"url": "http://127.0.0.1:9/hooks", "segments": ["loyal"], "changes": ["entered"]})
    assert _field_error(named, ["path", "name"])


def _field_error(answer: httpx.Response, loc: list[str], said: str = "") -> bool:
    """A 400 whose detail names the field at `loc` (with `said` in its message)."""
    assert answer.status_code == 400, answer.text
    return any(d["loc"] == loc and said in d["msg"] for d in answer.json()["detail"])


# ---------------------------------------------------------------------------------------------------------------
# Faults (issue 13, item 3): a damaged serve folder and a database that is down answer 503 with the reason, the
# worker stays up, and the service recovers when the database is back, without a restart


def test_a_damaged_serve_folder_is_a_503_not_a_crash(server, tmp_path):
    import shutil

    serve_dir = tmp_path / "serve"
    shutil.copytree(server["state"]["serve_dir"], serve_dir)
    (serve_dir / "features.parquet").write_bytes(b"PAR1 not really parquet")
    process, base, log = _serve(tmp_path, serve_dir, server["state"]["env"], "damaged.log")
    try:
        _answering(base, process, log)
        ready = httpx.get(f"{base}/v1/ready", timeout=10)
        assert ready.status_code == 503 and "cannot be read (features.parquet," in ready.json()["reason"], ready.text
        assert "rebuild it" in ready.json()["reason"]
        score = httpx.post(f"{base}/score", json={"customers": [{"customer_id": "x"}]}, headers={"x-api-key": KEY},
                           timeout=30)
        assert score.status_code == 503 and "not ready" in score.json()["error"]
        assert process.poll() is None  # the worker is alive and answering
    finally:
        _stop(process)


def test_a_store_that_opens_later_is_used_without_a_restart(server, tmp_path):
    later = tmp_path / "later"  # SQLite cannot create a file in a folder that does not exist yet
    process, base, log = _serve(tmp_path, server["state"]["serve_dir"], server["state"]["env"], "later.log",
                                SEGMENTS_DB_URL=f"sqlite:///{later / 'segments.db'}")
    try:
        _answering(base, process, log)
        ready = httpx.get(f"{base}/v1/ready", timeout=10)
        assert ready.status_code == 503 and "segments" in ready.json()["reason"], ready.text
        cid = _customer_with_history(server)
        events = httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, 70, 9)]},
                            headers={"x-api-key": KEY}, timeout=30)
        assert events.status_code == 503
        later.mkdir()
        assert _until(lambda: httpx.get(f"{base}/v1/ready", timeout=10).status_code == 200), log.read_text()[-2000:]
        events = httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, 70, 9)]},
                            headers={"x-api-key": KEY}, timeout=60)
        assert events.status_code == 200 and events.json()["customers"][0]["stored"] == [f"rt-{cid}-70"]
    finally:
        _stop(process)


def _event_processes(process: subprocess.Popen) -> list[psutil.Process]:
    """The service's event processes (serving.http.event_process: spawned by the workers)."""
    found = []
    for proc in psutil.Process(process.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def test_events_run_in_a_process_that_comes_back_and_never_outlives_its_worker(server, tmp_path):
    """Events are processed beside the scoring worker (so they never hold its interpreter): killed, that process is
    replaced without the worker restarting and no event is lost; its worker killed, it exits too."""
    process, base, log = _serve(tmp_path, server["state"]["serve_dir"], server["state"]["env"], "events.log",
                                SEGMENTS_DB_URL=f"sqlite:///{tmp_path / 'events.db'}")
    headers, cid = {"x-api-key": KEY}, _customer_with_history(server)

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, i, 9 + i % 10)]},
                          headers=headers, timeout=60)

    try:
        _wait_ready(base, process, log)
        [events] = _event_processes(process)
        worker = events.parent()
        assert post(90).json()["customers"][0]["stored"] == [f"rt-{cid}-90"]
        events.kill()
        events.wait(timeout=10)
        answer = post(91)
        if answer.status_code == 503:  # the worker learnt of the death only with this request: it says so
            assert "send it again" in answer.json()["error"], answer.text
            answer = post(91)
        assert answer.status_code == 200 and answer.json()["customers"][0]["stored"] == [f"rt-{cid}-91"], answer.text
        assert post(90).json()["customers"][0]["duplicates"] == [f"rt-{cid}-90"]  # stored before the kill, kept
        [again] = _event_processes(process)
        assert again.pid != events.pid and again.parent().pid == worker.pid  # the worker itself never restarted
        assert httpx.get(f"{base}/v1/ready", timeout=10).status_code == 200
        worker.kill()
        again.wait(timeout=15)  # psutil.TimeoutExpired if it outlived its worker
    finally:
        _stop(process)


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target, which a test can cut (every connection dropped, nothing listening) and
    restore on the same port: the database as the service sees it going down and coming back."""

    def __init__(self, target: int):
        import threading

        self.target, self.port, self.lock = target, _free_port(), threading.Lock()
        self.listener, self.sockets, self.stopped = None, [], False

    def start(self) -> None:
        import threading

        self.stopped = False
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        # close() alone does not wake a thread blocked in accept(): the socket would keep accepting one more
        # connection. shutdown() wakes it, and the flag turns away anything accepted meanwhile.
        with self.lock:
            self.stopped = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets = []

    def _accept(self, listener) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                if self.stopped:
                    client.close()
                    return
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass


@pytest.fixture()
def pg_database():
    """A fresh PostgreSQL database (SEGMENTS_TEST_PG_URL, as the store tests use), dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine

    from serving.segments.store import sqlalchemy_url

    admin_url = os.environ.get("SEGMENTS_TEST_PG_URL")
    if not admin_url:
        if os.environ.get("SEGMENTS_REQUIRE_PG") == "1":
            pytest.fail("SEGMENTS_REQUIRE_PG=1 but SEGMENTS_TEST_PG_URL is not set")
        pytest.skip("SEGMENTS_TEST_PG_URL is not set (`.ci/run postgres` starts a server)")
    admin = create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"test_{uuid.uuid4().hex}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_postgresql_down_and_back_up_without_a_restart(server, tmp_path, pg_database):
    proxy = TcpProxy(pg_database.port)
    proxy.start()
    url = pg_database.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    process, base, log = _serve(tmp_path, server["state"]["serve_dir"], server["state"]["env"], "pg.log",
                                SEGMENTS_DB_URL=url, SEGMENTS_DB_CONNECT_TIMEOUT="2")
    headers, cid = {"x-api-key": KEY}, _customer_with_history(server)
    try:
        _wait_ready(base, process, log)
        assert httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, 80, 9)]}, headers=headers,
                          timeout=60).status_code == 200
        proxy.stop()  # the database goes away: every pooled connection is cut
        assert _until(lambda: httpx.get(f"{base}/v1/ready", timeout=10).status_code == 503)
        down = [httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, 81, 10)]}, headers=headers,
                           timeout=30),
                httpx.get(f"{base}/v1/segments", headers=headers, timeout=30),
                httpx.get(f"{base}/v1/customers/{cid}", headers=headers, timeout=30)]
        for answer in down:
            assert answer.status_code == 503 and "unavailable" in answer.json()["error"], answer.text
        # scoring needs the database only to learn of a newer refresh: it keeps answering, or says 503, never 500
        score = httpx.post(f"{base}/score", json={"customers": [{"customer_id": cid}]}, headers=headers, timeout=30)
        assert score.status_code in (200, 503), score.text
        assert process.poll() is None
        proxy.start()  # back, on the same address
        assert _until(lambda: httpx.get(f"{base}/v1/ready", timeout=10).status_code == 200), log.read_text()[-2000:]
        again = httpx.post(f"{base}/events", json={"transactions": [_transaction(cid, 81, 10)]}, headers=headers,
                           timeout=60)
        assert again.status_code == 200 and again.json()["customers"][0]["stored"] == [f"rt-{cid}-81"]
        history = httpx.get(f"{base}/v1/customers/{cid}", headers=headers, timeout=30)
        assert history.status_code == 200
    finally:
        _stop(process)
        proxy.stop()


def test_the_live_service_holds_its_openapi_document_under_fuzzing(server, tmp_path):
    """Issue 13, item 6: schemathesis (an OpenAPI fuzzer) against a real `segments serve` on 127.0.0.1, every
    operation: its coverage phase (boundaries and each documented constraint), 25 random examples each, then the
    stateful phase. No 5xx, only documented statuses, bodies and content types as documented."""
    process, base, log = _serve(tmp_path, server["state"]["serve_dir"], server["state"]["env"], "fuzz.log",
                                SEGMENTS_API_KEY="", SEGMENTS_READ_KEY="",
                                SEGMENTS_DB_URL=f"sqlite:///{tmp_path / 'fuzz.db'}")
    try:
        _wait_ready(base, process, log)
        schemathesis = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(schemathesis), "run", f"{base}/docs.json", "--checks",
             "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
             "--max-examples", "25", "--seed", "13", "--no-color"],
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)  # its cache stays out of the repo
        summary = run.stdout[-4000:]
        assert run.returncode == 0, summary + log.read_text()[-2000:]
        assert "passed" in summary and "failures" not in summary.lower().replace("0 failures", ""), summary
        assert "Selected: 21/21" in summary  # every operation of the document
        assert process.poll() is None
    finally:
        _stop(process)


FRESH_PREDICT = """
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

sample, out, root = pd.read_parquet(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for path in sorted(root.iterdir()):
    model = mlflow.pyfunc.load_model(str(path))
    model.predict(sample).to_parquet(out / f"{path.name}.parquet")
import training
print(training.__file__)
"""


def test_registered_models_load_and_predict_outside_the_project(server, tmp_path):
    """Issue 14, item 4: every registered model, downloaded from MLflow, loads and predicts in an environment built
    only from its own requirements.txt (pinned from the lock), with our code from the model's code paths: the same
    scores as in the project."""
    import mlflow

    from training.tracking import plain_dtypes, registered_name

    uri = server["state"]["env"]["MLFLOW_TRACKING_URI"]
    models = tmp_path / "models"
    for record in server["state"]["records"]:
        name = registered_name(record.kind, record.seed)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1", dst_path=str(models / name),
                                            tracking_uri=uri, registry_uri=uri)
    requirements = {(models / name / "requirements.txt").read_text() for name in os.listdir(models)}
    assert len(requirements) == 1 and "lightgbm==" in next(iter(requirements))  # pinned, one for all kinds
    fresh = fresh_environment(tmp_path / "model-env", models / os.listdir(models)[0] / "requirements.txt")
    sample = server["state"]["features"].head(40).reset_index(drop=True)
    sample_path = tmp_path / "sample.parquet"
    plain_dtypes(sample).to_parquet(sample_path)  # the logged signature's types (yes/no as 1/0), as MLflow enforces
    script = tmp_path / "predict.py"
    script.write_text(FRESH_PREDICT)
    out = tmp_path / "predictions"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    ran = subprocess.run([str(fresh / "python"), str(script), str(sample_path), str(out), str(models)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert Path(ran.stdout.strip()).is_relative_to(models)  # our code came with the model, not from the project
    for record in server["state"]["records"]:
        name = registered_name(record.kind, record.seed)
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), record.model.predict(sample),
                                      check_exact=False, rtol=1e-12)
