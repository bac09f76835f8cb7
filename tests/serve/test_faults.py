"""Replica processes killed under a steady stream of real HTTP requests: requests survive (retried by the
ingress while Serve restarts the replica) and the service is whole again afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.ray


def _running(deployment: str) -> int:
    from ray import serve

    return serve.status().applications["search"].deployments[deployment].replica_states.get("RUNNING", 0)


def _wait(cond, what: str, limit_s: float = 300) -> None:
    """Poll ``cond`` until it holds; a bound, not a speed assertion."""
    end = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what} after {limit_s} s")
        time.sleep(0.5)


class Stream:
    """Requests from ``threads`` clients, hot and never-seen queries alternating, until stopped and at
    least ``least`` were sent (at most 5000, at most ``limit_s`` seconds: bounded on a busy machine)."""

    def __init__(self, url: str, hot: str, threads: int = 4, least: int = 200, limit_s: float = 600):
        self.url, self.hot, self.least, self.codes, self.errors = url, hot, least, [], []
        self.stop = threading.Event()
        self.end = time.monotonic() + limit_s
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _more(self) -> bool:
        n = len(self.codes)
        return n < 5000 and time.monotonic() < self.end and (not self.stop.is_set() or n < self.least)

    def _run(self, worker: int) -> None:
        i = 0
        while self._more():
            q = self.hot if i % 2 else f"tail query {worker} {i}"
            try:
                r = requests.post(f"{self.url}/search", json={"query": q, "k": 5}, timeout=300)
                self.codes.append(r.status_code)
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
                self.codes.append(-1)
            i += 1
            time.sleep(0.02)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(900)


def test_killing_encoder_then_index_replica_loses_no_requests(service, built_index):
    import pandas as pd

    from ace_ray.serve.index_dir import HOT_FILE

    _, url = service
    _wait(lambda: _running("QueryEncoder") == 1, "one QueryEncoder replica")
    stream = Stream(url, pd.read_parquet(built_index / HOT_FILE)["key"].iloc[0])
    stream.start()
    try:
        time.sleep(2)
        for deployment, key in (("QueryEncoder", "model"), ("ProductIndex", "index")):
            before = requests.get(f"{url}/healthz", timeout=60).json()
            pid = before["index"]["pid"] if key == "index" else _encoder_pid(url)
            os.kill(pid, signal.SIGKILL)
            _wait(lambda d=deployment, p=pid: _running(d) >= 1 and _pid(url, d) not in (None, p),
                  f"a new {deployment} replica")  # fmt: skip
            time.sleep(2)
    finally:
        stream.finish()
    ok = sum(c == 200 for c in stream.codes)
    assert len(stream.codes) >= stream.least, "the stream ran out of time before sending enough requests"
    assert ok / len(stream.codes) >= 0.999, (
        stream.codes.count(200),
        len(stream.codes),
        set(stream.codes),
        stream.errors[:3],
    )
    health = requests.get(f"{url}/healthz", timeout=60)
    assert health.status_code == 200 and health.json()["catalogue_size"] > 0
    r = requests.post(f"{url}/search", json={"query": "a query after the faults", "k": 3}, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def _encoder_pid(url: str) -> int:
    from ray import serve

    return serve.get_deployment_handle("QueryEncoder", "search").info.remote().result(timeout_s=20)["pid"]


def _pid(url: str, deployment: str) -> int | None:
    try:
        if deployment == "QueryEncoder":
            return _encoder_pid(url)
        return requests.get(f"{url}/healthz", timeout=30).json()["index"]["pid"]
    except Exception:
        return None
