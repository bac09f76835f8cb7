"""ACE-BERT fine-tuning on Ray Train (paper 3): two shared-weight towers, the bidirectional softmax over
in-batch negatives (eq. 4-5) on category-partitioned mixed-negative batches, and, by preset, hot queries
and adversarial learning against a domain classifier D (eq. 6-8).

Each row of the fine-tune stream is one whole planned batch, so every worker trains on whole batches and
every pair is seen once per epoch. The adversarial game is played in one of two ways behind one switch
(``finetune.adversarial.mode``): ``alternating`` (k encoder steps minimising L_main - lambda L_adv with
D fixed, then D steps minimising L_adv with the encoder fixed) or ``grl`` (both at once, the encoder's
share of the gradient reversed). D is small and is not wrapped in DDP: its gradients are averaged by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ace_ray import tracking
from ace_ray.config import Workload, to_dict
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.batching import cached_finetune_batches, finetune_dataset, normalise_pixels
from ace_ray.model.losses import bidirectional_softmax_loss, domain_loss, same_product_mask
from ace_ray.model.towers import DomainClassifier, build_towers, reverse_gradient, save_towers
from ace_ray.runtime import ensure_ray
from ace_ray.train import checkpoints, runner, worker

MODES = ("none", "alternating", "grl")
TEXT_COLUMNS = ("query_ids", "query_mask", "title_ids", "title_mask", "hot_ids", "hot_mask")
LOG_KEYS = ("loss", "main", "adv", "d_acc", "centroid_gap", "inbatch_acc", "false_negatives")


def make_batch(raw: dict, manifest: fs.FeatureManifest, w: Workload) -> dict:
    """One row of the fine-tune stream (a whole batch, numpy) -> tensors for the towers."""
    batch = {k: torch.from_numpy(np.asarray(raw[k][0]).astype(np.int64)) for k in TEXT_COLUMNS}
    if w.model.patches:
        batch["patches"] = torch.from_numpy(np.asarray(raw["patches"][0], np.float32))
    if w.model.pixels:
        batch["pixels"] = torch.from_numpy(normalise_pixels(np.asarray(raw["pixels"][0])))
    batch["product_id"] = list(raw["product_id"][0])
    if w.finetune.hot_queries and w.finetune.hot_query_dropout > 0:
        drop_hot_queries(batch, w.finetune.hot_query_dropout, w.data.text)
    return batch


@functools.lru_cache(maxsize=4)
def _cold_hot_queries(length: int, tokenizer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the hot-query segment of a product without train-day clicks, encoded once."""
    blank = text.encode([text.join_hot_queries([])], length, tokenizer)
    return tuple(torch.from_numpy(blank[k][0].astype(np.int64)) for k in ("input_ids", "attention_mask"))


def drop_hot_queries(batch: dict, share: float, text_cfg) -> None:
    """Blank the hot queries of about ``share`` of the batch's rows (drawn from torch's RNG, which the
    training loop seeds per batch), so those products are encoded from title and image alone."""
    rows = torch.rand(len(batch["hot_ids"])) < share
    ids, mask = _cold_hot_queries(batch["hot_ids"].shape[1], text_cfg.tokenizer)
    batch["hot_ids"][rows] = ids
    batch["hot_mask"][rows] = mask


def average_grads(module: torch.nn.Module, world: int) -> None:
    """All-reduce-mean the gradients of a module that is not wrapped in DDP (the discriminator)."""
    if world > 1:
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


def game_stats(q: torch.Tensor, a: torch.Tensor, dq: torch.Tensor | None, da: torch.Tensor | None) -> dict:
    """What shows whether the adversarial game is healthy: D's accuracy (0.5 = embeddings it cannot tell
    apart) and the distance between the query and product centroids (the representation gap)."""
    out = {"centroid_gap": float((q.mean(0) - a.mean(0)).norm())}
    if dq is not None:
        out["d_acc"] = float(((dq > 0).float().mean() + (da < 0).float().mean()) / 2)
    return out


def phase_of(step: int, mode: str, encoder_steps: int, disc_steps: int) -> str:
    """``encoder`` or ``disc``: in alternating mode, k encoder steps then ``disc_steps`` D steps, repeated."""
    if mode != "alternating":
        return "encoder"
    return "disc" if step % (encoder_steps + disc_steps) >= encoder_steps else "encoder"


def train_loop(config: dict) -> dict:
    """One Ray Train worker."""
    w, tc, rank, world, device, manifest = worker.start(config, "finetune")
    ft, adv = w.finetune, w.finetune.adversarial
    towers = build_towers(w, manifest.feature_dim, manifest.pixel_dim)
    disc = DomainClassifier(ft.embed_dim, adv.disc_hidden).to(device) if adv.mode != "none" else None
    model = ray.train.torch.prepare_model(towers)
    total, micro_per_epoch = config["total_steps"], config["micro_per_epoch"]
    opt, sched = worker.optimizer_and_schedule(model, tc, total)
    extra = {}
    if disc is not None:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=adv.disc_lr)
        extra = {"disc": disc, "disc_opt": opt_d}
    log = worker.RunLog(config["tracking_uri"], config["mlflow_run_id"], rank == 0)
    pos = checkpoints.resume(model, opt, sched, log, rank, micro_per_epoch, "finetune", extra)
    shard = ray.train.get_dataset_shard("train")
    meter, epoch_meter = worker.Meter(total, pos.step), worker.Meter(total, pos.step)
    samples_seen, steady, last_loss = 0, None, float("inf")
    model.train()
    while pos.step < total:
        for i, raw in enumerate(shard.iter_batches(batch_size=1, batch_format="numpy")):
            if i < pos.micro:
                continue  # consumed before the restart
            if i >= micro_per_epoch or pos.step >= total:
                break
            torch.manual_seed(worker.seed_for(tc.seed, rank, pos.epoch, i))  # dropout
            batch = make_batch(raw, manifest, w)
            fn = same_product_mask(batch.pop("product_id")) if ft.mask_false_negatives else None
            batch = {k: v.to(device) for k, v in batch.items()}
            phase = phase_of(pos.step, adv.mode, adv.encoder_steps, adv.disc_steps)
            sync = (pos.micro + 1) % tc.grad_accum == 0
            with worker.no_sync(model, sync), worker.autocast(device, tc.bf16):
                if phase == "disc":
                    with torch.no_grad():
                        q, a = model(batch)
                    main = bidirectional_softmax_loss(q, a, ft.gamma, fn)
                    dq, da = disc(q), disc(a)
                    l_adv = domain_loss(dq, da)
                    (l_adv / tc.grad_accum).backward()
                    loss = main - adv.weight * l_adv
                else:
                    q, a = model(batch)
                    main = bidirectional_softmax_loss(q, a, ft.gamma, fn)
                    dq = da = l_adv = None
                    loss = main
                    if adv.mode == "alternating":
                        dq, da = disc(q), disc(a)
                        l_adv = domain_loss(dq, da)
                        loss = main - adv.weight * l_adv
                    elif adv.mode == "grl":
                        dq, da = disc(reverse_gradient(q, adv.weight)), disc(reverse_gradient(a, adv.weight))
                        l_adv = domain_loss(dq, da)
                        loss = main + l_adv  # D descends L_adv; the reversal makes the encoder ascend it
                    (loss / tc.grad_accum).backward()
            pos.micro += 1
            with torch.no_grad():
                hits = (q @ a.T).argmax(1) == torch.arange(len(q), device=q.device)
                step_metrics = {"loss": float(loss), "main": float(main), "inbatch_acc": float(hits.float().mean()),
                                "false_negatives": float(fn.sum()) if fn is not None else 0.0,
                                **game_stats(q, a, dq, da)}  # fmt: skip
                if l_adv is not None:
                    step_metrics["adv"] = float(l_adv)
            samples_seen += len(q) * world
            meter.add(step_metrics, len(q) * world)
            epoch_meter.add(step_metrics, len(q) * world)
            if not sync:
                continue
            if phase == "encoder":
                if tc.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
                opt.step()
            if disc is not None and (phase == "disc" or adv.mode == "grl"):
                average_grads(disc, world)
                opt_d.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if disc is not None:
                opt_d.zero_grad(set_to_none=True)  # also drops what D collected while the encoder stepped
            pos.step += 1
            last_loss = float(main)
            if steady is None:  # throughput from the first step on (start-up excluded)
                steady = (time.perf_counter(), samples_seen)
            if rank == 0:
                log.metrics({**step_metrics, "lr": sched.get_last_lr()[0], "disc_phase": float(phase == "disc")},
                            pos.step)  # fmt: skip
            if pos.step % tc.log_every == 0 or pos.step == total:
                m = meter.flush()
                if rank == 0:
                    log.metrics({"samples_per_s": m["samples_per_s"]}, pos.step)
                    print(worker.progress_line("finetune", pos, total, m, LOG_KEYS, meter))
            if pos.step % tc.checkpoint_every == 0 and pos.step < total:
                checkpoints.report({"step": pos.step, "loss": last_loss}, model, opt, sched, pos, rank,
                                   extra_state=extra)  # fmt: skip
        if pos.step < total or pos.micro >= micro_per_epoch:
            pos.epoch, pos.micro = pos.epoch + 1, 0
            if rank == 0:
                log.metrics(epoch_meter.flush(), pos.epoch, prefix="epoch_")
    rate = (samples_seen - steady[1]) / (time.perf_counter() - steady[0]) if steady else 0.0

    def write_model(d: Path) -> None:
        save_towers(checkpoints.unwrap(model), d / checkpoints.MODEL_DIR, w.data.text.tokenizer,
                    {"feature_manifest": config["manifest"], "preset": ft.preset,
                     "text": dataclasses.asdict(w.data.text)})  # fmt: skip

    checkpoints.report({"step": pos.step, "loss": last_loss}, model, opt, sched, pos, rank,
                       extra_dir=write_model, extra_state=extra)  # fmt: skip
    return {"step": pos.step, "steps_repeated": pos.steps_repeated, "samples_per_s": rate, "loss": last_loss}


def plan_steps(w: Workload, batches: int, world: int) -> tuple[int, int]:
    """(batches per worker per epoch, total optimiser steps); a clear error when there are too few."""
    tc = w.finetune.train
    micro = batches // world
    if micro < tc.grad_accum:
        raise ValueError(f"{batches} fine-tune batches give {micro} per worker on {world} workers, fewer than "
                         f"grad_accum={tc.grad_accum}: use fewer workers or a smaller data.batches.batch_size")  # fmt: skip
    return micro, tc.max_steps or tc.epochs * (micro // tc.grad_accum)


def run_finetune(w: Workload, run_name: str | None = None) -> dict:
    """Fine-tune the two towers on the workload's click log; the result with the model directory.
    ``run_name`` of an interrupted run resumes it from its latest checkpoint."""
    ft, tc = w.finetune, w.finetune.train
    if ft.adversarial.mode not in MODES:
        raise ValueError(
            f"finetune.adversarial.mode: unknown mode {ft.adversarial.mode!r}; one of {', '.join(MODES)}"
        )
    if not 0 <= ft.hot_query_dropout <= 1:
        raise ValueError(
            f"finetune.hot_query_dropout: expected a share in [0, 1], got {ft.hot_query_dropout}"
        )
    ensure_ray(w.ray)
    # Workers run elsewhere: every path they read must be absolute.
    w = dataclasses.replace(w, workspace=str(w.path(".")))
    root = w.path(w.data.root)
    store = fs.for_workload(w)
    batch_dir, counts = cached_finetune_batches(root, store, w.data.test_days, w.data.batches, w.data.text)
    micro, total = plan_steps(w, counts["batches"], tc.workers)
    use_gpu = runner.wants_gpu(tc)
    existing = tracking.find_run(w, "ray_run_name", run_name) if run_name else None
    name = runner.run_name(f"finetune-{ft.preset}", run_name)
    tags = {"stage": "finetune", "preset": ft.preset, "ray_run_name": name}
    with tracking.start_run(w, f"finetune-{ft.preset}", tags=tags, run_id=existing) as run:
        tracking.log_metrics({"pairs": counts["pairs"], "batches": counts["batches"], "total_steps": total})
        loop_config = {"workload": to_dict(w), "manifest": dataclasses.asdict(store.manifest), "use_gpu": use_gpu,
                       "total_steps": total, "micro_per_epoch": micro, "tracking_uri": tracking.tracking_uri(w),
                       "mlflow_run_id": run.info.run_id}  # fmt: skip
        print(f"[finetune] preset {ft.preset}: {counts['pairs']:,} pairs in {counts['batches']:,} batches of "
              f"{w.data.batches.batch_size} (P={w.data.batches.partitions}), {tc.workers} workers"
              f"{' on GPUs' if use_gpu else ''}, {total} steps; Ray Train run {name}")  # fmt: skip
        columns = [*TEXT_COLUMNS, "product_id", *(["patches"] if w.model.patches else []),
                   *(["pixels"] if w.model.pixels else [])]  # fmt: skip
        data = {"train": finetune_dataset(batch_dir, columns)}
        trainer = runner.trainer_for(w, tc, name, train_loop, loop_config, data)
        return runner.fit(trainer, run, name)
