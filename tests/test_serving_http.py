"""End to end: `segments serve` (a real `bentoml serve`) on 127.0.0.1, with an API key and a small batch cap."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serving_setup import build_served

KEY = "test-key-5b1c"
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
    env = {**os.environ, **served["env"], "SEGMENTS_API_KEY": KEY, "SEGMENTS_MAX_BATCH": "5",
           "BENTOML_DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = root / "server.log"
    segments = Path(sys.executable).with_name("segments")
    with open(log, "w") as out:
        process = subprocess.Popen([str(segments), "serve", "--serve-dir", str(served["serve_dir"]),
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=root, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base, process, log)
    yield {"base": base, "process": process, "log": log, "state": served}
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
    info = httpx.get(f"{server['base']}/v1/info", headers=headers, timeout=10).json()
    assert info["ready"] and info["max_batch"] == 5


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
