"""Two-tower fine-tuning on Ray Train: the matching loss falls and in-batch retrieval beats chance, the
adversarial game is logged (D's accuracy, the centroid gap), and the saved towers reload without training
code and embed exactly as they did in training."""

import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from ace_ray import tracking
from ace_ray.data import feature_store as fs
from ace_ray.model.presets import load_with_preset
from ace_ray.model.towers import load_towers
from ace_ray.train.finetune import run_finetune
from ace_ray.train.worker import cpu_multiplies_bf16
from tests.conftest import SHOP_FEATURES

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def shop(featurised_shop):
    return featurised_shop[1]


def workload(shop: Path, tmp: Path, preset: str, *extra: str):
    return load_with_preset(None, [
        f"workspace={tmp}", f"data.root={shop}", "data.test_days=1", "data.batches.batch_size=32",
        "data.batches.partitions=4", "model.init=random", "model.size=tiny", "model.layers=2",
        "finetune.train.workers=2", "finetune.train.lr=0.002", "finetune.train.warmup_steps=5",
        "finetune.train.log_every=10", *SHOP_FEATURES, *extra,
    ], preset)  # fmt: skip


def history(w, run_id: str, key: str) -> dict[int, float]:
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(w))
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_finetuning_learns_to_match_and_saves_reloadable_towers(shop, tmp_path):
    """One run (a Ray Train start-up is the suite's dearest resource) with the image loss on: the photo against
    the other products of the positive's category (read from the batch files), beside the main loss."""
    w = workload(shop, tmp_path, "cebert", "finetune.image_loss_weight=0.5", "finetune.image_negatives=same_category",
                 "finetune.train.epochs=5")  # fmt: skip
    res = run_finetune(w)
    main = history(w, res["run_id"], "main")
    steps = sorted(main)
    first, last = np.mean([main[s] for s in steps[:5]]), np.mean([main[s] for s in steps[-5:]])
    assert last < first - 0.5, (first, last)
    acc = history(w, res["run_id"], "inbatch_acc")
    early, late = np.mean([acc[s] for s in steps[:5]]), np.mean([acc[s] for s in steps[-5:]])
    assert late > max(3 / 32, early), (early, late)  # chance is 1/32 in a batch of 32
    run = mlflow.tracking.MlflowClient(tracking.tracking_uri(w)).get_run(res["run_id"])
    assert run.data.params["finetune.preset"] == "cebert" and run.data.tags["stage"] == "finetune"
    bf16 = cpu_multiplies_bf16()  # train.bf16 is on by default
    assert run.data.tags["autocast"] == ("bf16" if bf16 else "float32")
    assert "samples_per_s" in run.data.metrics and "false_negatives" in run.data.metrics
    assert "fn_same_query" in run.data.metrics and "fn_same_product" in run.data.metrics
    # The towers reload from the directory alone and give unit-norm embeddings of the right size.
    towers, info = load_towers(res["model_dir"])
    assert info["preset"] == "cebert" and info["embed_dim"] == 128 and not info["hot_queries"]
    ids = torch.tensor([[101, 2417, 102, 0]])
    q = towers.encode_queries(ids, (ids > 0).long())
    assert q.shape == (1, 128) and torch.allclose(q.norm(dim=-1), torch.ones(1), atol=1e-5)
    # The image loss: at step 1 the image projection is still zero, so it is that of a uniform guess among each
    # pair's candidates: far below the main loss's (every product of the batch), as only the positive's
    # category is left in it. The photo's share of the product vector grows from zero.
    image, share = history(w, res["run_id"], "image"), history(w, res["run_id"], "image_share")
    assert 0 < image[1] < main[1] - 1
    assert share[1] < share[max(share)] and share[max(share)] > 0
    assert info["fusion"] == "apart" and towers.additive  # the default fusion: the photo pooled apart


def _expected_steps(w, total: int) -> tuple[dict[int, float], list[dict[int, float]]]:
    """What a run without the game would see at each optimiser step, computed without training: the schedule's
    learning rate, and each rank's batch fingerprint (the crc32 of the batch ids its plan deals it)."""
    from ace_ray.data.batching import cached_finetune_batches
    from ace_ray.data.plan import stream
    from ace_ray.train.finetune import plan_steps
    from ace_ray.train.worker import optimizer_and_schedule

    opt, sched = optimizer_and_schedule(torch.nn.Linear(1, 1), w.finetune.train, total)
    lr = {}
    for step in range(1, total + 1):  # logged after the step's scheduler step
        opt.step()
        sched.step()
        lr[step] = sched.get_last_lr()[0]
    batch_dir, _ = cached_finetune_batches(w.path(w.data.root), fs.for_workload(w), w.data.held_out_days,
                                           w.data.batches, w.data.text)  # fmt: skip
    plan, _ = plan_steps(w, batch_dir, w.finetune.train.workers)
    data = [{i + 1: float(zlib.crc32(np.asarray([int(b["batch_id"][0])], np.uint64).tobytes()))
             for i, b in enumerate(stream(plan, 0, rank, ["batch_id"])) if i < total}
            for rank in range(w.finetune.train.workers)]  # fmt: skip
    return lr, data


def test_the_adversarial_game_takes_no_encoder_step_and_no_batch(shop, tmp_path):
    """Both ways of playing the game: D's steps come on top of the encoder's. The encoder steps, the
    learning-rate schedule and the batches it sees are those of the same run without the game (computed
    from the schedule and the batch plan, which a run without the game follows: tests/train/test_resume.py).
    D learns at disc_lr throughout, or (disc_lr_schedule=encoder) on the encoder's schedule."""
    common = (
        "finetune.train.max_steps=6",
        "finetune.adversarial.encoder_steps=2",
        "finetune.adversarial.disc_steps=2",
        "finetune.adversarial.disc_lr=0.01",
    )
    schedule = {"alternating": "constant", "grl": "encoder"}
    runs = {}
    for mode in ("alternating", "grl"):
        w = workload(shop, tmp_path / mode, "acebert", f"finetune.adversarial.mode={mode}", *common,
                     f"finetune.adversarial.disc_lr_schedule={schedule[mode]}")  # fmt: skip
        runs[mode] = (w, run_finetune(w))
    lr, data = _expected_steps(runs["grl"][0], 6)
    for mode, (w, res) in runs.items():
        assert res["step"] == 6
        assert history(w, res["run_id"], "lr") == pytest.approx(lr), mode
        for rank, want in enumerate(data):  # the plan's batches, one new batch a step on both workers
            assert history(w, res["run_id"], f"data_r{rank}") == want, (mode, rank)
        disc = history(w, res["run_id"], "disc_steps")
        # alternating: 2 D steps after encoder steps 2, 4 and 6; gradient reversal: one with every step
        assert disc == (
            {s: 2.0 * (s // 2) for s in range(1, 7)}
            if mode == "alternating"
            else {s: float(s) for s in range(1, 7)}
        )
        assert len(history(w, res["run_id"], "d_acc")) == 6
        d_lr = history(w, res["run_id"], "d_lr")  # D's learning rate for its next step
        want = {s: v * 0.01 / 0.002 if mode == "grl" else 0.01 for s, v in lr.items()}
        assert d_lr == pytest.approx(want), mode
    assert lr[6] == 0 and lr[5] > 0  # the encoder's schedule ends at 0: D's with it in the grl run
    assert len(set(data[0].values())) == 6
    _, info = load_towers(runs["alternating"][1]["model_dir"])
    assert info["hot_queries"] and info["split"]["test_days"] == 1


def test_hot_query_dropout_shows_a_share_of_products_as_cold_ones():
    from ace_ray.config import TextConfig, load_workload
    from ace_ray.data import text
    from ace_ray.train.finetune import drop_hot_queries

    cfg = TextConfig()
    hot = text.encode([f"red dress ; dress {i}" for i in range(400)], cfg.max_hot, cfg.tokenizer)
    none = text.encode([""], cfg.max_hot, cfg.tokenizer)  # what a product without train-day clicks gets

    def batch():
        return {k: torch.from_numpy(hot[f].astype(np.int64)) for k, f in
                (("hot_ids", "input_ids"), ("hot_mask", "attention_mask"))}  # fmt: skip

    b = batch()
    torch.manual_seed(0)
    drop_hot_queries(b, 0.25, cfg)
    blank = (b["hot_ids"] == torch.from_numpy(none["input_ids"][0].astype(np.int64))).all(1)
    assert (b["hot_mask"][blank] == torch.from_numpy(none["attention_mask"][0].astype(np.int64))).all()
    assert 0.18 < blank.float().mean() < 0.32
    untouched = batch()
    assert torch.equal(b["hot_ids"][~blank], untouched["hot_ids"][~blank])
    # The same seed blanks the same rows (a resumed run repeats its batches exactly).
    again = batch()
    torch.manual_seed(0)
    drop_hot_queries(again, 0.25, cfg)
    assert torch.equal(again["hot_ids"], b["hot_ids"])
    # A share outside [0, 1] is refused when the workload is loaded, before any worker starts.
    with pytest.raises(ValueError, match="hot_query_dropout"):
        load_workload(None, ["finetune.hot_query_dropout=1.5"])


def test_hot_query_leave_out_shows_a_share_of_products_without_the_pairs_own_query():
    from ace_ray.config import load_workload
    from ace_ray.data import text
    from ace_ray.train.finetune import make_batch

    def workload(*overrides):  # the leave-out alone, without the default dropout of whole hot-query segments
        return load_workload(None, ["model.patches=false", "model.pixels=false", "finetune.hot_query_dropout=0",
                                    *overrides])  # fmt: skip

    cfg = workload().data.text
    queries = [f"red dress {i}" for i in range(400)]
    segments = {"query": (queries, cfg.max_query), "title": (["dress"] * 400, cfg.max_title),
                "hot": ([f"{q} ; dress" for q in queries], cfg.max_hot), "hot_other": (["dress"] * 400, cfg.max_hot)}  # fmt: skip
    # The first 100 pairs' own clicks are the only ones that made their query hot; the rest are repeated.
    raw = {"product_id": [[str(i) for i in range(400)]], "hot_own_clicks": [np.array([1] * 100 + [3] * 300)]}
    for name, (texts, length) in segments.items():
        enc = text.encode(texts, length, cfg.tokenizer)
        raw[f"{name}_ids"], raw[f"{name}_mask"] = [enc["input_ids"]], [enc["attention_mask"]]

    def batch(*overrides):
        torch.manual_seed(0)
        return make_batch(raw, workload(*overrides))

    share = "finetune.hot_query_leave_out="
    b, full, none = batch(share + "0.5"), batch(share + "0"), batch(share + "1")
    assert "hot_other_ids" not in b  # the towers see one hot-query segment
    left = (b["hot_ids"] == none["hot_ids"]).all(1)
    assert 0.4 < left.float().mean() < 0.6
    assert torch.equal(b["hot_ids"][~left], full["hot_ids"][~left])
    assert torch.equal(b["hot_mask"][left], none["hot_mask"][left])
    assert not (full["hot_ids"] == none["hot_ids"]).all(1).any()
    assert torch.equal(batch(share + "0.5")["hot_ids"], b["hot_ids"])  # the same seed, the same rows (resume)
    # No hot queries in the towers: nothing is left out.
    assert torch.equal(batch(share + "1", "finetune.hot_queries=false")["hot_ids"], full["hot_ids"])
    with pytest.raises(ValueError, match="hot_query_leave_out"):
        workload(share + "1.5")
    # Leave-one-out: exactly the one-click pairs lose their query; the share then draws among the others.
    one = "finetune.hot_query_leave_one_out=true"
    exact = (batch(one, share + "0")["hot_ids"] == none["hot_ids"]).all(1)
    assert exact[:100].all() and not exact[100:].any()
    both = (batch(one, share + "0.5")["hot_ids"] == none["hot_ids"]).all(1)
    assert both[:100].all() and 0.4 < both[100:].float().mean() < 0.6


def test_an_image_loss_with_nothing_to_weigh_is_refused_before_any_worker_starts(shop, tmp_path):
    # A weight without image vectors to weigh (the paper's joint fusion) would do nothing.
    with pytest.raises(ValueError, match="image_loss_weight"):
        run_finetune(
            workload(shop, tmp_path, "cebert", "finetune.fusion=joint", "finetune.image_loss_weight=0.5")
        )
    with pytest.raises(ValueError, match="image_negatives"):
        run_finetune(workload(shop, tmp_path, "cebert", "finetune.image_negatives=same_category"))
