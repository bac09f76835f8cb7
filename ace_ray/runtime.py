"""The one place that starts or joins Ray.

With ``RAY_ADDRESS`` (or ``ray.address`` in the workload) every command joins that cluster; otherwise a
local Ray is started that listens on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import ray

from ace_ray.config import RayConfig
from ace_ray.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process: join ``address``/``RAY_ADDRESS`` or start a loopback-only local Ray."""
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # silences the token warning on every init
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers of a job must import ace_ray: on a cluster it comes with `ray job submit --working-dir .`
    # or an installed wheel; locally the driver's environment is shared.
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        _unwind_on_sigterm("")
        return
    # A single-node Ray binds to 127.0.0.1 only with this set (see shared/RAY_NOTES.md). Ray reads the
    # variable once, when it is first imported, so the already-imported constant is set as well; child
    # processes inherit the variable.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, cfg.min_cpus)
    ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)
    _stop_local_ray_on_exit()


def _unwind_on_sigterm(note: str) -> None:
    """SIGTERM (`kill`, `ray job stop`) unwinds the command, as an error would: ``ray.init`` installs a native
    SIGTERM handler that kills the driver without running ``finally`` blocks or ``atexit``, which left
    half-written outputs (their staging folders) behind, and a local Ray's agents and workers orphaned. A
    Python handler that raises ``SystemExit`` lets the command clean up; ``note`` ends its message."""

    def exit_on_sigterm(signum, frame) -> None:
        print(f"ace-ray: stopped by SIGTERM{note}", file=sys.stderr, flush=True)
        # Inside a Ray wait this surfaces as Ray's SystemExit(1); elsewhere as 143. Either unwinds the command.
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, exit_on_sigterm)


def _stop_local_ray_on_exit() -> None:
    """The local Ray this process started goes down with it, however the command ends (SIGTERM included)."""
    atexit.register(ray.shutdown)  # Ray registers one too; repeating it is harmless
    _unwind_on_sigterm("; shutting down the local Ray")


def cluster_cpus() -> int:
    """Logical CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_bounded(
    submit: Callable[[T], ray.ObjectRef], items: list[T], workers: int = 0, desc: str = ""
) -> list:
    """Submit one Ray task per item with at most ``workers`` in flight (0 = all CPUs); results in item
    order, with a progress bar. Bounding the queue keeps memory flat for large catalogues."""
    limit = workers or cluster_cpus()
    results: dict[int, object] = {}
    pending: dict[ray.ObjectRef, int] = {}
    queue = list(enumerate(items))
    with Progress(len(items), desc, unit="task") as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                i, item = queue.pop(0)
                pending[submit(item)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                results[pending.pop(ref)] = ray.get(ref)
                bar.update(1)
    return [results[i] for i in range(len(items))]


def outside_placement_group(fn: Callable[..., T], *args) -> T:
    """``fn(*args)``, run where the tasks it starts are not captured by the caller's placement group.

    A Tune trial runs in a placement group that captures its child tasks, and it holds a fraction of a
    CPU: a Ray Data job started there has tasks that ask for a whole CPU (Ray Data's shuffle map tasks set
    no scheduling strategy) and fail with "cannot fit into any bundles". Run from a zero-CPU task with the
    default strategy, the job's tasks use the CPUs the sweep leaves free for data instead.
    """
    if ray.util.get_current_placement_group() is None:
        return fn(*args)
    from ray.data import DataContext

    task = ray.remote(num_cpus=0, scheduling_strategy="DEFAULT", max_retries=0)(_with_data_context)
    return ray.get(task.remote(DataContext.get_current(), fn, *args))


def _with_data_context(ctx, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` under the caller's Ray Data settings (a Data context is per process)."""
    from ray.data import DataContext

    DataContext._set_current(ctx)
    return fn(*args)
