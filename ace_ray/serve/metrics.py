"""The service's own Prometheus metrics, exported beside Ray Serve's (Ray's metrics endpoint): queries
answered from the hot-query cache and in total, and the hit rate per SearchAPI replica."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge


class CacheMetrics:
    """Hot-query cache hits: ``ace_ray_search_queries_total{cache="hit"|"miss"}`` and the hit rate gauge
    ``ace_ray_search_cache_hit_rate`` (this replica, since it started)."""

    def __init__(self):
        self.queries = Counter("ace_ray_search_queries_total", "searches by hot-query cache outcome",
                               tag_keys=("cache",))  # fmt: skip
        self.rate = Gauge(
            "ace_ray_search_cache_hit_rate", "share of searches answered from the hot-query cache"
        )
        self.hits = self.total = 0

    def record(self, hit: bool) -> None:
        self.hits += hit
        self.total += 1
        self.queries.inc(tags={"cache": "hit" if hit else "miss"})
        self.rate.set(self.hit_rate)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.total if self.total else 0.0

    def summary(self) -> dict:
        return {"hits": self.hits, "searches": self.total, "hit_rate": round(self.hit_rate, 4)}
