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


def report(metrics: dict, model, opt, sched, pos: Position, rank: int, extra_dir=None) -> None:
    """``ray.train.report`` on every rank (it is a barrier); rank 0 attaches the checkpoint.

    ``extra_dir(path)``, when given, writes more files into the checkpoint (e.g. the saved model).
    """
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "position": asdict(pos)}  # fmt: skip
        torch.save(state, Path(tmp) / STATE_FILE)
        if extra_dir is not None:
            extra_dir(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(model, opt, sched) -> Position | None:
    """Load the run's latest checkpoint into ``model``, ``opt`` and ``sched``; its position, or None."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return Position(**state["position"])
