"""CE-BERT pretraining on Ray Train: MLM + masked patch modelling (KL) + text-image match (paper 2.2).

The driver (``run_pretrain``) builds the pretraining set, plans its epochs, opens the MLflow run and starts a
``TorchTrainer``; every worker runs the shared loop (``ace_ray.train.loop``) with a ``PretrainTask`` on its
share of the set's files, pairing titles and images inside each batch (1 positive : ``negatives`` shuffled
negatives).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch

from ace_ray import tracking
from ace_ray.config import ConfigError, Workload, to_dict
from ace_ray.data import feature_store as fs
from ace_ray.data import feature_table, text
from ace_ray.data.plan import EpochPlan, seed_for
from ace_ray.data.pretrain_set import build_pretrain_set, pair_in_batch, read_holdout, set_counts
from ace_ray.model.encoder import build_encoder, save_model, trim_padding
from ace_ray.model.heads import CEBertPretraining
from ace_ray.model.losses import adaptive_weights
from ace_ray.model.masking import mask_patches, mask_tokens
from ace_ray.runtime import ensure_ray
from ace_ray.train import checkpoints, loop, runner, worker

LOSSES = ("mlm", "mpm", "tip")


def products_per_batch(w: Workload) -> int:
    """Products a worker reads per micro-batch: ``batch_size`` pairs hold each product 1 + negatives times."""
    return max(2, w.pretrain.train.batch_size // (1 + w.data.batches.negatives_per_positive))


def stack(column) -> np.ndarray:
    """A column of equal-length arrays (Parquet lists) -> one 2-D array."""
    return np.stack([np.asarray(x) for x in column])


def make_batch(raw: dict, w: Workload, seed: int) -> dict[str, torch.Tensor]:
    """Products (numpy columns: title tokens, and the gathered ``patches`` and ``pixels``) -> pairs with masks
    and labels, all randomness drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(raw["product_id"])
    ti, ii, label = pair_in_batch(n, w.data.batches.negatives_per_positive, rng)
    ids = torch.from_numpy(stack(raw["title_ids"]).astype(np.int64))[ti]
    attn = torch.from_numpy(stack(raw["title_mask"]).astype(np.int64))[ti]
    tok = text.load_tokenizer(w.data.text.tokenizer)
    special = torch.tensor(tok.all_special_ids)
    ids, mlm_labels = mask_tokens(ids, attn, w.pretrain.mlm_prob, tok.mask_token_id, len(tok), special, gen)
    attn, ids, mlm_labels = trim_padding(attn, ids, mlm_labels)
    batch = {"title_ids": ids, "title_mask": attn, "mlm_labels": mlm_labels, "label": torch.from_numpy(label)}
    if w.model.patches:
        p = torch.from_numpy(np.asarray(raw["patches"], np.float32))[ii]
        batch["patches"], batch["patch_masked"] = mask_patches(p, w.pretrain.mpm_prob, gen)
        batch["patch_target"] = p
    if w.model.pixels:
        # uint8 as stored: the encoder normalises them on its own device (ace_ray.data.pixels)
        batch["pixels"] = torch.from_numpy(np.asarray(raw["pixels"], np.uint8))[ii]
    return batch


def weighted_loss(out: dict, w: Workload, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss at optimiser step ``step``: TIP alone during ``pretrain.tip_warmup_steps``, then fixed
    weights or FashionBERT's adaptive ones; and the weights used."""
    parts = {k: out[k] for k in LOSSES if k in out}
    if step < w.pretrain.tip_warmup_steps:
        # zero weights rather than dropped losses: every parameter keeps a gradient, as DDP expects
        weights = {k: float(k == "tip") for k in parts}
    elif w.pretrain.adaptive:
        weights = {k: float(v) for k, v in adaptive_weights(parts, out["seq"]).items()}
    else:
        weights = {k: getattr(w.pretrain, f"{k}_weight") for k in parts}
    return sum(weights[k] * parts[k] for k in parts), weights


@torch.no_grad()
def evaluate(
    model: CEBertPretraining, holdout: dict[str, np.ndarray], w: Workload, device
) -> dict[str, float]:
    """Held-out MLM/MPM/TIP losses and TIP accuracy, with fixed masks and pairs (comparable across steps)."""
    n = len(holdout.get("product_id", ()))
    if n < 2:
        return {}
    was_training = model.training
    model.eval()
    size = products_per_batch(w)
    sums: dict[str, float] = {}
    correct = pairs = 0
    chunks = [{k: v[i : i + size] for k, v in holdout.items()} for i in range(0, n, size)]
    chunks = [c for c in chunks if len(c["product_id"]) >= 2]
    for i, raw in enumerate(chunks):
        batch = {
            k: v.to(device) for k, v in make_batch(raw, w, seed_for(w.pretrain.train.seed, "eval", i)).items()
        }
        out = model(batch)
        for k in LOSSES:
            if k in out:
                sums[k] = sums.get(k, 0.0) + float(out[k])
        correct += int(((out["tip_logits"] > 0).float() == batch["label"]).sum())
        pairs += len(batch["label"])
    model.train(was_training)
    res = {k: v / len(chunks) for k, v in sums.items()}
    res["tip_acc"] = correct / max(1, pairs)
    return res


class PretrainTask(loop.Task):
    """CE-BERT pretraining inside the shared loop: pairs made in each batch, three losses, held-out figures."""

    tag = "pretrain"
    log_keys = ("loss", *LOSSES, "tip_acc")
    columns = ["product_id", "title_ids", "title_mask", "feature_row"]

    def __init__(self, config: dict, w: Workload, manifest, rank: int, device):
        self.w, self.manifest, self.rank, self.device = w, manifest, rank, device
        self.config = config
        encoder = build_encoder(w.model, w.data.text.tokenizer, manifest.feature_dim, manifest.pixel_dim)
        self.model = ray.train.torch.prepare_model(CEBertPretraining(encoder, encoder.bert.config.vocab_size))
        self.core = checkpoints.unwrap(self.model)
        self.features = tuple(k for k in ("patches", "pixels") if getattr(w.model, k))
        self.holdout = {}
        rows = read_holdout(config["set_path"], w.pretrain.max_holdout) if rank == 0 else pd.DataFrame()
        if len(rows):
            self.holdout = {
                c: stack(rows[c]) if c != "product_id" else rows[c].to_numpy() for c in self.columns
            }
            table = feature_table.FeatureTable(config["feature_table"])
            self.holdout |= {k: table.gather(self.holdout["feature_row"], k) for k in self.features}
        self.weights: dict[str, float] = {}

    def forward(self, raw, seed, step):
        batch = {k: v.to(self.device) for k, v in make_batch(raw, self.w, seed).items()}
        out = self.model(batch)
        loss, self.weights = weighted_loss(out, self.w, step)
        acc = float(((out["tip_logits"] > 0).float() == batch["label"]).float().mean())
        metrics = {"loss": loss.item(), **{k: out[k].item() for k in LOSSES if k in out}, "tip_acc": acc}
        return loss, metrics, len(batch["label"])

    def after_step(self, step):
        return {f"weight_{k}": v for k, v in self.weights.items()}

    def _heldout(self, step: int, log, label: str) -> dict:
        """The held-out metrics, logged to MLflow at ``step`` and printed as a line (rank 0 only)."""
        res = evaluate(self.core, self.holdout, self.w, self.device)
        log.metrics(res, step, prefix="heldout_")
        print(f"[pretrain] {label} held-out: " + " ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)
        return res

    def on_start(self, step, log):
        if self.rank == 0 and step == 0:
            self._heldout(0, log, "step 0")

    def on_step(self, step, log):
        if self.rank == 0 and self.w.pretrain.eval_every and step % self.w.pretrain.eval_every == 0:
            self._heldout(step, log, f"step {step}")

    def finish(self, step, log):
        final = self._heldout(step, log, "final") if self.rank == 0 else {}
        return {"heldout": final}

    def write_model(self, d: Path) -> None:
        save_model(self.core.encoder, self.core.heads, d / checkpoints.MODEL_DIR, self.w.data.text.tokenizer,
                   {"feature_manifest": self.config["manifest"], "task": "pretrain"})  # fmt: skip


def train_loop(config: dict) -> dict:
    """One Ray Train worker."""
    w, tc, rank, world, device, manifest = worker.start(config, "pretrain")
    return loop.run(PretrainTask(config, w, manifest, rank, device), config, tc, rank, world, device)


def plan_steps(w: Workload, set_path: Path, world: int) -> tuple[EpochPlan, int]:
    """(the data plan over the pretraining set's training files, total optimiser steps); a clear error when
    there is too little data for one step."""
    tc = w.pretrain.train
    size = products_per_batch(w)
    plan = EpochPlan.for_directory(
        Path(set_path) / "split=train", world, size, tc.seed, grad_accum=tc.grad_accum
    )
    if plan.batches(0) < tc.grad_accum:
        raise ValueError(
            f"{sum(plan.rows)} training products give {plan.batches(0)} batches of {size} per worker on {world} "
            f"workers, fewer than grad_accum={tc.grad_accum}: use fewer workers or a smaller batch_size"
        )
    return plan, tc.max_steps or plan.steps(tc.epochs)


def run_pretrain(w: Workload, run_name: str | None = None) -> dict:
    """Pretrain CE-BERT on the workload's catalogue; returns the result with the model directory.

    ``run_name`` names the Ray Train run; giving the name of an interrupted run resumes it from its latest
    checkpoint (and logs into the same MLflow run).
    """
    ensure_ray(w.ray)
    existing = runner.check_resume(w, run_name)
    root = w.path(w.data.root)
    store = fs.for_workload(w)
    tc = w.pretrain.train
    set_path = build_pretrain_set(root, store, w.data.text, w.pretrain.holdout, tc.seed)
    counts = set_counts(set_path)
    use_gpu = runner.wants_gpu(tc)
    plan, total = plan_steps(w, set_path, tc.workers)
    if not 0 <= w.pretrain.tip_warmup_steps < total:
        raise ConfigError(f"pretrain.tip_warmup_steps={w.pretrain.tip_warmup_steps}: must be >= 0 and below "
                          f"the run's {total} steps, or MLM and MPM never train")  # fmt: skip
    name = runner.run_name("pretrain", run_name)
    with tracking.start_run(w, "pretrain", tags={"stage": "pretrain", "ray_run_name": name},
                            run_id=existing) as run:  # fmt: skip
        tracking.log_metrics({"train_products": counts["train"], "heldout_products": counts["holdout"],
                              "total_steps": total, "micro_batches_per_epoch": plan.batches(0)})  # fmt: skip
        loop_config = {
            "workload": to_dict(w),
            "manifest": dataclasses.asdict(store.manifest),
            "set_path": str(set_path),
            "feature_table": str(feature_table.for_store(store).path),
            "use_gpu": use_gpu,
            "total_steps": total,
            "plan": plan.to_dict(),
            "tracking_uri": tracking.tracking_uri(w),
            "mlflow_run_id": run.info.run_id,
        }
        print(f"[pretrain] {counts['train']:,} training products ({counts['holdout']:,} held out), "
              f"{tc.workers} workers{' on GPUs' if use_gpu else ''}, {total} steps; Ray Train run {name}")  # fmt: skip
        trainer = runner.trainer_for(w, tc, name, train_loop, loop_config)
        out = runner.fit(trainer, run, name)
    return out
