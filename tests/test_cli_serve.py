"""`ace-ray serve` as an operator runs it: its own process, joined to a running Ray (as a job on a cluster is),
on the port it is given. It answers /search, and SIGTERM (`kill`, and what `ray job stop` sends a job) shuts
the service down before the command ends, as Ctrl-C does: Serve's applications are detached, so one left
behind would keep answering on the cluster after its command is gone.

Here, not under tests/serve/: that package's shared service must be shut down first, or the command would
join its Serve instance."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from ray import serve

from tests.serve.conftest import free_port

pytestmark = pytest.mark.ray


def test_the_serve_command_answers_and_stops_on_sigterm(served_model, built_index, tmp_path, ray_join_env):
    _, root, _, model = served_model
    port = free_port()
    exe = Path(sys.executable).parent / "ace-ray"
    cmd = [str(exe), "serve", "--index", str(built_index), "--model", str(model), "--port", str(port),
           f"workspace={tmp_path}", f"data.root={root}"]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=ray_join_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and f"search service at {url}" not in log.read_text():  # ready when said
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert f"search service at {url}" in log.read_text(), (
            "not up within 300 s:\n" + log.read_text()[-3000:]
        )
        assert requests.get(f"{url}/healthz", timeout=60).json()["status"] == "ok"
        r = requests.post(f"{url}/search", json={"query": "dress", "k": 5}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 5, r.text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "stopping the search service" in text and "search service stopped" in text, text[-3000:]
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # nothing listens there any more
        assert not serve.status().applications  # and the Ray it joined holds no application
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if serve.status().applications:  # left by a failure above: its replicas would hold the suite's CPUs
            serve.shutdown()
