"""Search spaces (``tune_spaces/*.yaml``): which workload keys a sweep searches, how, and how it is run.

```yaml
name: partitions_gamma
metric: val_recall_at_100        # what a trial reports at every checkpoint (see finetune.val_k)
mode: max
num_samples: 1                   # grid: repeats of the whole grid; random/optuna: trials
search: grid                     # grid | random | optuna (TPE)
scheduler: asha                  # asha | none
asha: {grace_period: 1, reduction_factor: 2}
max_concurrent: 0                # trials at once; 0 = as many as the cluster's CPUs hold
params:                          # workload key: one distribution
  data.batches.partitions: {grid: [1, 10, 100]}
  finetune.gamma: {loguniform: [5, 50]}
fixed: [data.val_days=1, finetune.train.max_steps=60]   # overrides every trial gets
```

Distributions: ``grid`` and ``choice`` (lists of values), ``uniform`` and ``loguniform`` (float bounds),
``randint`` (integer bounds, upper excluded). Every key and every value a distribution can draw (each
listed value, both bounds) is checked against the workload's schema (types, ranges, choices) before any
trial starts, so a typo or an impossible value fails at once, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ace_ray.config import ConfigError, Workload, _f, from_dict, load_yaml, with_overrides
from ace_ray.model.presets import preset_overrides

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class AshaConfig:
    grace_period: int = _f(1, ge=1)  # reports (checkpoints) a trial always gets before it can be stopped
    reduction_factor: int = _f(2, ge=2)


@dataclass
class Space:
    """A sweep: the searched keys, the metric, the search and the scheduler."""

    name: str = _f("sweep", nonempty=True)
    metric: str = _f("val_recall_at_100", nonempty=True)
    mode: str = _f("max", choices=("max", "min"))
    num_samples: int = _f(1, ge=1)
    search: str = _f("grid", choices=("grid", "random", "optuna"))
    scheduler: str = _f("asha", choices=("asha", "none"))
    asha: AshaConfig = field(default_factory=AshaConfig)
    max_concurrent: int = _f(0, ge=0)
    seed: int = 0
    final_test: bool = (
        True  # train the best config on train + validation days and evaluate it on the test days
    )
    # Presets trained with the best configuration's settings and evaluated beside it in the final test (e.g.
    # [twinbert]: is the tuned model better than the text-only one at the same budget?).
    compare: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def grid_size(self) -> int:
        n = 1
        for spec in self.params.values():
            kind, values = _one(spec)
            n *= len(values) if kind == "grid" else 1
        return n

    def trials(self) -> int:
        """How many trials the sweep runs."""
        return self.num_samples * (self.grid_size() if self.search == "grid" else 1)


def _one(spec: Any) -> tuple[str, list]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"expected one distribution ({', '.join(DISTRIBUTIONS)}) as {{kind: values}}, got {spec!r}"
        )
    ((kind, values),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution {kind!r}; one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list):
        raise ConfigError(f"{kind}: expected a list, got {values!r}")
    return kind, values


def _fmt(value: Any) -> str:
    return "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))


def check_space(space: Space, base: Workload) -> None:
    """Refuse, naming the key, any searched key the workload has not, any value a distribution can draw that
    the key does not accept, an empty choice, reversed bounds, and grid parameters under Optuna."""
    if not space.params:
        raise ConfigError("params: a sweep needs at least one searched key")
    # A preset is a set of overrides applied beneath the user's when the workload is loaded; a sweep that
    # changed only the name would train the old preset's model under a new label.
    if "finetune.preset" in space.params or any(
        f.split("=", 1)[0].strip() == "finetune.preset" for f in space.fixed
    ):
        raise ConfigError(
            "finetune.preset: choose the preset with `ace-ray tune --preset NAME` (or in the workload), "
            "not in the space; to compare presets, run a sweep per preset"
        )
    for name in space.compare:  # an unknown preset is refused here, not after the sweep
        try:
            preset_overrides(name)
        except ConfigError as exc:
            raise ConfigError(f"compare: {str(exc).split(': ', 1)[1]}") from None
    for key, spec in space.params.items():
        try:
            kind, values = _one(spec)
        except ConfigError as exc:
            raise ConfigError(f"params.{key}: {exc}") from None
        if not values:
            raise ConfigError(f"params.{key}: {kind} has no values")
        if kind in ("uniform", "loguniform", "randint"):
            if len(values) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ConfigError(f"params.{key}: {kind} takes [low, high] numbers, got {values!r}")
            if not values[0] < values[1]:
                raise ConfigError(f"params.{key}: {kind} bounds must be low < high, got {values!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"params.{key}: loguniform bounds must be > 0, got {values!r}")
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ConfigError(f"params.{key}: randint bounds must be integers, got {values!r}")
            drawn = [values[0], values[1] - 1] if kind == "randint" else values
        else:
            drawn = values
        if kind == "grid" and space.search == "optuna":
            raise ConfigError(
                f"params.{key}: grid values need search: grid or random, not optuna; use choice"
            )
        for v in drawn:
            try:
                with_overrides(base, [f"{key}={_fmt(v)}"])
            except ConfigError as exc:
                raise ConfigError(f"params.{key}: {exc}") from None
    try:
        with_overrides(base, list(space.fixed))
    except ConfigError as exc:
        raise ConfigError(f"fixed: {exc}") from None


def load_space(path: str | Path, base: Workload) -> Space:
    """The space in ``path``, checked against the workload ``base``; errors name the file and key."""
    try:
        space = from_dict(Space, load_yaml(path))
        check_space(space, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return space
