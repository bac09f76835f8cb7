"""ACE-BERT fine-tuning on Ray Train (paper 3): two shared-weight towers, the bidirectional softmax over
in-batch negatives (eq. 4-5) on category-partitioned mixed-negative batches, and, by preset, hot queries
and adversarial learning against a domain classifier D (eq. 6-8).

Each file of the fine-tune set is one whole planned batch, dealt to the workers by an ``EpochPlan``, so every
worker trains on whole batches and every pair is seen once per epoch. The objective (matching loss, false
negatives, the two ways of playing the adversarial game) is ``ace_ray.model.objective``; this module runs it
in the shared training loop (``ace_ray.train.loop``). D is small and is not wrapped in DDP: its gradients
are averaged by hand, and its steps are counted apart from the encoder's optimiser steps.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ace_ray import tracking
from ace_ray.config import ConfigError, Workload, to_dict
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.batching import cached_finetune_batches
from ace_ray.data.clicks import train_split
from ace_ray.data.feature_table import for_store
from ace_ray.data.plan import EpochPlan
from ace_ray.eval.validation import ValidationSet, build_validation_set, pool_rows, validation_recall
from ace_ray.model.objective import (
    Objective,
    false_negative_mask,
    game_stats,
    inbatch_accuracy,
    other_category_mask,
)
from ace_ray.model.towers import DomainClassifier, build_towers, save_towers
from ace_ray.runtime import ensure_ray, outside_placement_group
from ace_ray.train import checkpoints, loop, runner, worker

TEXT_COLUMNS = ("query_ids", "query_mask", "title_ids", "title_mask", "hot_ids", "hot_mask", "hot_other_ids",
                "hot_other_mask")  # fmt: skip
LOG_KEYS = ("loss", "main", "image", "adv", "d_acc", "centroid_gap", "inbatch_acc", "false_negatives", "disc_steps",
            "image_share")  # fmt: skip


def make_batch(raw: dict, w: Workload) -> dict:
    """One row of the fine-tune stream (a whole batch, numpy, with its gathered ``patches`` and ``pixels``)
    -> tensors for the towers."""
    batch = {k: torch.from_numpy(np.asarray(raw[k][0]).astype(np.int64)) for k in TEXT_COLUMNS}
    # The image inputs as stored (float16 features, uint8 pixels): the encoder converts them on its own
    # device, so a GPU is sent a half and a quarter of the float32 bytes.
    if w.model.patches:
        batch["patches"] = torch.from_numpy(np.array(raw["patches"][0]))
    if w.model.pixels:
        batch["pixels"] = torch.from_numpy(np.array(raw["pixels"][0], np.uint8))
    batch["product_id"] = list(raw["product_id"][0])
    others = batch.pop("hot_other_ids"), batch.pop("hot_other_mask")
    f = w.finetune
    if f.hot_queries and (f.hot_query_leave_out > 0 or f.hot_query_leave_one_out):
        only_click = (
            torch.from_numpy(np.asarray(raw["hot_own_clicks"][0]) == 1) if f.hot_query_leave_one_out else None
        )
        leave_out_pair_query(batch, *others, f.hot_query_leave_out, only_click)
    if f.hot_queries and f.hot_query_dropout > 0:
        drop_hot_queries(batch, f.hot_query_dropout, w.data.text)
    return batch


def leave_out_pair_query(batch: dict, other_ids: torch.Tensor, other_mask: torch.Tensor, share: float,
                         only_click: torch.Tensor | None = None) -> None:  # fmt: skip
    """For the rows of ``only_click`` (pairs whose own click is the only one that made their query hot) and
    about ``share`` of the others (torch's RNG, seeded per batch by the loop), show the product with its hot
    queries other than the pair's own query (``other_*``: the batch files' ``hot_other_*``). Otherwise the
    tower learns to find a product by its query's copy among the hot queries, which a test-day query often
    is not."""
    n = len(batch["hot_ids"])
    rows = torch.rand(n) < share if share > 0 else torch.zeros(n, dtype=torch.bool)
    if only_click is not None:
        rows |= only_click
    batch["hot_ids"][rows] = other_ids[rows]
    batch["hot_mask"][rows] = other_mask[rows]


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


class Counter:
    """A checkpointed count (the discriminator's steps, which are not optimiser steps of the encoder)."""

    def __init__(self):
        self.value = 0

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = int(state["value"])


class FinetuneTask(loop.Task):
    """Two-tower fine-tuning inside the shared loop; the objective is ``ace_ray.model.objective``."""

    tag = "finetune"
    log_keys = LOG_KEYS

    def __init__(self, config: dict, w: Workload, manifest, world: int, device):
        self.w, self.manifest, self.world, self.device, self.config = w, manifest, world, device, config
        ft, adv = w.finetune, w.finetune.adversarial
        self.objective = Objective.from_config(ft)
        self.model = ray.train.torch.prepare_model(build_towers(w, manifest.feature_dim, manifest.pixel_dim))
        self.disc = DomainClassifier(ft.embed_dim, adv.disc_hidden).to(device) if adv.mode != "none" else None
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=adv.disc_lr) if self.disc else None
        self.sched_d = None
        if self.disc and adv.disc_lr_schedule == "encoder":
            self.sched_d = worker.linear_schedule(self.opt_d, ft.train.warmup_steps, config["total_steps"])
        self.disc_steps = Counter()
        self.columns = ["batch_id", *TEXT_COLUMNS, "product_id", "feature_row"]
        if ft.hot_queries and ft.hot_query_leave_one_out:  # read only where make_batch uses it
            self.columns.append("hot_own_clicks")
        if ft.logq_correction:
            self.columns.append("product_clicks")
        self.same_category = ft.image_loss_weight > 0 and ft.image_negatives == "same_category"
        if self.same_category:
            self.columns.append("category")
        self.features = tuple(k for k in ("patches", "pixels") if getattr(w.model, k))
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.validation, self.rank = None, ray.train.get_context().get_world_rank()
        if config.get("validation"):
            self.validation = ValidationSet(**config["validation"])
            self.val_rows = (pool_rows(self.validation, w.data.root, config["store_path"], w.data.held_out_days,
                                       w.data.text.hot_k) if self.rank == 0 else None)  # fmt: skip

    def fingerprint(self, raw) -> int:
        return int(raw["batch_id"][0])

    def forward(self, raw, seed, step):
        batch = make_batch(raw, self.w)
        ids = batch.pop("product_id")
        mask, counts = false_negative_mask(ids, batch["query_ids"])
        if not self.w.finetune.mask_false_negatives:
            mask = None
        image_mask = None
        if self.same_category:  # the photo's negatives: the other products of the positive's category
            image_mask = other_category_mask(list(raw["category"][0])) | (mask if mask is not None else False)
        log_q = None
        if weight := self.w.finetune.logq_correction:  # every pair's product has a train-day click: its own
            log_q = weight * torch.log(torch.from_numpy(np.asarray(raw["product_clicks"][0], np.float32)))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        q, a = self.model(batch)
        towers = checkpoints.unwrap(self.model)
        loss, parts = self.objective.encoder_loss(q, a, self.disc, mask, towers.image_emb, image_mask, log_q)
        self.last = (q.detach(), a.detach())
        metrics = {"loss": loss.item(), "main": parts["main"].item(), "inbatch_acc": inbatch_accuracy(q, a, mask),
                   **{k: float(v) for k, v in counts.items()}, **game_stats(q, a, parts.get("dq"), parts.get("da"))}  # fmt: skip
        for k in ("adv", "image"):
            if k in parts:
                metrics[k] = parts[k].item()
        if towers.additive:
            metrics["image_share"] = towers.image_share
        return loss, metrics, len(q)

    def after_step(self, step):
        """D's turn: with gradient reversal, the gradient this step's backward gave it; in alternating mode,
        ``disc_steps`` steps on this batch's embeddings after every ``encoder_steps`` encoder steps."""
        if self.disc is None:
            return {}
        out = {}
        if self.objective.steps_disc_with_encoder():
            self._disc_update()
        elif self.objective.disc_due(step):
            for _ in range(self.objective.disc_steps):
                d_loss = self.objective.disc_loss(*self.last, self.disc)
                d_loss.backward()
                self._disc_update()
                out["d_loss"] = d_loss.item()
        self.opt_d.zero_grad(set_to_none=True)
        if self.sched_d is not None:  # one schedule step per encoder step, however many D steps it had
            self.sched_d.step()
        return {**out, "disc_steps": float(self.disc_steps.value), "d_lr": self.opt_d.param_groups[0]["lr"]}

    def _disc_update(self) -> None:
        average_grads(self.disc, self.world)
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        self.disc_steps.value += 1

    def report_metrics(self, step, log):
        """Recall@k on the validation days (computed on rank 0, the same value on every rank)."""
        if self.validation is None:
            return {}
        value = [None]
        if self.rank == 0:
            value[0] = validation_recall(checkpoints.unwrap(self.model), self.validation, self.val_rows,
                                         self.manifest, dataclasses.asdict(self.w.data.text), self.device)  # fmt: skip
        if self.world > 1:
            dist.broadcast_object_list(value, src=0)
        name = f"val_recall_at_{self.validation.k}"
        log.metrics({name: value[0]}, step)
        if self.rank == 0:
            print(f"[finetune] step {step}: {name} {value[0]:.4f}", flush=True)
        return {name: value[0]}

    def extra_state(self):
        if self.disc is None:
            return {}
        state = {"disc": self.disc, "disc_opt": self.opt_d, "disc_steps": self.disc_steps}
        return {**state, "disc_sched": self.sched_d} if self.sched_d is not None else state

    def write_model(self, d: Path) -> None:
        w = self.w
        save_towers(checkpoints.unwrap(self.model), d / checkpoints.MODEL_DIR, w.data.text.tokenizer,
                    {"feature_manifest": self.config["manifest"], "preset": w.finetune.preset,
                     "text": dataclasses.asdict(w.data.text), "split": self.config["split"]})  # fmt: skip


def train_loop(config: dict) -> dict:
    """One Ray Train worker."""
    w, tc, rank, world, device, manifest = worker.start(config, "finetune")
    return loop.run(FinetuneTask(config, w, manifest, world, device), config, tc, rank, world, device)


def plan_steps(w: Workload, batch_dir: Path, world: int) -> tuple[EpochPlan, int]:
    """(the data plan over the planned batches, total optimiser steps); a clear error when there are too
    few batches."""
    tc = w.finetune.train
    plan = EpochPlan.for_directory(batch_dir, world, 1, tc.seed, sort_column="batch_id", grad_accum=tc.grad_accum,
                                   window=1)  # fmt: skip
    if plan.batches(0) < tc.grad_accum:
        raise ValueError(f"{len(plan.files)} fine-tune batches give {plan.batches(0)} per worker on {world} workers, "
                         f"fewer than grad_accum={tc.grad_accum}: use fewer workers or a smaller "
                         "data.batches.batch_size")  # fmt: skip
    return plan, tc.max_steps or plan.steps(tc.epochs)


def run_finetune(w: Workload, run_name: str | None = None, trial: dict | None = None) -> dict:
    """Fine-tune the two towers on the workload's click log; the result with the model directory.

    ``run_name`` of an interrupted run resumes it from its latest checkpoint. ``trial`` (inside a Ray Tune
    trial: its ``id`` and the sweep's ``parent_run_id``) names the run after the trial, continues it when a
    failed trial is retried, reports every checkpoint's metrics to Tune and nests the MLflow run under the
    sweep's."""
    ft, tc = w.finetune, w.finetune.train
    ensure_ray(w.ray)
    # Workers run elsewhere: every path they read must be absolute.
    w = dataclasses.replace(w, workspace=str(w.path(".")))
    if trial:
        name, callbacks = f"trial-{trial['id']}", [_tune_report_callback()]
        existing = tracking.find_run(w, "ray_run_name", name)  # a retried trial continues its run
    else:
        name, callbacks = runner.run_name(f"finetune-{ft.preset}", run_name), []
        existing = runner.check_resume(w, run_name)
    if ft.init_from:
        runner.check_model_dir(w.path(ft.init_from), "finetune.init_from")
    if ft.image_negatives != "batch" and not ft.image_loss_weight:
        raise ConfigError("finetune.image_negatives: chooses the image loss's negatives; set "
                          "finetune.image_loss_weight > 0 for it to have any")  # fmt: skip
    if ft.image_loss_weight and (ft.fusion == "joint" or not (w.model.patches or w.model.pixels)):
        raise ConfigError("finetune.image_loss_weight: the products' image vectors exist with "
                          "finetune.fusion=additive or apart and an image segment (model.patches, model.pixels)")  # fmt: skip
    root = w.path(w.data.root)
    store = fs.for_workload(w)
    held_out = w.data.held_out_days  # training reads neither the validation nor the test days
    # In a sweep's trial, the batches are built outside the trial's placement group (see the helper).
    batch_dir, counts = outside_placement_group(cached_finetune_batches, root, store, held_out, w.data.batches,
                                                w.data.text)  # fmt: skip
    plan, total = plan_steps(w, batch_dir, tc.workers)
    validation = build_validation_set(root, store, w.data.test_days, w.data.val_days, ft.val_k, ft.val_products,
                                      tc.seed)  # fmt: skip
    use_gpu = runner.wants_gpu(tc)
    split = train_split(root, held_out)
    # Which days the run trained and validated on, recorded where a sweep's runs can be checked.
    tags = {"stage": "finetune", "preset": ft.preset, "ray_run_name": name, "train_until": split["first_test_day"],
            "validation_days": f"{validation.first_day}..{validation.end_day}" if validation else ""}  # fmt: skip
    if trial:
        tags |= {"mlflow.parentRunId": trial["parent_run_id"], "tune_trial_id": trial["id"]}
    with tracking.start_run(w, name if trial else f"finetune-{ft.preset}", tags=tags, run_id=existing) as run:
        tracking.log_metrics({"pairs": counts["pairs"], "batches": counts["batches"], "total_steps": total,
                              "micro_batches_per_epoch": plan.batches(0),
                              "val_queries": len(validation.queries) if validation else 0})  # fmt: skip
        loop_config = {"workload": to_dict(w), "manifest": dataclasses.asdict(store.manifest), "use_gpu": use_gpu,
                       "total_steps": total, "plan": plan.to_dict(), "tracking_uri": tracking.tracking_uri(w),
                       "mlflow_run_id": run.info.run_id, "split": split,
                       "store_path": str(store.path), "feature_table": str(for_store(store).path),
                       "validation": validation.to_dict() if validation else None}  # fmt: skip
        val = (
            f", validating on {len(validation.queries):,} queries of {w.data.val_days} day(s)"
            if validation
            else ""
        )
        print(f"[finetune] preset {ft.preset}: {counts['pairs']:,} pairs in {counts['batches']:,} batches of "
              f"{w.data.batches.batch_size} (P={w.data.batches.partitions}), {tc.workers} workers"
              f"{' on GPUs' if use_gpu else ''}, {total} steps{val}; Ray Train run {name}")  # fmt: skip
        trainer = runner.trainer_for(w, tc, name, train_loop, loop_config, callbacks)
        return runner.fit(trainer, run, name)


def _tune_report_callback():
    """Ray Tune's callback that passes every Train report on to the trial (imported only inside a trial)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback()
