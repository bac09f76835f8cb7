#!/usr/bin/env python3
"""A real two-node Ray cluster and an MLflow tracking server on this machine, on 127.0.0.1 only.

    python scripts/local_cluster.py start  [--dir DIR] [--head-cpus 4] [--worker-cpus 2]
    python scripts/local_cluster.py status [--dir DIR]
    python scripts/local_cluster.py env    [--dir DIR]     # export lines for ray job submit and MLflow
    python scripts/local_cluster.py stop-worker [--dir DIR] [--kill]   # the second node only
    python scripts/local_cluster.py start-worker [--dir DIR]           # add it back
    python scripts/local_cluster.py stop   [--dir DIR]

``start`` runs ``ray start --head`` (dashboard on, so ``ray job submit`` works), a second node
(``ray start --address``) with its own CPUs and a custom resource ``node2``, and ``mlflow server`` with an
SQLite backend whose artefacts go under the shared storage path ``DIR/shared``, which every node sees. Every
port is a free one picked at start, and Ray gets its own temp dir, so another Ray on the machine (the test
suite's, a colleague's) is neither joined nor disturbed. ``DIR/cluster.json`` records the addresses and the
process groups; ``stop`` ends exactly those processes (and any process that inherited this cluster's
marker variable, such as a job's driver), never another Ray: ``ray stop`` would stop every Ray here.

Each of the three is started in its own session, so its process group holds it and all it spawns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

STATE = "cluster.json"
START_TRIES = 3  # starts of the second node before giving up (see start_worker)
MARKER = "ACE_RAY_LOCAL_CLUSTER"  # every process of a cluster inherits it: how stop finds stragglers
DEFAULT_DIR = os.environ.get("ACE_RAY_CLUSTER_DIR", str(Path(tempfile.gettempdir()) / "ace-ray-cluster"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """``name`` beside this Python (the venv's ``ray``/``mlflow``), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        sys.exit(f"local_cluster: no `{name}` executable beside {sys.executable} or on PATH")
    return found


def _env(cluster_id: str) -> dict[str, str]:
    env = dict(os.environ)
    # A single-machine Ray binds to 127.0.0.1 only with this set; it also stops `ray start` from turning
    # --node-ip-address 127.0.0.1 into the host's network address (see shared/RAY_NOTES.md).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A raylet gives its agents 30 s to start before it aborts; their Python start-up takes longer than that
    # on a small, busy machine.
    env.setdefault("RAY_agent_register_timeout_ms", "120000")
    # Jobs run `ace-ray`/`python` from the environment this script runs in.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[MARKER] = cluster_id
    return env


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def alive_nodes(dashboard: str) -> list[dict]:
    """The cluster's ALIVE nodes from the dashboard's state API (node_id, resources_total, is_head_node)."""
    data = _get_json(f"{dashboard}/api/v0/nodes?detail=true&limit=100")
    return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]


def _wait(what: str, check, timeout: float, procs: list[tuple[str, subprocess.Popen, Path]]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for name, p, log in procs:
            if p.poll() not in (None, 0):
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(
                    f"{name} exited with {p.returncode} while waiting for {what}; {log}:\n{tail}"
                )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready within {timeout:.0f} s (logs in {procs[0][2].parent})")


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=log.parent)  # fmt: skip


def _gpus(n: int | None) -> list[str]:
    return [] if n is None else ["--num-gpus", str(n)]  # None: Ray counts the node's GPUs


def start(args) -> dict:
    """Start the head, the second node and the MLflow server; write and return ``DIR/cluster.json``."""
    d = Path(args.dir).resolve()
    if (d / STATE).exists():
        sys.exit(f"local_cluster: {d / STATE} exists: a cluster is running there (stop it first)")
    logs, shared = d / "logs", d / "shared"
    for p in (logs, shared, d / "mlflow"):
        p.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay under the 107-byte AF_UNIX limit: a short temp dir of its own.
    temp = tempfile.mkdtemp(prefix="acr-", dir="/tmp")
    ports = {k: _free_port() for k in ("gcs", "dashboard", "head_agent", "worker_agent", "client", "mlflow")}
    cid = uuid.uuid4().hex[:12]
    env = _env(cid)
    gcs, dashboard = f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}"
    # Ray's own helpers inside workers look for "the" local Ray when no address is set, and would find
    # every Ray on this machine (or the newest one in /tmp/ray): name this cluster's.
    env["RAY_ADDRESS"] = gcs
    env.pop("MLFLOW_TRACKING_URI", None)
    if not args.no_mlflow:
        # Jobs inherit the nodes' environment: every command submitted records into the server unless it
        # names another store (tracking.uri, or the job's runtime_env env_vars).
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports['mlflow']}"
    state = {"id": cid, "dir": str(d), "temp_dir": temp, "shared": str(shared), "gcs_address": gcs,
             "dashboard": dashboard, "mlflow_uri": env.get("MLFLOW_TRACKING_URI"), "pgids": {},
             "head_cpus": args.head_cpus, "worker_cpus": args.worker_cpus, "worker_gpus": args.worker_gpus,
             "worker_resources": args.worker_resources, "object_store_mb": args.object_store_mb,
             "logs": str(logs)}  # fmt: skip
    # Written before anything starts, so that `stop` can clean up after a start that failed half-way.
    (d / STATE).write_text(json.dumps(state, indent=2))
    ray = _bin("ray")
    t0 = time.time()
    procs = []
    try:
        if not args.no_mlflow:
            mlflow = _spawn([_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
                             "--backend-store-uri", f"sqlite:///{d / 'mlflow' / 'mlflow.db'}",
                             "--artifacts-destination", str(shared / "mlflow-artifacts"), "--workers", "1"],
                            logs / "mlflow.log", env)  # fmt: skip
            state["pgids"]["mlflow"] = mlflow.pid
            procs.append(("mlflow server", mlflow, logs / "mlflow.log"))
        head = _spawn([ray, "start", "--head", "--port", str(ports["gcs"]), "--include-dashboard", "true",
                       "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
                       "--dashboard-agent-listen-port", str(ports["head_agent"]),
                       "--ray-client-server-port", str(ports["client"]), "--num-cpus", str(args.head_cpus),
                       *_gpus(args.head_gpus), *_common(state)], logs / "head.log", env)  # fmt: skip
        state["pgids"]["head"] = head.pid
        (d / STATE).write_text(json.dumps(state, indent=2))
        procs.insert(0, ("ray head", head, logs / "head.log"))
        _wait("the Ray head", lambda: len(alive_nodes(dashboard)) >= 1, args.timeout, procs)
        state["head_ready_s"] = round(time.time() - t0, 1)
        if args.worker_cpus:
            start_worker(state, env, args.timeout, procs)
        state["head_node_id"] = next(n["node_id"] for n in alive_nodes(dashboard) if n["is_head_node"])
        if not args.no_mlflow:
            _wait("the MLflow server", lambda: urllib.request.urlopen(f"{state['mlflow_uri']}/health", timeout=5).status == 200,
                  args.timeout, procs)  # fmt: skip
    except BaseException:
        (d / STATE).write_text(json.dumps(state, indent=2))
        stop_cluster(d, quiet=True)
        raise
    state["ready_s"] = round(time.time() - t0, 1)
    (d / STATE).write_text(json.dumps(state, indent=2))
    return state


def start_worker(state: dict, env: dict[str, str], timeout: float, procs: list | None = None) -> None:
    """Add the second node to the cluster of ``state`` and wait until the head lists it (updates ``state``
    and ``cluster.json``)."""
    d = Path(state["dir"])
    logs = Path(state["logs"])
    before = {n["node_id"] for n in alive_nodes(state["dashboard"])}
    for attempt in range(1, START_TRIES + 1):
        # A second node must bind 127.0.0.1 too: run `ray start` with the CLI's multi-node check passed (see
        # _ray_cli below) while the rest of Ray keeps the loopback-only setting.
        worker = _spawn([sys.executable, __file__, "_ray", "start", "--address", state["gcs_address"],
                         "--num-cpus", str(state["worker_cpus"]), *_gpus(state["worker_gpus"]),
                         "--resources", state["worker_resources"], "--dashboard-agent-listen-port", str(_free_port()),
                         "--include-log-monitor", "false", *_common(state)], logs / "worker.log", env)  # fmt: skip
        state["pgids"]["worker"] = worker.pid
        (d / STATE).write_text(json.dumps(state, indent=2))
        try:
            _wait("the second Ray node", lambda: len({n["node_id"] for n in alive_nodes(state["dashboard"])} - before) >= 1,
                  timeout, [*(procs or []), ("ray worker node", worker, logs / "worker.log")])  # fmt: skip
            break
        except RuntimeError as exc:
            # Ray gives a starting node a fixed 30 s to register with the GCS (ray/_private/node.py); on a small
            # machine busy with other work it can miss that. Its processes are ended and it starts again.
            if attempt == START_TRIES or "timed out during startup" not in str(exc):
                raise
            group = worker.pid
            _end([group], lambda g=group: _members(state["id"], [g]), grace=10)
            # A raylet that registered late may be listed until the head notices it is gone: not the new one.
            before.update(n["node_id"] for n in alive_nodes(state["dashboard"]))
            print(f"local_cluster: the second node missed Ray's 30 s start-up deadline; starting it again "
                  f"({attempt + 1}/{START_TRIES})", file=sys.stderr, flush=True)  # fmt: skip
    state["worker_node_id"] = next(
        n["node_id"] for n in alive_nodes(state["dashboard"]) if n["node_id"] not in before
    )
    (d / STATE).write_text(json.dumps(state, indent=2))


def _common(state: dict) -> list[str]:
    """``ray start`` flags both nodes take."""
    return ["--node-ip-address", "127.0.0.1", "--temp-dir", state["temp_dir"], "--disable-usage-stats",
            "--object-store-memory", str(state["object_store_mb"] * 2**20)]  # fmt: skip


def load(d: str | Path) -> dict:
    """The state of the cluster started in ``d`` (``cluster.json``)."""
    path = Path(d).resolve() / STATE
    if not path.exists():
        sys.exit(f"local_cluster: no cluster in {path.parent} ({STATE} not found)")
    return json.loads(path.read_text())


def _marked(cid: str) -> list[int]:
    """PIDs of processes carrying this cluster's marker (job drivers run in sessions of their own)."""
    want = f"{MARKER}={cid}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if want in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:  # gone, or not ours to read
            pass
    return pids


def _our_groups(state: dict, names: tuple[str, ...]) -> list[int]:
    """The recorded process groups ``names`` that still hold a process of this cluster. A group whose
    processes are all gone is skipped: its number may since belong to someone else's process."""
    live = set()
    for pid in _marked(state["id"]):
        with contextlib.suppress(OSError):
            live.add(os.getpgid(pid))
    return [g for n, g in state["pgids"].items() if n in names and g in live]


def _signal(pgids: list[int], pids: list[int], sig: int) -> None:
    for g in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, sig)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def _members(cid: str, groups: list[int] | None = None) -> list[int]:
    """Live processes of cluster ``cid`` (a zombie has no environment, so it is not one), only those in
    process groups ``groups`` if given."""
    pids = _marked(cid)
    if groups is None:
        return pids
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) in groups:
                out.append(pid)
    return out


def _end(pgids: list[int], pids_fn, grace: float) -> list[int]:
    """SIGTERM the groups and the processes ``pids_fn()`` names, SIGKILL those left after ``grace`` s; the
    PIDs still alive after that (none, normally). A group is only signalled while it holds one of them."""

    def signal_all(sig: int) -> None:
        pids = pids_fn()
        live = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                live.add(os.getpgid(pid))
        _signal([g for g in pgids if g in live], pids, sig)

    signal_all(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and pids_fn():
        time.sleep(0.2)
    signal_all(signal.SIGKILL)
    deadline = time.time() + 5
    while time.time() < deadline and pids_fn():
        time.sleep(0.2)
    return pids_fn()


def stop_worker(d: str | Path, kill: bool = False, timeout: float = 60) -> float:
    """Stop the second node only (SIGTERM to its process group, or SIGKILL with ``kill``) and wait until
    the head reports it dead; the seconds that took."""
    state = load(d)
    groups = _our_groups(state, ("worker",))
    if not groups:
        sys.exit("local_cluster: the worker node is not running")
    t0 = time.time()
    _signal(groups, [], signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if not any(n["node_id"] == state["worker_node_id"] for n in alive_nodes(state["dashboard"])):
                break
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError(
            f"the head still lists node {state['worker_node_id']} {timeout:.0f} s after the stop"
        )
    _end(groups, lambda: _members(state["id"], groups), 10)  # its agents and workers, if any outlived it
    state["pgids"]["worker"] = None
    Path(d, STATE).write_text(json.dumps(state, indent=2))
    return time.time() - t0


def stop_cluster(d: str | Path, quiet: bool = False) -> list[int]:
    """End every process of the cluster in ``d`` and remove its Ray temp dir; PIDs that survived (none)."""
    state = load(d)
    groups = _our_groups(state, tuple(state["pgids"]))
    left = _end(groups, lambda: _marked(state["id"]), grace=15)
    shutil.rmtree(state["temp_dir"], ignore_errors=True)
    Path(state["dir"], STATE).unlink(missing_ok=True)
    if not quiet:
        print(f"stopped the cluster in {state['dir']}" + (f"; still running: {left}" if left else ""))
    return left


def env_lines(state: dict) -> str:
    """Shell ``export`` lines: the dashboard for ``ray job``, the tracking URI, the shared storage."""
    return "\n".join([
        f"export RAY_ADDRESS={state['dashboard']}  # ray job submit/status/logs, ray list",
        f"export RAY_GCS_ADDRESS={state['gcs_address']}  # ray status --address $RAY_GCS_ADDRESS",
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # clients reach 127.0.0.1, not the host's address",
        *([f"export MLFLOW_TRACKING_URI={state['mlflow_uri']}"] if state["mlflow_uri"] else []),
        f"export ACE_RAY_SHARED={state['shared']}  # storage every node sees: data, ray.storage_path",
    ])  # fmt: skip


def status(d: str | Path) -> int:
    """Print the nodes (id, head or not, resources) and whether MLflow answers; 1 if something is down."""
    state = load(d)
    ok = True
    try:
        for n in alive_nodes(state["dashboard"]):
            res = {
                k: v
                for k, v in n["resources_total"].items()
                if not k.startswith(("node:", "object_store", "memory"))
            }
            print(
                f"node {n['node_id'][:12]} {'head' if n['is_head_node'] else 'worker'} {n['node_ip']} {res}"
            )
    except (OSError, urllib.error.URLError) as exc:
        print(f"Ray dashboard {state['dashboard']}: {exc}")
        ok = False
    if not state["mlflow_uri"]:
        return 0 if ok else 1
    try:
        urllib.request.urlopen(f"{state['mlflow_uri']}/health", timeout=5)
        print(f"MLflow {state['mlflow_uri']}: up")
    except (OSError, urllib.error.URLError) as exc:
        print(f"MLflow {state['mlflow_uri']}: {exc}")
        ok = False
    return 0 if ok else 1


def _ray_cli(argv: list[str]) -> int:
    """``ray`` with its multi-node check passed. ``ray start --address`` refuses to add a node while
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and without that setting it turns 127.0.0.1 into the host's network
    address and listens on every interface. Only the CLI module sees the check as passed."""
    import types

    from ray._private import ray_constants
    from ray.scripts import scripts

    class _Constants(types.ModuleType):
        def __getattr__(self, name):
            return getattr(ray_constants, name)

    constants = _Constants("ray_constants")
    constants.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = constants
    sys.argv = ["ray", *argv]
    return scripts.main()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ray"]:
        return _ray_cli(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("start", "status", "env", "stop-worker", "start-worker", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster's directory (default {DEFAULT_DIR})")
        if name == "start":
            p.add_argument("--head-cpus", type=int, default=4, help="logical CPUs of the head (default 4)")
            p.add_argument(
                "--worker-cpus", type=int, default=2, help="of the second node; 0 = no second node"
            )
            p.add_argument("--head-gpus", type=int, default=None, help="default: the GPUs Ray detects")
            p.add_argument("--worker-gpus", type=int, default=None, help="default: the GPUs Ray detects")
            p.add_argument("--worker-resources", default='{"node2": 1}', help="custom resources, JSON")
            p.add_argument("--object-store-mb", type=int, default=1024, help="per node (default 1024)")
            p.add_argument("--no-mlflow", action="store_true", help="no tracking server")
            p.add_argument("--timeout", type=float, default=240, help="seconds to wait for each part")
        if name == "start-worker":
            p.add_argument("--timeout", type=float, default=240, help="seconds to wait for the node")
        if name == "stop-worker":
            p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM (a crashed node)")
    args = ap.parse_args(argv)
    if args.cmd == "start":
        state = start(args)
        print(f"cluster up in {state['ready_s']} s: head {state['head_node_id'][:12]} ({args.head_cpus} CPUs)"
              + (f", worker {state['worker_node_id'][:12]} ({args.worker_cpus} CPUs, {args.worker_resources})"
                 if args.worker_cpus else "") + f"; dashboard {state['dashboard']}; logs {state['logs']}")  # fmt: skip
        print(env_lines(state))
        return 0
    if args.cmd == "status":
        return status(args.dir)
    if args.cmd == "env":
        print(env_lines(load(args.dir)))
        return 0
    if args.cmd == "start-worker":
        state = load(args.dir)
        if _our_groups(state, ("worker",)):
            sys.exit("local_cluster: the worker node is running already")
        env = _env(state["id"]) | {"RAY_ADDRESS": state["gcs_address"]}
        if state["mlflow_uri"]:
            env["MLFLOW_TRACKING_URI"] = state["mlflow_uri"]
        start_worker(state, env, args.timeout)
        print(f"worker node {state['worker_node_id'][:12]} joined")
        return 0
    if args.cmd == "stop-worker":
        print(f"worker node gone from the cluster after {stop_worker(args.dir, args.kill):.1f} s")
        return 0
    return 1 if stop_cluster(args.dir) else 0


if __name__ == "__main__":
    sys.exit(main())
