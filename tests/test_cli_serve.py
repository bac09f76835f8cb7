"""`ace-ray serve` and `serve run serve_apps/search.yaml` as an operator runs them.

`ace-ray serve`: its own process, joined to a running Ray (as a job on a cluster is),
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
import yaml
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


def test_serve_run_deploys_the_shipped_config_and_ctrl_c_takes_it_down(served_model, built_index, tmp_path,
                                                                        ray_join_env):  # fmt: skip
    """The README's other way to start the service: Serve's own command on the shipped config file, with the
    operator's index, model and port written into it."""
    _, _, _, model = served_model
    cfg = yaml.safe_load((Path(__file__).parents[1] / "serve_apps" / "search.yaml").read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    cfg["applications"][0]["args"] |= {"index": str(built_index), "model": str(model)}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "serve_run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(config)], env=ray_join_env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the application still deploying
                pass
            time.sleep(1)
        else:
            pytest.fail("not up within 300 s:\n" + log.read_text()[-3000:])
        r = requests.post(f"{url}/search", json={"query": "dress", "k": 5}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 5, r.text
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
        assert not serve.status().applications, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if serve.status().applications:
            serve.shutdown()
