"""Typed configs: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every field is checked against its annotation and its valid range or choices (``_f(default, ge=1)``); an
unknown key, a wrong type or an out-of-range value is a ``ConfigError`` that names the dotted key, so a typo
in a sweep fails at once instead of silently training the default. Every key has an effect: a setting one
stage does not use is not in that stage's section (fine-tuning's batch size is ``data.batches.batch_size``,
so ``finetune.train`` has none).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override that does not fit the typed schema."""


def _check(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Range and choice checks from a field's metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``,
    ``nonempty``, ``date``); lists are checked item by item."""
    if value is None:
        return
    if isinstance(value, list):
        if meta.get("nonempty") and not value:
            raise ConfigError(f"{key}: must not be empty")
        for i, v in enumerate(value):
            _check(f"{key}[{i}]", v, {k: m for k, m in meta.items() if k != "nonempty"})
        return
    bounds = (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"))  # fmt: skip
    for name, ok, sign in bounds:
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: must be {sign} {meta[name]}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    if meta.get("nonempty") and not str(value).strip():
        raise ConfigError(f"{key}: must not be empty")
    if meta.get("date"):
        import datetime as dt

        try:
            dt.date.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(f"{key}: expected an ISO date (YYYY-MM-DD), got {value!r}") from None


def _f(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with its valid range or choices (checked by ``from_dict``)."""
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class SynthConfig:
    """The embedded synthetic shop (``ace-ray synth``)."""

    products: int = _f(5000, ge=1)
    days: int = _f(14, ge=1)
    sessions: int = _f(2000, ge=1)  # query sessions per day
    seed: int = 0
    list_size: int = _f(10, ge=1)  # products shown per session
    image_size: int = _f(224, ge=16)
    shard_size: int = _f(500, ge=1)  # products per Ray task; fixed so output does not depend on worker count
    workers: int = _f(0, ge=0)  # concurrent Ray tasks; 0 = as many as Ray has CPUs
    start_date: str = _f("2026-01-01", date=True)
    # Attributes taken out of every title while the simulated queries still ask for them (e.g. [colour]): the
    # photo is then the only place they are, as on many real shops. Synth: never written into a title;
    # imports: the product's value removed from its title.
    hide_in_title: list[str] = _f(factory=list)


@dataclass
class ClickModelConfig:
    """How simulated users query, see ranked lists and click."""

    zipf_exponent: float = _f(1.05, gt=0)  # query intent popularity
    intents_per_product: float = _f(0.25, gt=0)  # size of the intent pool relative to the catalogue
    candidates: int = _f(60, ge=1)  # products the shop's current ranker scores per session
    off_category_share: float = _f(
        0.2, ge=0, le=1
    )  # share of candidates drawn from outside the intent's category
    position_decay: float = _f(0.7, ge=0)  # examination probability = 1 / (position + 1) ** decay
    base_ctr: float = _f(0.6, gt=0, le=1)
    attribute_mismatch: float = _f(
        0.12, ge=0, le=1
    )  # relevance factor per intent attribute the product lacks
    typo_rate: float = _f(0.05, ge=0, le=1)
    reorder_rate: float = _f(0.25, ge=0, le=1)


@dataclass
class RoiConfig:
    """Edge-detection RoI; the defaults suit product photos on plain or textured backgrounds."""

    work_size: int = _f(256, ge=16)  # detection runs on the image scaled to this longest side
    blur: int = _f(5, choices=tuple(range(1, 32, 2)))  # Gaussian kernel: odd
    canny_low: int = _f(30, ge=0)
    canny_high: int = _f(80, ge=0)
    close: int = _f(7, ge=1)  # closing kernel: joins a product's edges into one contour
    min_share: float = _f(
        0.35, ge=0, le=1
    )  # contours under this share of the largest are clutter, not the product
    min_box: float = _f(
        0.02, ge=0, le=1
    )  # a box under this share of the frame is noise: fall back to the whole image
    margin: float = _f(0.0, ge=0, lt=0.5)  # grow the box by this share of the frame on each side


@dataclass
class FeaturesConfig:
    """Image features (``ace-ray features``): RoI patch features from a CNN, and raw pixel patches."""

    backbone: str = _f(
        "efficientnet-lite0", nonempty=True
    )  # packaged weights, an HF vision model id, or a local directory
    roi: bool = True  # False: FashionBERT-style grid patches of the whole image
    grid: int = _f(4, ge=1)  # patches per side: grid*grid RoI patch features
    cnn_input: int = _f(224, ge=32)
    pixel_size: int = _f(224, ge=1)
    pixel_patch: int = _f(32, ge=1)
    max_side: int = _f(2048, ge=8)  # larger images are decoded at a reduced scale
    min_side: int = _f(8, ge=1)  # smaller images are quarantined
    batch_size: int = _f(32, ge=1)
    cnn_actors: int = _f(
        0, ge=0
    )  # CNN actor pool size; 0 = one per cnn_cpus of the cluster, less the decode share
    cnn_cpus: float = _f(
        0.75, gt=0
    )  # fractional: on small machines two single-thread actors beat one two-thread one
    cnn_gpus: float = _f(0.0, ge=0)  # per actor; 0 = use a GPU when the cluster has one
    decode_cpus: float = _f(0.25, gt=0)
    write_cpus: float = _f(0.25, gt=0)
    inflight_mb: int = _f(
        1024, ge=1
    )  # Ray object store the pipeline may fill; memory stays flat with catalogue size
    out: str | None = None  # feature store root; default <data.root>/features
    roi_params: RoiConfig = field(default_factory=RoiConfig)


@dataclass
class TextConfig:
    """Tokenisation: the backbone's tokenizer (the packaged MiniLM one by default) and segment lengths."""

    tokenizer: str = _f(
        "minilm", nonempty=True
    )  # packaged all-MiniLM-L6-v2, an HF model id, or a local directory
    max_query: int = _f(16, ge=3)  # [CLS] at least one token [SEP]
    max_title: int = _f(32, ge=3)
    max_hot: int = _f(48, ge=3)  # all hot queries of a product together
    hot_k: int = _f(10, ge=1)


@dataclass
class BatchConfig:
    """Mini-batches: mixed negative sampling for fine-tuning (paper 4.3) and the pretraining pairs."""

    batch_size: int = _f(64, ge=2)  # in-batch negatives need a second pair
    partitions: int = _f(100, ge=1)  # P: 1 = batches of one category (hard negatives), large = random batches
    seed: int = 0
    negatives_per_positive: int = _f(
        3, ge=1
    )  # pretraining (title, image) pairs: 1 positive : 3 shuffled negatives


@dataclass
class DataConfig:
    """Where the catalogue lives and how its days are split."""

    root: str = _f("data/shop", nonempty=True)
    test_days: int = _f(2, ge=0)  # the last N days are the test days; training never reads their clicks
    # The N days before the test days are validation days (sweeps, early stopping): training does not read
    # their clicks either; 0 = none, every day before the test days trains.
    val_days: int = _f(0, ge=0)
    synth: SynthConfig = field(default_factory=SynthConfig)
    clicks: ClickModelConfig = field(default_factory=ClickModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    batches: BatchConfig = field(default_factory=BatchConfig)

    @property
    def held_out_days(self) -> int:
        """The last days training never reads: the validation days and the test days."""
        return self.val_days + self.test_days


@dataclass
class ModelConfig:
    """The CE-BERT encoder: a HF BERT fed through ``inputs_embeds`` with image segments added."""

    init: str = _f("minilm", nonempty=True)  # packaged MiniLM, an HF BERT directory or hub id, or "random"
    layers: int = _f(4, ge=0)  # keep the first N transformer layers of ``init`` (0 = all)
    size: str = _f(
        "tiny", choices=("tiny", "small", "base")
    )  # init=random only: tiny | small | base (see ace_ray.model.encoder.SIZES)
    patches: bool = True  # RoI (or grid) patch features segment
    pixels: bool = True  # raw pixel patches segment
    dropout: float = _f(0.1, ge=0, lt=1)


@dataclass
class TrainConfig:
    """Ray Train: workers, optimiser, schedule, checkpoints, fault tolerance."""

    workers: int = _f(2, ge=1)
    cpus_per_worker: float = _f(
        1.0, gt=0
    )  # leave the Ray Data stream CPUs too, or it waits forever (ray.num_cpus)
    use_gpu: bool | None = None  # None = when the cluster has GPUs (then one per worker, NCCL, bf16)
    torch_threads: int = _f(0, ge=0)  # 0 = cpus_per_worker rounded up
    epochs: int = _f(1, ge=1)
    max_steps: int = _f(0, ge=0)  # optimiser steps; 0 = as many as the epochs give
    grad_accum: int = _f(1, ge=1)
    lr: float = _f(2e-5, gt=0)
    # The learning rate of the layers that read the photo (patch and pixel projections, the towers' image
    # projection) as a multiple of lr: they start from nothing where the text side starts from a trained BERT.
    image_lr_scale: float = _f(1.0, gt=0)
    warmup_steps: int = _f(10000, ge=0)
    weight_decay: float = _f(0.01, ge=0)
    clip: float = _f(1.0, ge=0)  # max gradient norm; 0 = off
    checkpoint_every: int = _f(100, ge=1)  # optimiser steps
    keep_checkpoints: int = _f(2, ge=1)  # the K best by loss; the latest is always kept too
    max_failures: int = _f(2, ge=-1)  # worker-group restarts from the latest checkpoint
    # Where Ray puts the workers: PACK fills one node first; SPREAD puts them on distinct nodes where it can
    # (all on one node when only one has room, e.g. after a node is lost).
    placement: str = _f("PACK", choices=("PACK", "SPREAD"))
    log_every: int = _f(10, ge=1)
    seed: int = 0
    bf16: bool = True  # bf16 autocast on GPUs and on CPUs with bf16 instructions (AVX512-BF16, AMX)


@dataclass
class PretrainTrainConfig(TrainConfig):
    """Pretraining's Ray Train settings: those of ``TrainConfig`` plus the micro-batch size. (Fine-tuning
    has none: its batches are planned ahead, ``data.batches.batch_size``.)"""

    batch_size: int = _f(32, ge=2)  # (title, image) pairs per worker per micro-batch


@dataclass
class PretrainConfig:
    """CE-BERT pretraining (paper 2.2): MLM + masked patch modelling (KL) + text-image match."""

    mlm_prob: float = _f(0.15, gt=0, lt=1)
    mpm_prob: float = _f(0.15, gt=0, lt=1)
    mlm_weight: float = _f(1.0, ge=0)
    mpm_weight: float = _f(1.0, ge=0)
    tip_weight: float = _f(1.0, ge=0)
    adaptive: bool = False  # FashionBERT's adaptive loss weights instead of the fixed ones
    # Optimiser steps that train TIP alone before MLM and MPM join. Small models trained on all three from
    # the start sit at TIP's 1:3 prior (MLM holds them there); a TIP-only start gets past it (README).
    tip_warmup_steps: int = _f(0, ge=0)
    holdout: float = _f(0.1, ge=0, lt=1)  # share of products kept out of training for the held-out metrics
    max_holdout: int = _f(256, ge=0)  # cap on held-out products (evaluated on rank 0)
    eval_every: int = _f(
        0, ge=0
    )  # optimiser steps between held-out evaluations; 0 = at the start and the end
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)


@dataclass
class AdversarialConfig:
    """The domain classifier D on the embeddings (paper 3.3, eq. 6-8) and how the minimax game is played."""

    mode: str = _f(
        "none", choices=("none", "alternating", "grl")
    )  # none | alternating (k encoder steps with D frozen, then D steps) | grl
    weight: float = _f(0.1, ge=0)  # lambda: the encoder minimises L_main - lambda * L_adv
    encoder_steps: int = _f(5, ge=1)  # k
    disc_steps: int = _f(1, ge=1)
    disc_lr: float = _f(1e-3, gt=0)
    # constant: D learns at disc_lr to the end, catching up with an encoder whose learning rate has decayed;
    # encoder: disc_lr follows the encoder's warm-up and linear decay, so neither side outpaces the other.
    disc_lr_schedule: str = _f("constant", choices=("constant", "encoder"))
    disc_hidden: int = _f(128, ge=1)


@dataclass
class DistillConfig:
    """Query-tower distillation (paper 4.7): a student with fewer layers learns the teacher's query embeddings."""

    layers: int = _f(2, ge=1)
    epochs: int = _f(2, ge=1)
    lr: float = _f(1e-3, gt=0)
    batch_size: int = _f(256, ge=2)


@dataclass
class FinetuneConfig:
    """Two-tower fine-tuning (paper 3): a preset names the variant (see ``ace_ray.model.presets``)."""

    preset: str = _f("acebert", nonempty=True)
    init_from: str | None = None  # a pretrained model directory; None = a fresh encoder from ``model``
    hot_queries: bool = True  # the product tower also reads the product's hot queries
    # Share of training pairs whose product is shown without its hot queries, as a cold product (no
    # train-day clicks) always is: without it the tower learns to lean on hot queries it will not have.
    # 0.3 with fusion apart and hot_queries_apart (issue 16's levers, the defaults together): ahead of the paper's
    # settings on the quickstart shop (3 seeds; benchmarks/results/reproduce_synth/levers_quickstart/) and of
    # TwinBERT on both fashion imports (benchmarks/results/reproduce_fashion*/).
    hot_query_dropout: float = _f(0.3, ge=0, le=1)
    # Share of training pairs whose product is shown with its hot queries less the pair's own query. A
    # train-day click's query is among its product's hot queries (99% on the fashion import), a test-day
    # query only half the time: without it the tower learns to match a query to its copy. The default, 0.5,
    # won on the colour-hidden fashion import and the quickstart shop (benchmarks/results/).
    hot_query_leave_out: float = _f(0.5, ge=0, le=1)
    # The exact form of the above: the pair's own click taken out of its product's hot-query counts, so a
    # query that only this click made hot is not among them (53% of the fashion import's pairs; the other
    # 47% keep their query, as 52% of test-day queries are among their product's hot queries). Random
    # leave-out also shows such a query half the time: a copy of the query that no test day can have, and the
    # one-click hot queries are the noisy ones (33% name another colour, 19% of the repeated ones). Applies
    # first; hot_query_leave_out then draws among the pairs that keep their query. Off: on the plain fashion
    # import it traded Recall@100 for a little GAUC, and was slightly behind on the quickstart
    # (benchmarks/results/reproduce_fashion/three_epochs/).
    hot_query_leave_one_out: bool = False
    # The hot queries pooled on their own and added through their own projection, which starts at zero
    # (the hot-query tokens attend only to each other, no other token to them): the tower starts as the
    # one without hot queries and learns in what they add, instead of 48 hot-query tokens outweighing the
    # title in one mean (see ace_ray.model.towers.TwoTower). On by default (see hot_query_dropout).
    hot_queries_apart: bool = True
    embed_dim: int = _f(128, ge=1)
    pooling: str = _f("mean", choices=("mean", "cls"))  # mean (over every unpadded position) | cls
    # How the product's image tokens join its embedding: joint (the paper: one attention, one pool over all
    # tokens, where 65 image tokens outweigh a 10-token title) | additive (text pooled apart from the image,
    # the image added through a projection that starts at zero) | apart (the default, as additive, and the
    # image tokens attend only to the image: the image vector is the photo's alone; see
    # ace_ray.model.towers.TwoTower and hot_query_dropout).
    fusion: str = _f("apart", choices=("joint", "additive", "apart"))
    # Weight of a second matching loss between the queries and the products' image vectors alone (fusion
    # additive or apart): the photo must find the clicked product by itself, so the image path learns what
    # photos show (the kind of product, its colour) rather than only what the title leaves over.
    image_loss_weight: float = _f(0.0, ge=0)
    # The image loss's in-batch negatives: every other pair's product (batch), or only those of the
    # positive's category (same_category), so the photo learns what tells a category's products apart (the
    # colour) rather than the category, which the title already says.
    image_negatives: str = _f("batch", choices=("batch", "same_category"))
    gamma: float = _f(20.0, gt=0)  # softmax scale of the cosine similarity (eq. 4)
    # Subtract this times log(the product's train-day clicks) from its in-batch logits (1 = the sampling-bias
    # correction, 0 = off): the batch's negatives are other pairs' products, drawn by clicks, so without it
    # the loss pushes popular products down, while shoppers click them more (losses.bidirectional_softmax_loss).
    # 0.5: on the quickstart shop it gains most of 1's GAUC (0.714, 1: 0.729, 0: 0.679) and keeps the cold
    # products' recall (0.883, 1: 0.752, 0: 0.888); on the plain fashion import too it keeps more cold recall
    # than 1, where ACE-BERT's cold lead over TwinBERT was within the seed spread
    # (benchmarks/results/reproduce_fashion/sampling_bias_correction*/).
    logq_correction: float = _f(0.5, ge=0, le=1)
    mask_false_negatives: bool = True  # in-batch "negatives" that are the positive's product are masked
    # With data.val_days: Recall@val_k of the validation days' queries, at every checkpoint, over the products
    # they clicked and up to val_products others (0 = the whole catalogue); what sweeps select on.
    val_k: int = _f(100, ge=1)
    val_products: int = _f(2000, ge=0)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvalConfig:
    """Offline evaluation (paper 4.2): GAUC on the test days' sessions, Recall@K over the whole catalogue."""

    ks: list[int] = _f(factory=lambda: [10, 50, 100], ge=1, nonempty=True)
    index: str = _f(
        "hnsw", choices=("hnsw", "ivf")
    )  # the ANN index the service would use: hnsw | ivf (compared against exact search)
    hnsw_m: int = _f(32, ge=2)
    ef_search: int = _f(128, ge=1)
    baselines: list[str] = _f(
        factory=lambda: ["random", "bm25", "minilm"], choices=("random", "bm25", "minilm")
    )
    batch_size: int = _f(128, ge=1)  # products per embedding batch
    embed_actors: int = _f(0, ge=0)  # Ray Data actors embedding the catalogue; 0 = one per 2 cluster CPUs
    # Catalogues with fewer products are embedded in the driver: actors cost more to start than the work.
    embed_in_driver_below: int = _f(5000, ge=0)
    map_points: int = _f(2000, ge=0)  # points per side in the 2-D embedding map


@dataclass
class ReproduceConfig:
    """``ace-ray reproduce``: the paper's tables, each row a preset, fine-tuned with several seeds."""

    seeds: list[int] = _f(factory=lambda: [0, 1, 2], nonempty=True)
    tables: dict[str, list[str]] = field(default_factory=lambda: {
        "Table 1: compared models": ["twinbert", "fashionbert", "cebert", "acebert"],
        "Table 3: image input": ["patch", "roi_patch", "roi_patch_pixel"],
        "Table 4: fine-tuning additions": ["none", "hot_query", "adversarial"],
    })  # fmt: skip
    out: str = _f("reports", nonempty=True)  # report directory, under the workspace
    resume: str | None = None  # an earlier report directory: continue there, training only what is missing
    # With resume: write the report of what that directory has finished so far, training nothing.
    report_only: bool = False
    # Other report directories whose fine-tunings with the same settings (and a pretraining this report may
    # share) are evaluated here instead of trained again (ace_ray.eval.reuse).
    reuse: list[str] = field(default_factory=list)


@dataclass
class RayConfig:
    """Joining a cluster (``address`` or ``RAY_ADDRESS``) or starting a local Ray."""

    address: str | None = None
    num_cpus: int | None = _f(None, ge=1)  # local Ray only; None = all cores, but at least min_cpus
    # Logical CPUs a local Ray gets at least: on a 2-core machine two 1-CPU Train workers would otherwise
    # leave the Ray Data stream a budget of 0 CPUs, and the run would wait forever.
    min_cpus: int = _f(4, ge=1)
    storage_path: str = _f("runs", nonempty=True)  # Ray Train/Tune results; a shared path or URI on a cluster


@dataclass
class TrackingConfig:
    """MLflow: ``uri`` (or ``MLFLOW_TRACKING_URI``); default an SQLite store inside the workspace."""

    uri: str | None = None
    experiment: str = _f("ace-ray", nonempty=True)


@dataclass
class Workload:
    """One job: everything a command needs, saved with every run."""

    name: str = "default"
    workspace: str = "."  # relative paths below (data.root, ray.storage_path, mlruns) resolve against it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def path(self, p: str | Path) -> Path:
        """``p`` as an absolute path (workers change directory, so Ray only ever sees absolute paths)."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (Path(self.workspace).expanduser().resolve() / p)


# --- loading --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (ints widen to floats); raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


# Keys that users reach for in the wrong section, and where the setting lives.
_ELSEWHERE = {
    "finetune.train.batch_size": "fine-tuning batches are planned ahead: set data.batches.batch_size"
}


def _unknown(key: str, known: list[str]) -> ConfigError:
    if key in _ELSEWHERE:
        return ConfigError(f"unknown key '{key}'; {_ELSEWHERE[key]}")
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key '{key}'{hint}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in hints or key not in fields:
            raise _unknown(f"{prefix}{key}", list(fields))
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        _check(f"{prefix}{key}", kwargs[key], fields[key].metadata)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what is saved with a run)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ``("a.b", value)`` with the value read as YAML (``1e-4`` -> float, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Set dotted keys in the nested mapping ``data``; keys are checked against ``cls``'s schema."""
    for text in overrides:
        key, value = parse_override(text)
        node, tp, parts = data, cls, key.split(".")
        for depth, part in enumerate(parts):
            dotted = ".".join(parts[: depth + 1])
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[:depth])}' is not a section")
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise _unknown(dotted, [f.name for f in dataclasses.fields(tp)])
            tp = hints[part]
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{dotted}: expected a mapping in the config file")
    return data


def with_overrides(cfg: Workload, overrides: list[str]) -> Workload:
    """A copy of ``cfg`` with dotted ``key=value`` overrides applied and checked like the command line's."""
    return from_dict(Workload, apply_overrides(to_dict(cfg), overrides, Workload))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Load ``cls`` from an optional YAML file plus overrides; errors name the file and key."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []), cls)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc


def load_workload(path: str | Path | None = None, overrides: list[str] | None = None) -> Workload:
    """The ``Workload`` in ``path`` (or the defaults) with ``key=value`` overrides applied."""
    return load_config(Workload, path, overrides)


def dump_config(cfg: Any) -> str:
    """The effective config as YAML text (keys in schema order); loads back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the effective config as YAML next to a run's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg))
    return path
