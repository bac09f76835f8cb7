"""What every training worker needs: threads and device, the optimiser and its warm-up schedule,
throughput/ETA progress lines and rank-0 MLflow logging (the loop itself is ``ace_ray.train.loop``)."""

from __future__ import annotations

import contextlib
import functools
import math
import time

import torch

from ace_ray.config import TrainConfig


def start(config: dict, section: str):
    """What every training worker does first: its workload, its train section (``pretrain``/``finetune``),
    rank and world size, threads, device and the feature manifest; and one seed for the initial weights,
    so every rank starts identical."""
    import ray.train

    from ace_ray.config import Workload, from_dict
    from ace_ray.data.feature_store import FeatureManifest

    w = from_dict(Workload, config["workload"])
    tc = getattr(w, section).train
    ctx = ray.train.get_context()
    set_threads(tc)
    torch.manual_seed(tc.seed)
    manifest = FeatureManifest(**config["manifest"])
    return w, tc, ctx.get_world_rank(), ctx.get_world_size(), device_for(config["use_gpu"]), manifest


def device_for(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def set_threads(cfg: TrainConfig) -> None:
    """Fractional-CPU Ray workers get OMP_NUM_THREADS=1: set torch's threads from the config instead."""
    torch.set_num_threads(cfg.torch_threads or max(1, math.ceil(cfg.cpus_per_worker)))


IMAGE_PARAMS = ("patch_proj", "pixel_proj", "image_proj")  # the layers that read the photo


def optimizer_and_schedule(model: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and norms) with linear warm-up then linear decay to 0 at ``total_steps``;
    the layers that read the photo (``IMAGE_PARAMS``) at ``cfg.image_lr_scale`` times the learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = not (p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower())
            groups.setdefault((decay, any(k in name for k in IMAGE_PARAMS)), []).append(p)
    opt = torch.optim.AdamW([{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                              "lr": cfg.lr * (cfg.image_lr_scale if image else 1.0)}
                             for (decay, image), params in sorted(groups.items())], lr=cfg.lr)  # fmt: skip
    return opt, linear_schedule(opt, cfg.warmup_steps, total_steps)


def linear_schedule(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps`` then linear decay to 0 at ``total_steps`` (one ``step()`` a step)."""
    warmup = min(warmup_steps, max(1, total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def no_sync(model: torch.nn.Module, sync: bool):
    """DDP's no_sync for gradient accumulation micro-steps (a no-op for a single worker)."""
    return contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


@functools.lru_cache(maxsize=1)
def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16
    and autocast would slow training down."""
    checks = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(check() for check in checks if check is not None)


def uses_bf16(device: torch.device, bf16: bool) -> bool:
    """Whether training autocasts to bf16 (``train.bf16``): on a GPU, and on a CPU that multiplies bf16."""
    return bf16 and (device.type == "cuda" or (device.type == "cpu" and cpu_multiplies_bf16()))


def autocast(device: torch.device, bf16: bool):
    """The forward pass's autocast: bf16 where ``uses_bf16``, else none (float32)."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def suit_attention(model: torch.nn.Module, device: torch.device, bf16: bool) -> None:
    """On a CPU in bf16, switch the model's HF transformers to their eager attention: PyTorch's CPU
    flash-attention (what ``sdpa`` picks) is slow backwards in bf16; eager was 1.4x faster for the acebert
    fine-tuning step here (the profile in ``benchmarks/results/train_throughput.md``). Same maths, and in
    float32 the two ran at the same speed."""
    if device.type != "cpu" or not uses_bf16(device, bf16):
        return
    for module in model.modules():
        if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
            module.set_attn_implementation("eager")


def fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Meter:
    """Running means of step metrics plus samples/s and ETA over the window since the last line."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.t0, self.start = total_steps, time.perf_counter(), start_step
        self.window_t, self.window_samples = time.perf_counter(), 0
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, metrics: dict[str, float], samples: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1
        self.window_samples += samples

    def flush(self) -> dict[str, float]:
        """Means since the last flush, with samples_per_s."""
        now = time.perf_counter()
        out = {k: v / max(1, self.n) for k, v in self.sums.items()}
        out["samples_per_s"] = self.window_samples / max(1e-9, now - self.window_t)
        self.sums, self.n, self.window_t, self.window_samples = {}, 0, now, 0
        return out

    def eta(self, step: int) -> str:
        done = step - self.start
        rate = done / max(1e-9, time.perf_counter() - self.t0)
        return fmt_eta((self.total - step) / rate) if rate > 0 else "?"


def progress_line(tag: str, pos, total: int, m: dict[str, float], keys, meter: Meter) -> str:
    """``[tag] step 40/200 epoch 0 | loss 1.234 ... | 152.3 samples/s | ETA 1m05s``."""
    values = " ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
    return (f"[{tag}] step {pos.step}/{total} epoch {pos.epoch} | {values} | "
            f"{m['samples_per_s']:.1f} samples/s | ETA {meter.eta(pos.step)}")  # fmt: skip


class RunLog:
    """MLflow logging from rank 0 through a client (no global active run inside a Ray worker)."""

    def __init__(self, uri: str | None, run_id: str | None, enabled: bool):
        self.enabled = enabled and bool(uri and run_id)
        if self.enabled:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(uri), run_id

    def metrics(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(prefix + k, float(v), ts, step) for k, v in values.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def tag(self, key: str, value: str) -> None:
        """Set tag ``key`` of the run (rank 0 only)."""
        if self.enabled:
            self.client.set_tag(self.run_id, key, value)

    def last_step(self, key: str) -> int:
        """The highest step logged for ``key`` (-1 if none): how far a failed attempt got."""
        if not self.enabled:
            return -1
        hist = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in hist), default=-1)
