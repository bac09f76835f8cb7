"""The search application builder (``serve_apps/*.yaml`` ``import_path: ace_ray.serve.app:build``) and
the helpers that start it from Python (``ace-ray serve``, the quickstart, tests) and swap its index."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ray import serve
from ray.serve import Application

from ace_ray import __version__
from ace_ray.model.encoder import read_info
from ace_ray.serve.deployments import ProductIndex, QueryEncoder, SearchAPI
from ace_ray.serve.index_dir import IndexManifest, find, model_hash
from ace_ray.serve.models import resolve_model
from ace_ray.serve.settings import ServiceSettings, SettingsError, from_mapping

DEFAULT_HOST = "127.0.0.1"  # loopback unless an operator asks for another interface
DEFAULT_PORT = 8000


def _versioned(deployment, *parts):
    """``deployment`` with a version made from its constructor arguments: redeploying the same version
    with only ``user_config`` changed reconfigures the running replicas instead of replacing them. Serve
    gives a deployment started from Python a random version on every ``serve.run`` and no longer takes
    ``version`` in ``options()`` (a config-file deploy versions by import path instead)."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    deployment._version = hashlib.sha256(blob).hexdigest()[:12]
    return deployment


def _settings(args: dict | ServiceSettings) -> ServiceSettings:
    return args if isinstance(args, ServiceSettings) else from_mapping(ServiceSettings, args)


def build(args: dict | ServiceSettings) -> Application:
    """The application for ``args`` (see ``ServiceSettings``). ``index`` is an index directory or a folder
    of them (the newest is served); relative paths are relative to where ``serve run`` was started. The
    model defaults to the one the index was built from (its run); an index built for another model is
    refused here, before anything deploys."""
    if isinstance(args, dict) and (misplaced := sorted({"name", "route_prefix"} & set(args))):
        # Serve names and routes an application from its own entry; in its args they would do nothing.
        raise SettingsError(f"{', '.join(misplaced)}: set on the application in the Serve config (beside "
                            "import_path), not under its args")  # fmt: skip
    s = _settings(args)
    index = find(s.index)
    manifest = IndexManifest.read(index)
    source = s.model or manifest.model_run_id
    if not source:
        raise SettingsError(f"model: {index} was built from a model directory, not a run: name the model")
    model_dir, run_id = resolve_model(source, s.tracking_uri)
    digest = model_hash(model_dir)
    manifest.check_model(digest, f"model {source}")
    query_dir = model_dir
    if s.query_model:
        query_dir, _ = resolve_model(s.query_model, s.tracking_uri)
        dim = read_info(query_dir)["embed_dim"]
        if dim != manifest.dim:
            raise SettingsError(
                f"query_model: {s.query_model} embeds into {dim} dimensions, the index {manifest.dim}"
            )
    sc = s.scaling
    enc_args = (str(query_dir), s.backend, s.torch_threads, s.max_batch_size, s.batch_wait_timeout_s,
                s.warmup_queries)  # fmt: skip
    encoder = QueryEncoder.options(
        ray_actor_options={"num_cpus": s.encoder_cpus}, max_ongoing_requests=s.max_ongoing_requests,
        autoscaling_config={"min_replicas": sc.min_replicas, "initial_replicas": sc.min_replicas,
                            "max_replicas": sc.max_replicas, "target_ongoing_requests": sc.target_ongoing_requests,
                            "upscale_delay_s": sc.upscale_delay_s, "downscale_delay_s": sc.downscale_delay_s,
                            "look_back_period_s": sc.look_back_period_s, "metrics_interval_s": sc.metrics_interval_s},
    )  # fmt: skip
    encoder = _versioned(encoder, model_hash(query_dir), *enc_args[1:]).bind(*enc_args)
    products = ProductIndex.options(
        num_replicas=s.index_replicas, ray_actor_options={"num_cpus": s.index_cpus},
        max_ongoing_requests=s.max_ongoing_requests,
        user_config={"index_dir": str(index), "ef_search": s.ef_search, "nprobe": s.nprobe, "k_factor": s.k_factor,
                     "warmup": s.warmup_queries},
    )  # fmt: skip
    products = _versioned(products, digest, s.index_threads).bind(digest, s.index_threads)
    limits = {k: getattr(s, k) for k in ("max_k", "max_query_chars", "max_body_bytes", "retry_s")}
    info = read_info(model_dir)
    model = {"source": source, "run_id": run_id, "hash": digest, "preset": info.get("preset") or "",
             "query_model": s.query_model or "", "query_layers": read_info(query_dir).get("query_layers")}  # fmt: skip
    api = SearchAPI.options(
        num_replicas=s.api_replicas, ray_actor_options={"num_cpus": s.api_cpus},
        max_ongoing_requests=max(100, s.max_ongoing_requests),
    )  # fmt: skip
    return _versioned(api, limits, model).bind(encoder, products, limits, model)


def start(args: dict | ServiceSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Deploy the application on the current Ray (HTTP on ``host:port``) and return its URL."""
    s = _settings(args)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(s), name=s.name, route_prefix=s.route_prefix)
    return f"http://{host}:{port}{s.route_prefix.rstrip('/')}"


def swap_index(args: dict | ServiceSettings, index: str | Path) -> None:
    """Swap a running application's index for ``index`` in place (``user_config``: no replica restarts);
    an index for another model than the one served is refused before anything changes."""
    s = dataclasses.replace(_settings(args), index=str(index))
    serve.run(build(s), name=s.name, route_prefix=s.route_prefix)
