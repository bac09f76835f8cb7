"""Load that makes the QueryEncoder scale out, and back in when it stops (shortened autoscaling delays)."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.serve.test_faults import _running, _wait

pytestmark = pytest.mark.ray


def test_encoder_scales_out_under_load_and_back_in(service):
    _, url = service
    _wait(lambda: _running("QueryEncoder") == 1, "one QueryEncoder replica")
    stop = threading.Event()
    sent = []

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set() and i < 2000:  # never-cached queries: every one reaches the encoder
            requests.post(f"{url}/search", json={"query": f"scaling load {worker} {i}", "k": 5}, timeout=90)
            sent.append(1)
            i += 1

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(24)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: _running("QueryEncoder") == 2, "the QueryEncoder to scale out to 2 replicas", 150)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert len(sent) > 0
    _wait(lambda: _running("QueryEncoder") == 1, "the QueryEncoder to scale back in to 1 replica", 150)
