"""Training throughput. ``--stage pretrain`` (the default): pretraining samples/s of one model, batch and data
through (a) a bare PyTorch loop in one process, (b) Ray Train with 1 worker and (c) Ray Train with 2 workers;
prints the ratios and records them. ``--stage finetune``: fine-tuning pairs/s through Ray Train (2 workers,
batches of 64 pairs, MiniLM's first 2 layers: the ``tables_fashion.yaml`` budget) for each preset of
``--presets``, in float32 and in bf16 autocast (``finetune.train.bf16``; on a CPU only where it multiplies bf16).

    python benchmarks/train_throughput.py [--products 1200] [--steps 60] [model.size=small ...]
    python benchmarks/train_throughput.py --stage finetune [--presets acebert twinbert] [--steps 12]

Each Ray Train worker gets 1 CPU and 1 torch thread, as does the bare loop, so (b) / (a) is the cost of Ray
Train and of its workers reading their share of the set (goal: at least 0.9) and (c) / (b) the scaling from
a second worker. Both measure from the first optimiser step on (start-up excluded) and include building the
batches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from machine import record  # noqa: E402

from ace_ray.config import ClickModelConfig, FeaturesConfig, SynthConfig, load_workload  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data.feature_table import for_store  # noqa: E402
from ace_ray.data.features import build_features  # noqa: E402
from ace_ray.data.pretrain_set import build_pretrain_set  # noqa: E402
from ace_ray.data.synth.generate import synthesize  # noqa: E402
from ace_ray.data.validate import validate  # noqa: E402
from ace_ray.model.encoder import build_encoder  # noqa: E402
from ace_ray.model.heads import CEBertPretraining  # noqa: E402
from ace_ray.model.presets import load_with_preset  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402
from ace_ray.train import worker  # noqa: E402
from ace_ray.train.finetune import run_finetune  # noqa: E402
from ace_ray.train.pretrain import make_batch, products_per_batch, run_pretrain, weighted_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.md"


def bare_loop(w, set_path: Path, store: fs.FeatureStore, steps: int) -> float:
    """Samples/s of the same model and batches in a plain loop (data in memory), 1 torch thread."""
    tc = w.pretrain.train
    torch.set_num_threads(1)
    torch.manual_seed(tc.seed)
    enc = build_encoder(w.model, w.data.text.tokenizer, store.manifest.feature_dim, store.manifest.pixel_dim)
    model = CEBertPretraining(enc, enc.bert.config.vocab_size).train()
    opt, sched = worker.optimizer_and_schedule(model, tc, steps)
    df = pd.read_parquet(set_path / "split=train")
    table = for_store(store)
    size = products_per_batch(w)
    samples, t0 = 0, None
    for step in range(steps + 1):
        chunk = df.iloc[(step * size) % (len(df) - size) :][:size]
        raw = {c: chunk[c].to_numpy() for c in chunk.columns}
        raw |= {k: table.gather(raw["feature_row"], k) for k in ("patches", "pixels")}
        batch = make_batch(raw, w, step)
        loss, _ = weighted_loss(model(batch), w, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if t0 is None:  # from the first step on, as in the Ray Train loop
            t0 = time.perf_counter()
        else:
            samples += len(batch["label"])
    return samples / (time.perf_counter() - t0)


def finetune_rates(args) -> None:
    """Fine-tuning pairs/s per preset in float32 and in bf16 autocast, through Ray Train; recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shop"
        base = [f"workspace={tmp}", f"data.root={root}", "data.test_days=1", "data.batches.batch_size=64",
                "data.batches.partitions=8", "model.init=minilm", "model.layers=2", "finetune.train.workers=2",
                f"finetune.train.max_steps={args.steps}", "finetune.train.checkpoint_every=100000",
                "finetune.train.log_every=4", *args.overrides]  # fmt: skip
        ensure_ray(load_workload(None, base).ray)
        synthesize(SynthConfig(products=args.products, days=3, sessions=600), ClickModelConfig(), root)
        validate(root)
        build_features(root, FeaturesConfig())
        rows, fast = [], worker.cpu_multiplies_bf16()
        for preset in args.presets:
            rate = {}
            for bf16 in (False, True):
                w = load_with_preset(None, [*base, f"finetune.train.bf16={str(bf16).lower()}"], preset)
                rate[bf16] = run_finetune(w)["samples_per_s"]
                print(f"{preset}, bf16={bf16}: {rate[bf16]:.1f} pairs/s", flush=True)
            rows.append(
                [preset, f"{rate[False]:.1f}", f"{rate[True]:.1f}", f"{rate[True] / rate[False]:.2f}"]
            )
    if not args.no_record:
        title = (f"fine-tuning throughput (MiniLM, 2 layers, 2 Ray Train workers x 1 CPU, 64 pairs per worker-batch, "
                 f"{args.steps} steps; this CPU {'multiplies' if fast else 'does not multiply'} bf16)")  # fmt: skip
        record(str(RESULTS), title, ["preset", "float32 pairs/s", "bf16 autocast pairs/s", "speed-up"], rows,
               "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]))  # fmt: skip
        print(f"recorded in {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("pretrain", "finetune"), default="pretrain")
    ap.add_argument("--products", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per measurement")
    ap.add_argument("--presets", nargs="+", default=["acebert", "twinbert"], help="--stage finetune: presets")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("overrides", nargs="*", help="workload overrides, e.g. model.size=small")
    args = ap.parse_args()
    if args.stage == "finetune":
        finetune_rates(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shop"
        base = [f"workspace={tmp}", f"data.root={root}", "model.init=random", "model.size=tiny",
                "model.layers=2", "pretrain.train.cpus_per_worker=1", "pretrain.train.torch_threads=1",
                f"pretrain.train.max_steps={args.steps}", "pretrain.train.checkpoint_every=100000",
                "pretrain.train.log_every=20", "pretrain.eval_every=0", "pretrain.max_holdout=8",
                *args.overrides]  # fmt: skip
        w = load_workload(None, base)
        ensure_ray(w.ray)
        synthesize(SynthConfig(products=args.products, days=2, sessions=100), ClickModelConfig(), root)
        validate(root)
        store = fs.FeatureStore(build_features(root, FeaturesConfig())["store"])
        set_path = build_pretrain_set(root, store, w.data.text, w.pretrain.holdout, w.pretrain.train.seed)
        bare = bare_loop(w, set_path, store, args.steps)
        print(f"bare PyTorch loop: {bare:.1f} samples/s")
        rates = {}
        for workers in (1, 2):
            wk = load_workload(None, [*base, f"pretrain.train.workers={workers}"])
            rates[workers] = run_pretrain(wk)["samples_per_s"]
            print(f"Ray Train, {workers} worker(s): {rates[workers]:.1f} samples/s")
    one, two = rates[1] / bare, rates[2] / rates[1]
    print(f"Ray Train 1 worker / bare loop: {one:.2f}; 2 workers / 1 worker: {two:.2f}")
    m = w.model
    if not args.no_record:
        rows = [["bare PyTorch loop, 1 process", f"{bare:.1f}", "1.00"],
                ["Ray Train, 1 worker", f"{rates[1]:.1f}", f"{one:.2f}"],
                ["Ray Train, 2 workers", f"{rates[2]:.1f}", f"{rates[2] / bare:.2f} ({two:.2f} x 1 worker)"]]  # fmt: skip
        title = (f"pretraining throughput ({m.init} {m.size if m.init == 'random' else ''} {m.layers} layers, "
                 f"{w.pretrain.train.batch_size} pairs per worker-batch, {args.steps} steps, 1 thread per worker)")  # fmt: skip
        record(str(RESULTS), title, ["loop", "samples/s", "vs bare"], rows,
               "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]))  # fmt: skip
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
