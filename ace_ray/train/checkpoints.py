"""Training checkpoints: model, optimiser, schedule and data position, reported to Ray Train.

Ray Train keeps them under the run's ``storage_path`` (local directory or a remote URI), the K best by
loss plus always the latest, and hands the latest back to a restarted or resumed run.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ray.train
import torch

STATE_FILE = "state.pt"
MODEL_DIR = "model"  # the final checkpoint also holds the saved model directory


@dataclass
class Position:
    """Where a run is: optimiser steps done, the epoch, micro-batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    steps_repeated: int = 0  # optimiser steps redone after failures, over the run's life


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def report(metrics: dict, model, opt, sched, pos: Position, rank: int, extra_dir=None,
           extra_state: dict | None = None) -> None:  # fmt: skip
    """``ray.train.report`` on every rank (it is a barrier); rank 0 attaches the checkpoint.

    ``extra_dir(path)``, when given, writes more files into the checkpoint (e.g. the saved model);
    ``extra_state`` maps names to more objects with a ``state_dict`` (e.g. a discriminator and its optimiser).
    """
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "position": asdict(pos),
                 "extra": {k: v.state_dict() for k, v in (extra_state or {}).items()}}  # fmt: skip
        torch.save(state, Path(tmp) / STATE_FILE)
        if extra_dir is not None:
            extra_dir(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(model, opt, sched, extra_state: dict | None = None) -> Position | None:
    """Load the run's latest checkpoint into ``model``, ``opt``, ``sched`` (and ``extra_state``'s objects);
    its position, or None."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    for k, v in (extra_state or {}).items():
        v.load_state_dict(state["extra"][k])
    return Position(**state["position"])


def resume(model, opt, sched, log, rank: int, epoch_batches, tag: str,
           extra_state: dict | None = None) -> Position:  # fmt: skip
    """Where this attempt starts: the latest checkpoint's position (the next epoch when its epoch was
    done: ``epoch_batches(epoch)`` micro-batches), or the beginning. Steps a failed attempt did after its
    last checkpoint are done again; they are counted and logged (``log`` is the run's ``worker.RunLog``)."""
    pos = restore(model, opt, sched, extra_state)
    if pos is None:
        return Position()
    if pos.micro >= epoch_batches(pos.epoch):
        pos.epoch, pos.micro = pos.epoch + 1, 0
    if pos.step and rank == 0:
        redo = max(0, log.last_step("loss") - pos.step)
        pos.steps_repeated += redo
        print(f"[{tag}] resumed from step {pos.step} (epoch {pos.epoch}, batch {pos.micro}); "
              f"repeating {redo} steps")  # fmt: skip
        log.metrics({"resumed_from_step": pos.step, "steps_repeated": pos.steps_repeated}, pos.step)
    return pos
