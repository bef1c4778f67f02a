"""Load on the service in the README's configuration: `make demo`, then `cd demo && segments serve` (issue 13, item 7).

Usage (after `make demo`; one command, ~16 min with the 10-minute mixed run):
    python bench/demo_load.py [--demo demo] [--only seq,score,events,mixed,workers] [--mixed-minutes 10]
                              [--pg-url postgresql://USER:PASSWORD@127.0.0.1:PORT/postgres]

The service runs as the README starts it: from the demo folder, its serve folder (5,000 customers, churn, value,
clusters, two look-alike seeds), its BentoML store and a copy of its segment store (SQLite, two refreshes: the
`in top N%` segments are evaluated), one worker unless said. The demo's own store is never written.

Scenarios (open loop = requests sent on a fixed schedule whatever the answers; latency from the scheduled send time
to the full answer, so queueing is not hidden):
    seq      one POST /score {"customers": [one id], "explain": true} at a time: the service time.
    score    open loop, score+explain, 50/s for 60 s (goal p99 <= 25 ms).
    events   one POST /events at a time, then open loop 20/s for 60 s (goal p99 <= 50 ms); each posts one purchase
             (now, 20-200) of a random known customer.
    mixed    open loop, 30 score+explain/s and 10 events/s together for --mixed-minutes (goal: 0 errors, both p99
             goals, the service's memory flat: RSS of its processes sampled every 10 s).
    workers  needs --pg-url (a role that may CREATE DATABASE): a PostgreSQL store refreshed like the demo's, then
             the highest rate each of 1 and 2 workers (`segments serve --workers`) sustains with score+explain and
             events 3:1 (closed loop, 16 clients, a connection per request, 30 s), and whether each customer's events are logged in order.

The client is asyncio on raw HTTP/1.1 connections (no HTTP library on the hot path; its CPU time per request is
reported), kept alive with one worker and new per request with more (so that the workers share them), on the same 2
cores as the server. Results: printed and written to bench/results/demo_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_load import QUIET, free_port, percentiles, stop_server

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 180
GOALS_MS = {"score": 25, "events": 50}


class Loopback:
    """A minimal HTTP/1.1 client for 127.0.0.1: keep-alive connections reused LIFO, JSON bodies, answers with a
    Content-Length or chunked."""

    def __init__(self, port: int, fresh: bool = False):
        # fresh: a new connection per request. With several workers a kept-alive connection stays with the worker
        # that accepted it, and one worker can take most of a few connections (measured 814 vs 256 requests).
        self.port, self.idle, self.resent, self.fresh = port, [], 0, fresh

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed this idle connection (its keep-alive timeout) before reading the request, as
                # HTTP clients expect: sent again on a new connection, as they do.
                writer.close()
                self.resent += 1
        return await self._exchange(*await asyncio.open_connection("127.0.0.1", self.port), path, body)

    async def _exchange(self, reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
        close = b"Connection: close\r\n" if self.fresh else b""
        writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), close, len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        if headers.get(b"transfer-encoding") == b"chunked":
            content = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                content += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            content = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        if self.fresh or headers.get(b"connection") == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, content

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


class Requests:
    """The two kinds of request: score+explain of a random known customer, and one purchase of one."""

    def __init__(self, ids: list[str], seed: int = 7):
        self.ids, self.rng = ids, random.Random(seed)

    def score(self) -> tuple[str, bytes]:
        body = {"customers": [{"customer_id": self.rng.choice(self.ids)}], "explain": True}
        return "/score", json.dumps(body).encode()

    def event(self, customer: str | None = None) -> tuple[str, bytes]:
        moment = datetime.now(UTC) - timedelta(seconds=1)
        body = {"transactions": [{"customer_id": customer or self.rng.choice(self.ids),
                                  "transaction_id": f"bench-{uuid.uuid4().hex}", "timestamp": moment.isoformat(),
                                  "amount": round(self.rng.uniform(20, 200), 2), "quantity": 1, "channel": "app"}]}
        return "/events", json.dumps(body).encode()


def check(kind: str, status: int, content: bytes) -> str | None:
    """None for a good answer, else what was wrong."""
    if status != 200:
        return f"{kind} {status}: {content[:200]!r}"
    answer = json.loads(content)
    if kind == "score" and (answer["customers"][0].get("error") or not answer["customers"][0].get("reasons")):
        return f"score item: {content[:200]!r}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The server, as the README starts it


def start_server(demo: Path, db_url: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, **QUIET}
    env.pop("SEGMENTS_DB_URL", None)
    process = subprocess.Popen([str(BIN / "segments"), "serve", "--port", str(port), "--db", db_url,
                                "--workers", str(workers)], cwd=demo, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status, _ = asyncio.run(_get(port, "/v1/ready"))
            # Every worker up before the first connection: keep-alive connections stay with the worker that took
            # them, so connections opened while only one had started would all go to that one.
            if status == 200 and log.read_text().count("Service segments initialized") >= workers:
                return process
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise SystemExit(f"server not ready; see {log}")


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data[9:12]), data


def server_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def fresh_store(demo: Path, work: Path) -> str:
    """A copy of the demo's segment store (its two refreshes), so events never write the demo's own."""
    copy = work / "segments.db"
    for suffix in ("", "-wal", "-shm"):
        copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    shutil.copy(demo / "segments.db", copy)
    return f"sqlite:///{copy}"


# ---------------------------------------------------------------------------------------------------------------
# Load shapes


async def one_at_a_time(port: int, make, kind: str, n: int, warmup: int = 10, fresh: bool = False) -> dict:
    client, latencies, errors = Loopback(port, fresh), [], []
    cpu0 = time.process_time()
    for i in range(warmup + n):
        path, body = make()
        start = time.perf_counter()
        status, content = await client.post(path, body)
        if i >= warmup:
            latencies.append((time.perf_counter() - start) * 1000)
            if (problem := check(kind, status, content)) is not None:
                errors.append(problem)
    client.close()
    return {"requests": n, "errors": len(errors), "error_samples": errors[:3], **percentiles(latencies),
            "client_cpu_ms_per_request": (time.process_time() - cpu0) * 1000 / (warmup + n)}


async def open_loop(port: int, streams: dict, seconds: float, rss_pid: int | None = None, fresh: bool = False
                    ) -> dict:
    """streams: kind -> (rate per s, make). Each kind is sent on its own fixed schedule; returns per kind the
    latency percentiles and errors, plus RSS samples when `rss_pid`."""
    client = Loopback(port, fresh)
    results = {kind: {"latencies": [], "sent_at": [], "errors": []} for kind in streams}
    tasks: list[asyncio.Task] = []

    async def one(kind: str, path: str, body: bytes, scheduled: float) -> None:
        try:
            status, content = await asyncio.wait_for(client.post(path, body), timeout=30)
            done = time.perf_counter()
            if (problem := check(kind, status, content)) is not None:
                results[kind]["errors"].append(problem)
            results[kind]["latencies"].append((done - scheduled) * 1000)
            results[kind]["sent_at"].append(scheduled - t0)
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            results[kind]["errors"].append(f"{type(exc).__name__}: {exc}")

    async def sender(kind: str, rate: float, make, t0: float) -> None:
        for i in range(round(rate * seconds)):
            scheduled = t0 + i / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            path, body = make()
            tasks.append(asyncio.create_task(one(kind, path, body, scheduled)))

    rss: list[tuple[float, float]] = []

    async def sample_rss(t0: float) -> None:
        while time.perf_counter() - t0 < seconds:
            rss.append((round(time.perf_counter() - t0, 1), round(server_rss_mb(rss_pid), 1)))
            await asyncio.sleep(10)

    gc.collect()
    gc.freeze()  # the client's own full collections would otherwise pause its send loop
    cpu0, t0 = time.process_time(), time.perf_counter() + 0.2
    senders = [sender(kind, rate, make, t0) for kind, (rate, make) in streams.items()]
    await asyncio.gather(*senders, *([sample_rss(t0)] if rss_pid else []))
    await asyncio.gather(*tasks)
    client.close()
    gc.unfreeze()
    sent = sum(round(rate * seconds) for rate, _ in streams.values())
    out = {kind: {"rate_per_s": streams[kind][0], "sent": round(streams[kind][0] * seconds),
                  "errors": len(r["errors"]), "error_samples": r["errors"][:3], **percentiles(r["latencies"]),
                  "goal_p99_ms": GOALS_MS[kind], "slowest": slowest(r)} for kind, r in results.items()}
    out["seconds"], out["client_cpu_ms_per_request"] = seconds, (time.process_time() - cpu0) * 1000 / sent
    out["resent_after_idle_close"] = client.resent
    if rss:
        out["rss_mb_samples"] = rss
    return out


def without_password(text: str) -> str:
    """The command as recorded in the results: a database URL's password never written down."""
    return re.sub(r"(postgresql(?:\+\w+)?://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def slowest(result: dict, n: int = 20) -> list[tuple[float, float]]:
    """The n slowest answers as (seconds into the run when sent, latency ms): stalls that hit both streams at the
    same moments point at the machine or a periodic job, not at one request's work."""
    pairs = sorted(zip(result["sent_at"], result["latencies"], strict=True), key=lambda p: -p[1])[:n]
    return [(round(at, 2), round(ms, 1)) for at, ms in sorted(pairs)]


async def saturate(port: int, requests: Requests, seconds: float, clients: int = 16) -> dict:
    """Closed loop: `clients` clients each sending the next request when the last is answered (a new connection
    each, so the workers share them), 3 score+explain to 1 event: the throughput the server sustains."""
    counts, errors = {"score": 0, "events": 0}, []
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        client, i = Loopback(port, fresh=True), k
        while time.perf_counter() < deadline:
            kind = "events" if i % 4 == 3 else "score"
            path, body = requests.event() if kind == "events" else requests.score()
            status, content = await client.post(path, body)
            if (problem := check(kind, status, content)) is not None:
                errors.append(problem)
            counts[kind] += 1
            i += 1
        client.close()

    await asyncio.gather(*(worker(k) for k in range(clients)))
    total = sum(counts.values())
    return {"seconds": seconds, "clients": clients, **counts, "requests_per_s": total / seconds,
            "errors": len(errors), "error_samples": errors[:3]}


async def ordered_events(port: int, requests: Requests, customers: list[str], per_customer: int) -> list[str]:
    """Each customer's events posted one after another (customers in parallel); returns the customers."""
    async def chain(customer: str) -> None:
        client = Loopback(port)
        for _ in range(per_customer):
            status, content = await client.post(*requests.event(customer))
            assert status == 200, content[:200]
        client.close()

    await asyncio.gather(*(chain(c) for c in customers))
    return customers


def log_in_order(db_url: str, customers: list[str], per_customer: int) -> dict:
    """Per customer: all their posted purchases stored, and their log's times never going back in recording order."""
    from serving.segments.store import SegmentStore

    store = SegmentStore(db_url)
    try:
        purchases = store.current.posted(customers)["transactions"]
        purchases = purchases[purchases["transaction_id"].astype(str).str.startswith("bench-")]
        stored = purchases.groupby("customer_id").size().reindex(customers, fill_value=0)
        in_order = all(store.changes.log(customer_id=c).sort_values("seq")["at"].is_monotonic_increasing
                       for c in customers)
    finally:
        store.close()
    return {"customers": len(customers), "events_each": per_customer,
            "all_stored": bool((stored >= per_customer).all()), "log_in_time_order": in_order}


# ---------------------------------------------------------------------------------------------------------------


def pg_store(admin_url: str, demo: Path, work: Path) -> str:
    """A fresh PostgreSQL database refreshed as `make demo` refreshes its SQLite store."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from serving.segments.store import sqlalchemy_url

    name = f"demo_load_{uuid.uuid4().hex[:8]}"
    with create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    for as_of in ("2026-06-01", "2026-07-01"):
        subprocess.run([str(BIN / "segments"), "refresh", "--data", "data", "--as-of", as_of, "--db", url,
                        "--predictions", str(work / "predictions")], cwd=demo, check=True,
                       env={**os.environ, **QUIET}, stdout=subprocess.DEVNULL)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--only", default="seq,score,events,mixed,workers")
    parser.add_argument("--mixed-minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the score and events open loops")
    parser.add_argument("--workers", type=int, default=1, help="workers of the SQLite scenarios (seq ... mixed)")
    parser.add_argument("--pg-url", default=os.environ.get("SEGMENTS_TEST_PG_URL"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "demo_load.json")
    args = parser.parse_args()
    demo, only = args.demo.resolve(), set(args.only.split(","))
    if not (demo / "serve" / "manifest.json").exists() or not (demo / "segments.db").exists():
        raise SystemExit(f"{demo} has no serve folder or segment store: run `make demo` first")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "demo_load"
    work.mkdir(exist_ok=True)

    import pandas as pd

    ids = pd.read_parquet(demo / "serve" / "features.parquet", columns=["customer_id"])["customer_id"]
    requests = Requests([str(i) for i in ids])
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "customers": len(ids),
              "command": without_password(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])), "load_before": os.getloadavg(),
              "workers": args.workers}

    def report(key: str, value: dict) -> None:
        result[key] = value
        print(key, json.dumps(value, indent=1, default=str), file=sys.stderr, flush=True)

    if "workers" in only and not args.pg_url:  # said before the other scenarios' minutes, not after
        raise SystemExit("workers needs --pg-url (or SEGMENTS_TEST_PG_URL): `.ci/run postgres` starts one")
    if only & {"seq", "score", "events", "mixed"}:
        port = free_port()
        process = start_server(demo, fresh_store(demo, work), port, work / "server.log", args.workers)
        try:
            fresh = args.workers > 1  # a connection per request, so that the workers share them
            if "seq" in only:
                report("seq_score", asyncio.run(one_at_a_time(port, requests.score, "score", 200, fresh=fresh)))
            if "score" in only:
                report("score_50_per_s", asyncio.run(open_loop(port, {"score": (50, requests.score)}, args.seconds,
                                                               fresh=fresh)))
            if "events" in only:
                report("seq_events", asyncio.run(one_at_a_time(port, requests.event, "events", 100, fresh=fresh)))
                report("events_20_per_s", asyncio.run(open_loop(port, {"events": (20, requests.event)},
                                                                args.seconds, fresh=fresh)))
            if "mixed" in only:
                report("mixed", asyncio.run(open_loop(port, {"score": (30, requests.score),
                                                             "events": (10, requests.event)},
                                                      args.mixed_minutes * 60, rss_pid=process.pid, fresh=fresh)))
        finally:
            stop_server(process)
    if "workers" in only:
        url = pg_store(args.pg_url, demo, work)
        runs = {}
        for workers in (1, 2):
            port = free_port()
            process = start_server(demo, url, port, work / f"server_{workers}.log", workers)
            try:
                asyncio.run(saturate(port, requests, 5))  # warm-up: every worker's first requests
                runs[workers] = asyncio.run(saturate(port, requests, 30))
                chosen = random.Random(workers).sample(requests.ids, 20)
                asyncio.run(ordered_events(port, requests, chosen, 5))
                runs[workers]["order"] = log_in_order(url, chosen, 5)
            finally:
                stop_server(process)
        runs["speedup"] = runs[2]["requests_per_s"] / runs[1]["requests_per_s"]
        report("workers_postgresql", runs)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
