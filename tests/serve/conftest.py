"""One model, one index and one running search application shared by the serving tests (module-scoped
where they change it); Serve is shut down when they are done, so other tests see a clean Ray."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from pathlib import Path

import pytest

# Autoscaling delays shortened so a test sees the QueryEncoder scale out and back in within seconds.
FAST_SCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
                "downscale_delay_s": 2.0, "look_back_period_s": 1.0, "metrics_interval_s": 0.2}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant_index(src: Path, out: Path, kind: str | None = None, **manifest) -> Path:
    """A copy of index ``src`` with another version name (and, with ``kind``, the same embeddings in
    another FAISS index; with ``manifest`` fields, say another model's hash)."""
    from ace_ray.eval import index as faiss_index
    from ace_ray.serve import index_dir

    shutil.copytree(src, out)
    m = index_dir.IndexManifest.read(out)
    if kind:
        flat = faiss_index.load_index(out / index_dir.INDEX_FILE)
        faiss_index.save_index(
            faiss_index.build_index(flat.reconstruct_n(0, flat.ntotal), kind), out / index_dir.INDEX_FILE
        )
        m.kind = kind
    m = dataclasses.replace(m, version=out.name, **manifest)
    (out / index_dir.MANIFEST_FILE).write_text(json.dumps(dataclasses.asdict(m)))
    return out


@pytest.fixture(scope="package")
def service(ray_session, served_model, built_index):
    """The search application on a free loopback port: (settings, base URL). Shut down after the last serve
    test: its replicas hold CPUs of the shared Ray that later tests (training, sweeps) need."""
    from ray import serve

    from ace_ray.serve.app import start
    from ace_ray.serve.settings import ServiceSettings

    _, _, _, model = served_model
    settings = ServiceSettings(index=str(built_index), model=str(model), max_batch_size=8, max_ongoing_requests=16,
                               batch_wait_timeout_s=0.01, scaling=FAST_SCALING, retry_s=240)  # fmt: skip
    url = start(settings, port=free_port())
    yield settings, url
    serve.shutdown()
