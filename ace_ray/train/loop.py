"""The one training-loop skeleton that pretraining and fine-tuning share: resume from the latest checkpoint,
skip the micro-batches consumed before it, accumulate gradients, step, log, checkpoint, save the model.

What differs between the two is a ``Task``: how a stored batch becomes a loss, what happens after an
optimiser step (the discriminator's turn), what is evaluated along the way and what the model directory
holds. The data order comes from an ``EpochPlan`` (``ace_ray.data.plan``): a function of (seed, epoch, rank),
so a resumed run consumes exactly the batches the unbroken run would have. Every optimiser step logs a
fingerprint of the batches each rank consumed (``data_r<rank>``), which is how a test, or a user, checks it.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ace_ray.data.feature_table import FeatureTable
from ace_ray.data.plan import EpochPlan, seed_for, stream
from ace_ray.train import checkpoints, worker


class Task:
    """What one kind of training does inside the skeleton (override what applies)."""

    tag = "train"
    log_keys: tuple[str, ...] = ("loss",)
    columns: list[str] | None = None  # stored columns the task reads
    features: tuple[str, ...] = ()  # feature-table arrays gathered by the rows' feature_row
    model: torch.nn.Module  # DDP-wrapped by ``ray.train.torch.prepare_model``

    def forward(self, raw: dict, seed: int, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss to backpropagate, step metrics, samples) of one micro-batch; all randomness from ``seed``."""
        raise NotImplementedError

    def fingerprint(self, raw: dict) -> int:
        """An integer naming the micro-batch's contents (logged per step and rank)."""
        return zlib.crc32("\n".join(sorted(map(str, raw["product_id"]))).encode())

    def after_step(self, step: int) -> dict[str, float]:
        """After optimiser step ``step`` (1-based): more updates (e.g. the discriminator's); their metrics."""
        return {}

    def extra_state(self) -> dict:
        """More objects with a ``state_dict`` to checkpoint and restore."""
        return {}

    def on_start(self, step: int, log: worker.RunLog) -> None:
        """Before the first step of this attempt (``step`` is where it resumes)."""

    def on_step(self, step: int, log: worker.RunLog) -> None:
        """After every optimiser step, on every rank (periodic evaluation)."""

    def report_metrics(self, step: int, log: worker.RunLog) -> dict[str, float]:
        """At every checkpoint and at the end, on every rank: metrics to report to Ray Train (and so to
        Ray Tune), the same on every rank (validation)."""
        return {}

    def write_model(self, directory: Path) -> None:
        """Write the model directory into the final checkpoint."""
        raise NotImplementedError

    def finish(self, step: int, log: worker.RunLog) -> dict:
        """After the last step: more of the loop's return value."""
        return {}


def gather(value, world: int) -> list:
    """Every rank's ``value``, any picklable object (a collective: all ranks call it at the same step)."""
    if world == 1 or not dist.is_initialized():
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out


def _record_nodes(tag: str, step: int, world: int, rank: int, log: worker.RunLog) -> None:
    """Where this attempt's ranks run: a line and, from rank 0, the MLflow tag ``nodes_from_step_<step>``
    (Ray node ids by rank). A restart after a lost node shows as a second tag with the nodes that remain."""
    import ray

    nodes = gather(ray.get_runtime_context().get_node_id(), world)
    if rank == 0:
        print(f"[{tag}] from step {step}: " + ", ".join(f"rank {r} on node {n[:12]}" for r, n in enumerate(nodes)),
              flush=True)  # fmt: skip
        log.tag(f"nodes_from_step_{step}", ",".join(nodes))


def run(task: Task, config: dict, tc, rank: int, world: int, device: torch.device) -> dict:
    """Train ``task`` to ``config["total_steps"]`` optimiser steps over ``config["plan"]``; the result of
    rank 0 (steps, steps repeated after failures, samples/s, last loss and the task's own figures)."""
    plan = EpochPlan(**config["plan"])
    table = FeatureTable(config["feature_table"]) if task.features else None
    total = config["total_steps"]
    model = task.model
    worker.suit_attention(model, device, tc.bf16)
    opt, sched = worker.optimizer_and_schedule(model, tc, total)
    log = worker.RunLog(config["tracking_uri"], config["mlflow_run_id"], rank == 0)
    log.tag("autocast", "bf16" if worker.uses_bf16(device, tc.bf16) else "float32")
    pos = checkpoints.resume(model, opt, sched, log, rank, plan.batches, task.tag, task.extra_state())
    _record_nodes(task.tag, pos.step, world, rank, log)
    task.on_start(pos.step, log)
    meter, epoch_meter = worker.Meter(total, pos.step), worker.Meter(total, pos.step)
    samples_seen, steady, last_loss = 0, None, float("inf")  # inf: a checkpoint score that sorts last
    last_line = time.monotonic()
    model.train()
    while pos.step < total:
        if plan.batches(pos.epoch) == 0:  # the driver checks epoch 0; a later epoch's deal could be short
            raise ValueError(f"epoch {pos.epoch} gives no whole step per worker: use fewer workers")
        fingerprints: list[int] = []
        for raw in stream(plan, pos.epoch, rank, task.columns, skip=pos.micro, features=table,
                          feature_columns=task.features):  # fmt: skip
            seed = seed_for(tc.seed, rank, pos.epoch, pos.micro)
            torch.manual_seed(seed)  # dropout and any draw the task makes
            sync = (pos.micro + 1) % tc.grad_accum == 0
            with worker.no_sync(model, sync), worker.autocast(device, tc.bf16):
                loss, metrics, samples = task.forward(raw, seed, pos.step)
                (loss / tc.grad_accum).backward()
            pos.micro += 1
            fingerprints.append(task.fingerprint(raw))
            samples_seen += samples * world
            meter.add(metrics, samples * world)
            epoch_meter.add(metrics, samples * world)
            if not sync:
                continue
            if tc.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            pos.step += 1
            metrics.update(task.after_step(pos.step))
            last_loss = float(metrics.get("main", metrics["loss"]))
            if steady is None:  # throughput from the first step on (start-up excluded)
                steady = (time.perf_counter(), samples_seen)
            ranks = gather(zlib.crc32(np.asarray(fingerprints, np.uint64).tobytes()), world)
            fingerprints = []
            if rank == 0:
                log.metrics({**metrics, "lr": sched.get_last_lr()[0], "epoch": pos.epoch,
                             **{f"data_r{r}": float(v) for r, v in enumerate(ranks)}}, pos.step)  # fmt: skip
            # A line every log_every steps, and at least every 30 s on slow runs.
            if pos.step % tc.log_every == 0 or pos.step == total or time.monotonic() - last_line > 30:
                m = meter.flush()
                last_line = time.monotonic()
                if rank == 0:
                    log.metrics({"samples_per_s": m["samples_per_s"]}, pos.step)
                    print(worker.progress_line(task.tag, pos, total, m, task.log_keys, meter), flush=True)
            task.on_step(pos.step, log)
            if pos.step % tc.checkpoint_every == 0 and pos.step < total:
                reported = {"step": pos.step, "total_steps": total, "loss": last_loss,
                            **task.report_metrics(pos.step, log)}  # fmt: skip
                checkpoints.report(reported, model, opt, sched, pos, rank, extra_state=task.extra_state())
            if pos.step >= total:
                break
        if pos.step < total or pos.micro >= plan.batches(pos.epoch):
            pos.epoch, pos.micro = pos.epoch + 1, 0
            if rank == 0:
                log.metrics(epoch_meter.flush(), pos.epoch, prefix="epoch_")
    rate = (samples_seen - steady[1]) / (time.perf_counter() - steady[0]) if steady else 0.0
    out = task.finish(pos.step, log)
    reported = {
        "step": pos.step,
        "total_steps": total,
        "loss": last_loss,
        **task.report_metrics(pos.step, log),
    }
    checkpoints.report(reported, model, opt, sched, pos, rank, extra_dir=task.write_model,
                       extra_state=task.extra_state())  # fmt: skip
    return {"step": pos.step, "steps_repeated": pos.steps_repeated, "samples_per_s": rate, "loss": last_loss,
            **reported, **out}  # fmt: skip
