"""End to end: `segments serve` (a real `bentoml serve`) on 127.0.0.1, with an API key and a small batch cap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
from serving_setup import build_served

KEY = "test-key-5b1c"
READ_KEY = "read-key-77a0"
MAX_BODY = 200_000
READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, generated_validation, generated):
    root = tmp_path_factory.mktemp("http")
    served = build_served(root, generated_validation, generated[1])
    port = _free_port()
    env = {**os.environ, **served["env"], "SEGMENTS_API_KEY": KEY, "SEGMENTS_READ_KEY": READ_KEY,
           "SEGMENTS_MAX_BATCH": "5", "SEGMENTS_MAX_BODY_BYTES": str(MAX_BODY),
           "BENTOML_DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = root / "server.log"
    segments = Path(sys.executable).with_name("segments")
    with open(log, "w") as out:
        process = subprocess.Popen([str(segments), "serve", "--serve-dir", str(served["serve_dir"]),
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=root, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base, process, log)
    yield {"base": base, "process": process, "log": log, "state": served, "root": root}
    _stop(process)


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
    metrics = httpx.get(f"{server['base']}/metrics", headers=headers, timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
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
    port = _free_port()
    log = tmp_path / "bento.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", "segments:latest",
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
    """A stream of events to a second server on the same store; SIGKILL it mid-stream, restart, resend everything
    (a client retries what it does not know was stored): every acknowledged event is stored once, none twice, and
    the customer's features count each one once."""
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
                 str(server["state"]["serve_dir"]), "--port", str(port), "--db", db], env=env, cwd=tmp_path,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(f"http://127.0.0.1:{port}", process, log)
        return process, f"http://127.0.0.1:{port}"

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
    assert update["as_of"] == body["as_of"]
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
    for amount in (1e308, -1e12):
        answer = httpx.post(f"{server['base']}/events", json={"transactions": [
            {**_transaction(good, 8, 9), "amount": amount}]}, headers=headers, timeout=30)
        assert answer.status_code == 400 and answer.json()["detail"][0]["loc"][-1] == "amount", answer.text
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
    assert huge.status_code == 400 and "offset" in huge.json()["error"]
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
    assert long.status_code == 400 and "500 characters" in long.json()["error"]
