"""Where a served model comes from (directory, run id, registered model) and the index/serve commands."""

from __future__ import annotations

import pytest

from ace_ray.serve.index_dir import model_hash


def test_run_id_and_registered_model_resolve_to_the_same_weights(served_model, tmp_path, monkeypatch):
    from ace_ray import tracking
    from ace_ray.serve.models import resolve_model

    w, _, _, model = served_model
    monkeypatch.setenv("ACE_RAY_MODEL_CACHE", str(tmp_path / "cache"))
    with tracking.start_run(w, "finetune") as run:
        tracking.log_artifacts(model, "model")
    assert tracking.register_model(w, run.info.run_id, "shop-model") == 1
    want = model_hash(model)
    local, run_id = resolve_model("models:/shop-model@candidate")
    assert model_hash(local) == want and run_id == run.info.run_id
    local, run_id = resolve_model(run.info.run_id)
    assert model_hash(local) == want and run_id == run.info.run_id
    assert resolve_model(str(model)) == (model.resolve(), "")
    with pytest.raises(FileNotFoundError, match="no such registered model"):
        resolve_model("models:/nobody@candidate")


def test_cli_parses_index_serve_and_register():
    from ace_ray.cli import build_parser

    p = build_parser()
    a = p.parse_args(["index", "--model", "m", "--kind", "ivfpq", "--out", "o"])
    assert (a.model, a.kind, a.out) == ("m", "ivfpq", "o")
    a = p.parse_args(["serve", "--index", "i", "--model", "models:/shop@prod", "--port", "9000"])
    assert (a.serve_model, a.host, a.port) == ("models:/shop@prod", "127.0.0.1", 9000)
    assert p.parse_args(["finetune", "--register", "shop"]).register == "shop"
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "--index", "i", "--run", "r", "--model", "m"])


@pytest.mark.ray
def test_cli_index_command_logs_the_index_to_mlflow(served_model, tmp_path, monkeypatch):
    import mlflow

    from ace_ray import tracking
    from ace_ray.cli import main
    from ace_ray.config import with_overrides
    from ace_ray.serve.app import build
    from ace_ray.serve.index_dir import IndexManifest, find
    from ace_ray.serve.settings import ServiceSettings
    from tests.conftest import SHOP_FEATURES

    w, root, _, model = served_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [f"workspace={w.workspace}", f"data.root={root}", "data.test_days=1", f"tracking.uri={uri}",
            "eval.embed_actors=1", *SHOP_FEATURES]  # fmt: skip
    rc = main(["index", "--model", str(model), "--out", str(tmp_path / "idx"), "--kind", "hnsw",
               "--set", "ef_search=64", "--set", "hot_cache=50", *args])  # fmt: skip
    assert rc == 0
    m = IndexManifest.read(find(tmp_path / "idx"))
    assert m.kind == "hnsw" and m.model_hash == model_hash(model)
    assert m.params["ef_search"] == 64 and m.hot_queries <= 50
    # An index setting that does not exist is refused before any work, naming it.
    assert (
        main(["index", "--model", str(model), "--out", str(tmp_path / "idx2"), "--set", "nprob=3", *args])
        == 2
    )
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.stage = 'index'", output_format="list"
    )
    assert len(runs) == 1 and runs[0].data.metrics["products"] == m.products
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, f"index/{m.version}")}
    assert f"index/{m.version}/manifest.json" in names and f"index/{m.version}/index.faiss" in names
    # `index --run`: the model as a fine-tuning logs it; the index goes into that run, and a service that names
    # no model serves the index's run's (its weights checked against the index).
    monkeypatch.setenv("ACE_RAY_MODEL_CACHE", str(tmp_path / "cache"))
    with tracking.start_run(with_overrides(w, [f"tracking.uri={uri}"]), "finetune") as run:
        tracking.log_artifacts(model, "model")
    assert main(["index", "--run", run.info.run_id, "--out", str(tmp_path / "idx3"), *args]) == 0
    built = find(tmp_path / "idx3")
    assert IndexManifest.read(built).model_run_id == run.info.run_id
    logged = mlflow.MlflowClient().list_artifacts(run.info.run_id, "index")
    assert [a.path for a in logged] == [f"index/{built.name}"]
    build(ServiceSettings(index=str(built), tracking_uri=uri))
