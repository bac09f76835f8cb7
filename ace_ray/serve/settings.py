"""Typed settings of the index job and the service, read from ``serve_apps/*.yaml`` builder ``args`` and
the command line (the service's keys live here, not in the training workload). Unknown keys and values
out of range are errors that name the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ace_ray.config import ConfigError

INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq")
REFINES = ("none", "flat", "sq8")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnx", "torch")


class SettingsError(ConfigError):
    """A service or index setting that is unknown or out of range."""


def _check(obj, rules: dict[str, tuple]) -> None:
    for key, (lo, hi) in rules.items():
        v = getattr(obj, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < lo or (hi is not None and v > hi):
            raise SettingsError(
                f"{key}: must be a number in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}"
            )


def from_mapping(cls, values: dict | None, where: str = "args"):
    """``cls`` from a mapping, refusing keys it does not have (with the list of those it does)."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SettingsError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return cls(**values)


@dataclass
class IndexSettings:
    """How ``ace-ray index`` builds the FAISS index and the hot-query cache."""

    kind: str = "auto"  # auto: exact (flat) up to flat_max products, HNSW above; or ivfpq (see refine)
    flat_max: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128  # HNSW beam at search time (stored in the index; the service may override it)
    nlist: int = 0  # IVF lists; 0 = about 4 * sqrt(n)
    # IVF lists searched (stored in the index; the service may override it). 128 with re-ranking (k_factor
    # 8) recalled 0.97 of exact search's top 100 at 1M products (benchmarks/results/serve_latency.md).
    nprobe: int = 128
    pq_m: int = 32  # IVF-PQ sub-quantisers (bytes per vector; as measured); must divide the embedding size
    # IVF-PQ candidates re-ranked with stored vectors: flat (float32, 4 x dim bytes per vector more), sq8
    # (8-bit scalar codes, dim bytes more) or none (pq_m bytes a vector in all, where memory is short: its
    # codes alone recalled 0.61 at 1M); k_factor x k candidates are re-ranked.
    refine: str = "flat"
    k_factor: int = 8
    train_size: int = 65_536  # vectors IVF-PQ is trained on (the first ones the job embeds)
    hot_cache: int = 10_000  # most clicked train-day queries whose embeddings are cached
    batch_size: int = 128  # products per embedding batch
    actors: int = 0  # Ray Data actors holding the product tower; 0 = one per 2 cluster CPUs (or per GPU)
    device: str = "auto"  # embedding actors: auto = one GPU each where the cluster has GPUs, else CPU

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise SettingsError(f"kind: {self.kind!r} is not one of {', '.join(INDEX_KINDS)}")
        if self.refine not in REFINES:
            raise SettingsError(f"refine: {self.refine!r} is not one of {', '.join(REFINES)}")
        if self.device not in DEVICES:
            raise SettingsError(f"device: {self.device!r} is not one of {', '.join(DEVICES)}")
        _check(self, {"flat_max": (0, None), "hnsw_m": (2, 256), "ef_construction": (1, None),
                      "ef_search": (1, None), "nlist": (0, None), "nprobe": (1, None), "pq_m": (1, 256),
                      "k_factor": (1, 1024), "train_size": (256, None), "hot_cache": (0, None),
                      "batch_size": (1, None), "actors": (0, None)})  # fmt: skip

    def resolve_kind(self, n: int) -> str:
        """The index kind for a catalogue of ``n`` products."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n <= self.flat_max else "hnsw"


@dataclass
class EncoderScaling:
    """QueryEncoder replicas: autoscaled on ongoing requests per replica."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 60.0
    look_back_period_s: float = 10.0
    metrics_interval_s: float = 2.0

    def __post_init__(self):
        _check(self, {"min_replicas": (1, None), "max_replicas": (1, None), "target_ongoing_requests": (0.1, None),
                      "upscale_delay_s": (0, None), "downscale_delay_s": (0, None),
                      "look_back_period_s": (0.1, None), "metrics_interval_s": (0.1, None)})  # fmt: skip
        if self.max_replicas < self.min_replicas:
            raise SettingsError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")


@dataclass
class ServiceSettings:
    """The search application: where the model and index come from and how the deployments run.

    ``model``: a run id, a model directory or ``models:/NAME@alias``; ``query_model``: a distilled query
    tower to encode queries with instead (its products stay the teacher's)."""

    index: str = ""
    model: str = ""
    query_model: str = ""
    backend: str = "auto"  # query tower runtime: onnx, torch, or auto (ONNX Runtime when it loads)
    # Started from Python (`ace-ray serve`, tests); a Serve config file sets them on the application instead.
    name: str = "search"
    route_prefix: str = "/"
    torch_threads: int = 1  # per QueryEncoder replica; fractional-CPU actors default to 1 anyway
    index_threads: int = 1  # FAISS threads in the ProductIndex replica
    encoder_cpus: float = 0.25
    index_cpus: float = 0.25
    api_cpus: float = 0.25
    index_replicas: int = 1
    api_replicas: int = 1
    # Search-time ANN parameters; 0 = what the index was built with (its manifest's settings).
    ef_search: int = 0  # HNSW beam
    nprobe: int = 0  # IVF lists searched
    k_factor: int = 0  # IVF-PQ with re-ranking: candidates re-ranked per result
    warmup_queries: int = 8  # searches each ProductIndex / QueryEncoder replica runs before serving
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002
    max_ongoing_requests: int = 32
    max_k: int = 1000
    max_query_chars: int = 1000
    max_body_bytes: int = 1_048_576  # a 100k-character query still gets its own message, not a body one
    retry_s: float = 30.0  # how long a request is retried while a replica it needs restarts
    scaling: EncoderScaling = field(default_factory=EncoderScaling)
    tracking_uri: str = ""  # MLflow store for run ids and models:/ sources; default the workspace's

    def __post_init__(self):
        if isinstance(self.scaling, dict):
            self.scaling = from_mapping(EncoderScaling, self.scaling, "scaling")
        if self.backend not in BACKENDS:
            raise SettingsError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.index:
            raise SettingsError(
                "index: the index directory to serve (written by `ace-ray index`) is required"
            )
        _check(self, {"torch_threads": (1, 64), "index_threads": (1, 64), "encoder_cpus": (0.01, None),
                      "index_cpus": (0.01, None), "api_cpus": (0.01, None), "index_replicas": (1, None),
                      "api_replicas": (1, None), "max_batch_size": (1, 1024), "batch_wait_timeout_s": (0, 10),
                      "max_ongoing_requests": (1, None), "max_k": (1, 100_000), "max_query_chars": (1, None),
                      "max_body_bytes": (256, None), "retry_s": (0, 600), "ef_search": (0, None),
                      "nprobe": (0, None), "k_factor": (0, 1024), "warmup_queries": (0, 1000)})  # fmt: skip
        if self.max_ongoing_requests < self.max_batch_size:
            # @serve.batch only fills a batch if a replica may hold that many requests at once.
            raise SettingsError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                                f"({self.max_batch_size})")  # fmt: skip
