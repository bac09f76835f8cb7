"""CE-BERT pretraining on Ray Train: MLM + masked patch modelling (KL) + text-image match (paper 2.2).

The driver (``run_pretrain``) builds the pretraining set, opens the MLflow run and starts a
``TorchTrainer``; every worker runs ``train_loop`` on its ``streaming_split`` shard of the product stream,
pairing titles and images inside each batch (1 positive : ``negatives`` shuffled negatives).
"""

from __future__ import annotations

import dataclasses
import time
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
from ace_ray.data import text
from ace_ray.data.batching import normalise_pixels
from ace_ray.data.pretrain_set import (
    build_pretrain_set,
    pair_in_batch,
    pretrain_dataset,
    read_holdout,
    set_counts,
)
from ace_ray.model.encoder import build_encoder, save_model, trim_padding
from ace_ray.model.heads import CEBertPretraining
from ace_ray.model.losses import adaptive_weights
from ace_ray.model.masking import mask_patches, mask_tokens
from ace_ray.runtime import ensure_ray
from ace_ray.train import checkpoints, runner, worker

LOSSES = ("mlm", "mpm", "tip")


def products_per_batch(w: Workload) -> int:
    """Products a worker reads per micro-batch: ``batch_size`` pairs hold each product 1 + negatives times."""
    return max(2, w.pretrain.train.batch_size // (1 + w.data.batches.negatives_per_positive))


def stack(column) -> np.ndarray:
    """A column of equal-length arrays (Parquet lists) -> one 2-D array."""
    return np.stack([np.asarray(x) for x in column])


def make_batch(raw: dict, manifest: fs.FeatureManifest, w: Workload, seed: int) -> dict[str, torch.Tensor]:
    """Products (numpy columns) -> pairs with masks and labels, all randomness drawn from ``seed``."""
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
        p = torch.from_numpy(manifest.stack_patches(raw["patch_features"]).astype(np.float32))[ii]
        batch["patches"], batch["patch_masked"] = mask_patches(p, w.pretrain.mpm_prob, gen)
        batch["patch_target"] = p
    if w.model.pixels:
        x = normalise_pixels(manifest.stack_pixels(raw["pixels"]))
        batch["pixels"] = torch.from_numpy(x)[ii]
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
    model: CEBertPretraining, holdout: pd.DataFrame, manifest, w: Workload, device
) -> dict[str, float]:
    """Held-out MLM/MPM/TIP losses and TIP accuracy, with fixed masks and pairs (comparable across steps)."""
    if len(holdout) < 2:
        return {}
    was_training = model.training
    model.eval()
    size = products_per_batch(w)
    sums: dict[str, float] = {}
    correct = pairs = 0
    chunks = [holdout.iloc[i : i + size] for i in range(0, len(holdout), size)]
    chunks = [c for c in chunks if len(c) >= 2]
    for i, chunk in enumerate(chunks):
        raw = {c: chunk[c].to_numpy() for c in chunk.columns}
        batch = {
            k: v.to(device)
            for k, v in make_batch(
                raw, manifest, w, worker.seed_for(w.pretrain.train.seed, "eval", i)
            ).items()
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


def train_loop(config: dict) -> dict:
    """One Ray Train worker."""
    w, tc, rank, world, device, manifest = worker.start(config, "pretrain")
    encoder = build_encoder(w.model, w.data.text.tokenizer, manifest.feature_dim, manifest.pixel_dim)
    model = CEBertPretraining(encoder, encoder.bert.config.vocab_size)
    model = ray.train.torch.prepare_model(model)
    total, micro_per_epoch = config["total_steps"], config["micro_per_epoch"]
    opt, sched = worker.optimizer_and_schedule(model, tc, total)
    log = worker.RunLog(config["tracking_uri"], config["mlflow_run_id"], rank == 0)
    pos = checkpoints.resume(model, opt, sched, log, rank, micro_per_epoch, "pretrain")
    core = checkpoints.unwrap(model)
    holdout = read_holdout(config["set_path"], w.pretrain.max_holdout) if rank == 0 else pd.DataFrame()
    if rank == 0 and pos.step == 0:
        first = evaluate(core, holdout, manifest, w, device)
        log.metrics(first, 0, prefix="heldout_")
        print("[pretrain] step 0 held-out: " + " ".join(f"{k} {v:.4f}" for k, v in first.items()))
    shard = ray.train.get_dataset_shard("train")
    meter, epoch_meter = worker.Meter(total, pos.step), worker.Meter(total, pos.step)
    size = products_per_batch(w)
    samples_seen, steady = 0, None
    last_loss = float("inf")  # a checkpoint score that sorts last until a step is done
    model.train()
    while pos.step < total:
        batches = shard.iter_batches(batch_size=size, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=4 * size)  # fmt: skip
        for i, raw in enumerate(batches):
            if i < pos.micro:
                continue  # consumed before the restart
            if i >= micro_per_epoch or pos.step >= total:
                break
            seed = worker.seed_for(tc.seed, rank, pos.epoch, i)
            torch.manual_seed(seed)  # dropout
            batch = {k: v.to(device) for k, v in make_batch(raw, manifest, w, seed).items()}
            sync = (pos.micro + 1) % tc.grad_accum == 0
            with worker.no_sync(model, sync), worker.autocast(device, tc.bf16):
                out = model(batch)
                loss, weights = weighted_loss(out, w, pos.step)
                (loss / tc.grad_accum).backward()
            pos.micro += 1
            acc = float(((out["tip_logits"] > 0).float() == batch["label"]).float().mean())
            step_metrics = {
                "loss": float(loss),
                **{k: float(out[k]) for k in LOSSES if k in out},
                "tip_acc": acc,
            }
            samples_seen += len(batch["label"]) * world
            meter.add(step_metrics, len(batch["label"]) * world)
            epoch_meter.add(step_metrics, len(batch["label"]) * world)
            if not sync:
                continue
            if tc.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            pos.step += 1
            last_loss = float(loss)
            if steady is None:  # throughput is measured from the first step on (start-up excluded)
                steady = (time.perf_counter(), samples_seen)
            if rank == 0:
                log.metrics({**step_metrics, "lr": sched.get_last_lr()[0],
                             **{f"weight_{k}": v for k, v in weights.items()}}, pos.step)  # fmt: skip
            if pos.step % tc.log_every == 0 or pos.step == total:
                m = meter.flush()
                if rank == 0:
                    log.metrics({"samples_per_s": m["samples_per_s"]}, pos.step)
                    print(
                        worker.progress_line("pretrain", pos, total, m, ("loss", *LOSSES, "tip_acc"), meter)
                    )
            if rank == 0 and w.pretrain.eval_every and pos.step % w.pretrain.eval_every == 0:
                log.metrics(evaluate(core, holdout, manifest, w, device), pos.step, prefix="heldout_")
            if pos.step % tc.checkpoint_every == 0 and pos.step < total:
                checkpoints.report({"step": pos.step, "loss": last_loss}, model, opt, sched, pos, rank)
        if pos.step < total or pos.micro >= micro_per_epoch:
            pos.epoch, pos.micro = pos.epoch + 1, 0
            if rank == 0:
                log.metrics(epoch_meter.flush(), pos.epoch, prefix="epoch_")
    rate = (samples_seen - steady[1]) / (time.perf_counter() - steady[0]) if steady else 0.0
    final = evaluate(core, holdout, manifest, w, device) if rank == 0 else {}
    if rank == 0:
        log.metrics(final, pos.step, prefix="heldout_")
        print("[pretrain] final held-out: " + " ".join(f"{k} {v:.4f}" for k, v in final.items()))

    def write_model(d: Path) -> None:
        save_model(core.encoder, core.heads, d / checkpoints.MODEL_DIR, w.data.text.tokenizer,
                   {"feature_manifest": config["manifest"], "task": "pretrain"})  # fmt: skip

    checkpoints.report(
        {"step": pos.step, "loss": last_loss}, model, opt, sched, pos, rank, extra_dir=write_model
    )
    return {"step": pos.step, "steps_repeated": pos.steps_repeated, "heldout": final, "samples_per_s": rate}


def plan_steps(w: Workload, train_products: int, world: int) -> tuple[int, int]:
    """(micro-batches per worker per epoch, total optimiser steps); a clear error when there is too little
    data for one step."""
    tc = w.pretrain.train
    size = products_per_batch(w)
    micro = (train_products // world) // size
    if micro < tc.grad_accum:
        raise ValueError(
            f"{train_products} training products give {micro} batches of {size} per worker on {world} "
            f"workers, fewer than grad_accum={tc.grad_accum}: use fewer workers or a smaller batch_size"
        )
    return micro, tc.max_steps or tc.epochs * (micro // tc.grad_accum)


def run_pretrain(w: Workload, run_name: str | None = None) -> dict:
    """Pretrain CE-BERT on the workload's catalogue; returns the result with the model directory.

    ``run_name`` names the Ray Train run; giving the name of an interrupted run resumes it from its latest
    checkpoint (and logs into the same MLflow run).
    """
    ensure_ray(w.ray)
    root = w.path(w.data.root)
    store = fs.for_workload(w)
    tc = w.pretrain.train
    set_path = build_pretrain_set(root, store, w.data.text, w.pretrain.holdout, tc.seed)
    counts = set_counts(set_path)
    use_gpu = runner.wants_gpu(tc)
    micro, total = plan_steps(w, counts["train"], tc.workers)
    if not 0 <= w.pretrain.tip_warmup_steps < total:
        raise ConfigError(f"pretrain.tip_warmup_steps={w.pretrain.tip_warmup_steps}: must be >= 0 and below "
                          f"the run's {total} steps, or MLM and MPM never train")  # fmt: skip
    existing = tracking.find_run(w, "ray_run_name", run_name) if run_name else None
    name = runner.run_name("pretrain", run_name)
    with tracking.start_run(w, "pretrain", tags={"stage": "pretrain", "ray_run_name": name},
                            run_id=existing) as run:  # fmt: skip
        tracking.log_metrics({"train_products": counts["train"], "heldout_products": counts["holdout"],
                              "total_steps": total, "micro_batches_per_epoch": micro})  # fmt: skip
        loop_config = {
            "workload": to_dict(w),
            "manifest": dataclasses.asdict(store.manifest),
            "set_path": str(set_path),
            "use_gpu": use_gpu,
            "total_steps": total,
            "micro_per_epoch": micro,
            "tracking_uri": tracking.tracking_uri(w),
            "mlflow_run_id": run.info.run_id,
        }
        print(f"[pretrain] {counts['train']:,} training products ({counts['holdout']:,} held out), "
              f"{tc.workers} workers{' on GPUs' if use_gpu else ''}, {total} steps; Ray Train run {name}")  # fmt: skip
        trainer = runner.trainer_for(
            w, tc, name, train_loop, loop_config, {"train": pretrain_dataset(set_path)}
        )
        out = runner.fit(trainer, run, name)
    return out
