"""The fine-tuning step alone, on a CPU or a GPU: pairs/s of one process running the towers' forward, the
objective (with D's steps where the preset plays the game), backward, clipping and the optimiser step, in
float32 and in bf16 autocast (as ``finetune.train.bf16`` does), for each preset and batch size. No Ray, no
data pipeline: the batches are random tensors of the fashion import's shapes and stored types (16-token
queries of 10 words, 32-token titles of 20, 48 hot-query tokens, 16 float16 RoI features of 1280, 49 uint8
pixel patches of 32x32x3), and the BERT is MiniLM-L6's shape with random weights (the speed of a step does
not depend on the weights' values), so it runs where neither the packaged weights nor Ray are installed,
e.g. a bare GPU machine:

    python benchmarks/step_throughput.py [--presets acebert twinbert] [--batches 64 512] [--steps 10]
        [--device auto|cpu|cuda] [--threads N] [--workload workloads/tables_fashion.yaml] [key=value ...]

What it says: how far the step itself can go on this device (``train_throughput.py --stage finetune``
measures the whole Ray Train loop on the CPU). Prints the figures and appends them to
benchmarks/results/train_throughput.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the package, where it is not installed

import torch  # noqa: E402
from machine import record  # noqa: E402

from ace_ray.model.encoder import SEGMENTS, CEBert  # noqa: E402
from ace_ray.model.objective import Objective, false_negative_mask  # noqa: E402
from ace_ray.model.presets import load_with_preset  # noqa: E402
from ace_ray.model.towers import DomainClassifier, TwoTower  # noqa: E402
from ace_ray.train import worker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.md"
# all-MiniLM-L6-v2's shape (its config.json); model.layers keeps the first N layers, as in training.
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536,
          "max_position_embeddings": 512}  # fmt: skip
CLS, SEP = 101, 102
SHAPES = {"query": (16, 10), "title": (32, 20), "hot": (48, 48), "patches": (16, 1280), "pixels": (49, 3072)}


def towers_for(w, device: torch.device) -> TwoTower:
    """The preset's towers around a random BERT of MiniLM's shape (no weights or tokenizer needed)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(**MINILM, num_hidden_layers=w.model.layers or 6, type_vocab_size=SEGMENTS,
                     hidden_dropout_prob=w.model.dropout, attention_probs_dropout_prob=w.model.dropout)  # fmt: skip
    enc = CEBert(BertModel(cfg), w.model, SHAPES["patches"][1], SHAPES["pixels"][1], SEP)
    ft = w.finetune
    return TwoTower(enc, ft.embed_dim, ft.pooling, ft.hot_queries, ft.fusion, ft.hot_queries_apart).to(device)


def random_batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of ``n`` pairs of the fashion import's shapes: [CLS] words [SEP], then padding."""
    batch = {}
    for seg in ("query", "title", "hot"):
        length, words = SHAPES[seg]
        ids = torch.zeros(n, length, dtype=torch.long)
        ids[:, 1 : words - 1] = torch.randint(1000, MINILM["vocab_size"], (n, words - 2), generator=gen)
        ids[:, 0], ids[:, words - 1] = CLS, SEP
        batch[f"{seg}_ids"], batch[f"{seg}_mask"] = ids, (torch.arange(length) < words).long().expand(n, -1)
    # as the feature store keeps them, and as finetune.make_batch passes them on
    batch["patches"] = torch.randn(n, *SHAPES["patches"], generator=gen).half()
    batch["pixels"] = torch.randint(0, 256, (n, *SHAPES["pixels"]), generator=gen, dtype=torch.uint8)
    return batch


def pairs_per_s(w, batch_size: int, steps: int, warmup: int, device: torch.device, bf16: bool,
                profile: bool = False) -> float:  # fmt: skip
    """Pairs/s of ``steps`` fine-tuning steps after ``warmup`` untimed ones (one optimiser step each); with
    ``profile``, the timed steps run under torch's profiler and its table of the costliest operators is
    printed (the rate is then the profiled one)."""
    torch.manual_seed(0)
    model = towers_for(w, device).train()
    worker.suit_attention(model, device, bf16)
    adv, objective = w.finetune.adversarial, Objective.from_config(w.finetune)
    disc = DomainClassifier(w.finetune.embed_dim, adv.disc_hidden).to(device) if adv.mode != "none" else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=adv.disc_lr) if disc else None
    tc = w.finetune.train
    opt, sched = worker.optimizer_and_schedule(model, tc, warmup + steps)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(batch_size, gen) for _ in range(2)]
    mask, _ = false_negative_mask(list(range(batch_size)), batches[0]["query_ids"])
    mask = mask.to(device) if mask is not None else None
    keep = {"patches"} if w.model.patches else set()
    keep |= {"pixels"} if w.model.pixels else set()
    t0, prof = None, None
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            if profile:
                kinds = [torch.profiler.ProfilerActivity.CPU]
                kinds += [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
                prof = torch.profiler.profile(activities=kinds)
                prof.start()
            t0 = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in batches[step % 2].items()
             if k.endswith(("_ids", "_mask")) or k in keep}  # fmt: skip
        with worker.autocast(device, bf16):
            q, a = model(b)
            loss, _ = objective.encoder_loss(q, a, disc, mask, model.image_emb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if disc is not None and objective.steps_disc_with_encoder():  # D learnt from this step's backward
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        elif disc is not None and objective.disc_due(step):  # D's own steps (as FinetuneTask.after_step)
            for _ in range(objective.disc_steps):
                objective.disc_loss(q, a, disc).backward()
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = batch_size * steps / (time.perf_counter() - t0)
    if prof is not None:
        prof.stop()
        by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=by, row_limit=20, max_name_column_width=60), flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["acebert", "twinbert"])
    ap.add_argument("--batches", type=int, nargs="+", default=[64], help="pairs per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--workload",
        default=str(Path(__file__).resolve().parent.parent / "workloads" / "tables_fashion.yaml"),
    )
    ap.add_argument("--no-record", action="store_true", help="print only")
    ap.add_argument("--profile", action="store_true",
                    help="print torch's profile of the first preset's first batch size in bf16 (where measured) and stop")  # fmt: skip
    ap.add_argument(
        "overrides", nargs="*", help="key=value workload overrides (model.layers=2, finetune.fusion=apart)"
    )
    args = ap.parse_args()
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        w = load_with_preset(args.workload, args.overrides, args.presets[0])
        bf16 = worker.uses_bf16(device, True)
        pairs_per_s(w, args.batches[0], args.steps, args.warmup, device, bf16, profile=True)
        return
    rows = []
    for preset in args.presets:
        w = load_with_preset(args.workload, args.overrides, preset)
        for n in args.batches:
            rates = []
            for bf16 in (False, True):
                if bf16 and not worker.uses_bf16(device, True):
                    rates.append(float("nan"))  # oneDNN would emulate bf16 on this CPU: slower, not measured
                    continue
                rates.append(pairs_per_s(w, n, args.steps, args.warmup, device, bf16))
                print(f"[step_throughput] {device.type}: {preset}, {n} pairs, {'bf16' if bf16 else 'float32'}: "
                      f"{rates[-1]:.1f} pairs/s ({1000 * n / rates[-1]:.0f} ms a step)", flush=True)  # fmt: skip
            rows.append([preset, n, f"{rates[0]:.1f}", f"{rates[1]:.1f}", "" if math.isnan(rates[1]) else f"{1000 * n / rates[1]:.0f}", f"{rates[1] / rates[0]:.2f}"])  # fmt: skip
    if not args.no_record:
        w = load_with_preset(args.workload, args.overrides, args.presets[0])
        where = (
            torch.cuda.get_device_name()
            if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads"
        )
        record(str(RESULTS), f"fine-tuning step alone, no Ray ({where}; random MiniLM-shaped BERT, {w.model.layers or 'all 6'} "
               f"layers, fusion {w.finetune.fusion}, {args.steps} timed steps)",
               ["preset", "pairs a step", "float32 pairs/s", "bf16 autocast pairs/s", "bf16 ms a step", "speed-up"],
               rows, "python benchmarks/step_throughput.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
