"""The evaluation job end to end on a small featurised shop: the Ray Data product embeddings equal the
towers run directly, the reported metrics equal a naive recomputation from those embeddings, the baselines
are there (BM25 far above chance), and the report, map and MLflow run are written."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from ace_ray import jobs, tracking
from ace_ray.config import EvalConfig, with_overrides
from ace_ray.data.hot_queries import read_hot_queries
from ace_ray.eval.data import load_eval_data
from ace_ray.eval.embed import TowerRetriever, product_inputs
from ace_ray.eval.evaluate import run_evaluation, summary_table
from ace_ray.eval.metrics import cold_gauc
from tests.conftest import SHOP_FEATURES, random_towers

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def setup(featurised_shop, tmp_path_factory):
    w, root, store = featurised_shop
    return (w, root, store, *random_towers(w, store, tmp_path_factory.mktemp("towers") / "model"))


def test_ray_data_embeddings_equal_the_towers_run_directly(setup):
    w, root, store, towers, model_dir = setup
    data = load_eval_data(root, store, 1)
    model = TowerRetriever(model_dir, store, root, EvalConfig(batch_size=16, embed_in_driver_below=0), 1)
    model.fit(data.products)
    in_driver = TowerRetriever(model_dir, store, root, EvalConfig(batch_size=16), 1)
    in_driver.fit(data.products)  # a small catalogue: embedded in the driver, the same embeddings
    np.testing.assert_allclose(in_driver.product_embeddings, model.product_embeddings, atol=1e-5)
    rows = store.read(columns=["patch_features", "pixels"]).merge(data.products[["product_id", "title"]])
    rows = rows.head(20).assign(hot_queries=[[]] * 20)
    hot = read_hot_queries(root, 1).set_index("product_id")["hot_queries"]
    rows["hot_queries"] = [list(hot.get(p, [])) for p in rows["product_id"]]
    with torch.inference_mode():
        direct = towers.encode_products(product_inputs(rows, store.manifest, w.data.text.__dict__)).numpy()
    idx = pd.Series(np.arange(len(data.products)), index=data.products["product_id"])[rows["product_id"]]
    np.testing.assert_allclose(model.product_embeddings[idx.to_numpy()], direct, atol=1e-5)


def _naive_recall(q, p, targets, k):
    out = []
    for i, t in enumerate(targets):
        scores = p @ q[i]
        top = set(np.argsort(-scores, kind="stable")[:k].tolist())
        out.append(len(top & set(t.tolist())) / len(t))
    return float(np.mean(out))


def test_metrics_equal_a_naive_recomputation_and_the_report_is_written(setup, tmp_path):
    w, root, store, towers, model_dir = setup
    cfg = EvalConfig(ks=[10, 50, 100], baselines=["random", "bm25"], batch_size=32, map_points=300)
    res = run_evaluation(model_dir, root, store, 1, cfg, tmp_path / "eval", name="acebert")
    data = load_eval_data(root, store, 1)
    model = TowerRetriever(model_dir, store, root, cfg, 1)
    model.fit(data.products)
    q = model.embed_queries(data.queries)
    for k in (10, 100):
        assert res["acebert"][f"recall@{k}"] == pytest.approx(
            _naive_recall(q, model.product_embeddings, data.targets, k), abs=1e-6
        )
    # Cold targets ranked among the cold products alone: a naive recomputation, and never below the recall
    # over the whole catalogue (fewer competitors).
    cold_q, cold_t = data.cold_targets()
    pool = np.flatnonzero(data.cold)
    assert len(cold_q) > 5 and 10 < len(pool) < len(data.products)
    naive = _naive_recall(
        q[cold_q], model.product_embeddings[pool], [np.searchsorted(pool, t) for t in cold_t], 10
    )
    assert res["acebert"]["cold_among_cold_recall@10"] == pytest.approx(naive, abs=1e-6)
    for m in ("acebert", "bm25", "random"):
        assert res[m]["cold_among_cold_recall@10"] >= res[m]["cold_recall@10"]
    # The GAUC of the clicks on cold products, from the embeddings: the wiring of impressions to products.
    s = data.sessions
    qs = list(dict.fromkeys(s["query"]))
    qe = dict(zip(qs, model.embed_queries(qs), strict=True))
    scores = np.einsum(
        "ij,ij->i", np.stack([qe[x] for x in s["query"]]), model.product_embeddings[s["product_idx"]]
    )
    want = cold_gauc(s["session_id"], s["clicked"], scores, data.cold[s["product_idx"].to_numpy()])
    assert 0 < want["cold_gauc"] < 1 and 0 < want["cold_among_cold_gauc"] < 1
    assert res["acebert"]["cold_gauc"] == pytest.approx(want["cold_gauc"], abs=1e-4)
    assert res["acebert"]["cold_among_cold_gauc"] == pytest.approx(want["cold_among_cold_gauc"], abs=1e-4)
    # The ANN index is compared with exact search; on a few hundred products HNSW finds nearly everything.
    assert res["acebert"]["ann_overlap_with_exact"] > 0.9 and res["acebert"]["ann_recall@100"] > 0
    assert res["bm25"]["recall@100"] > res["random"]["recall@100"] + 0.2
    assert 0.3 < res["random"]["gauc"] < 0.7
    text = (tmp_path / "eval" / "report.md").read_text()
    for heading in ("Retrieval (exact search)", "ANN index", "Cold products", "query band", "query category"):
        assert heading in text
    assert "| cold_gauc |" in text and "| cold_among_cold_gauc |" in text
    assert (tmp_path / "eval" / "embedding_map.png").stat().st_size > 10_000
    header = summary_table(res).splitlines()[0]  # what `ace-ray evaluate` and the quickstart print
    assert "| recall@100 |" in header and "| cold_recall@100 |" in header and "| ann_recall@100 |" in header
    assert res["_counts"]["test_queries"] == len(data.queries) > 20


def test_no_model_and_no_baselines_reports_the_data_alone(setup, tmp_path):
    # reproduce's baseline pass with eval.baselines=[]: once crashed after every fine-tuning had run.
    w, root, store, towers, model_dir = setup
    res = run_evaluation(None, root, store, 1, EvalConfig(baselines=[]), tmp_path / "eval")
    assert set(res) == {"_counts"} and res["_counts"]["test_queries"] > 20
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "test_queries" in text and "Retrieval" not in text


def test_evaluate_command_reads_the_model_of_an_mlflow_run(setup, tmp_path):
    w, root, store, towers, model_dir = setup
    # The workload names another preset: the results are named for the one the model was trained with.
    w = with_overrides(w, [f"workspace={tmp_path}", "eval.baselines=[random]", "finetune.preset=cebert"])
    with tracking.start_run(w, "finetune-acebert") as run:
        tracking.log_artifacts(model_dir, "model")
    res = jobs.evaluate(w, run_id=run.info.run_id)
    assert set(res) >= {"acebert", "random"} and "cebert" not in res
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(w))
    evals = client.search_runs([run.info.experiment_id], "tags.stage = 'evaluate'")
    assert evals and "acebert/recall_at_100" in evals[0].data.metrics
    with pytest.raises(FileNotFoundError, match="no model artefact"):
        jobs.evaluate(w, run_id="0" * 32)


def test_a_model_trained_on_another_split_is_refused(setup, tmp_path, capsys):
    """A model fine-tuned with 1 test day learnt from clicks that, with 2 test days, are test clicks."""
    import json
    import shutil

    from ace_ray.cli import main
    from ace_ray.data.clicks import train_split

    w, root, store, towers, model_dir = setup
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    info = json.loads((other / "ace_ray.json").read_text())
    (other / "ace_ray.json").write_text(json.dumps(info | {"split": train_split(root, 1)}))
    args = ["evaluate", "--model", str(other), f"workspace={tmp_path}", f"data.root={root}", "data.test_days=2",
            "eval.baselines=[random]", *SHOP_FEATURES]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trained on clicks before" in err and "use data.test_days=1" in err
