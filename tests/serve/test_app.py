"""The application builder as a Serve config file reaches it: ``serve run serve_apps/search.yaml``."""

from pathlib import Path

import pytest
import yaml

from ace_ray.serve.app import build
from ace_ray.serve.settings import ServiceSettings, SettingsError, from_mapping

SHIPPED = Path(__file__).parents[2] / "serve_apps" / "search.yaml"


def test_the_shipped_config_builds_the_application_from_settings_that_all_exist():
    (app,) = yaml.safe_load(SHIPPED.read_text())["applications"]
    assert app["import_path"] == "ace_ray.serve.app:build"
    settings = from_mapping(ServiceSettings, app["args"])  # unknown or out-of-range keys would raise here
    assert settings.index == "runs/indexes" and app["name"] == "search" and app["route_prefix"] == "/"


@pytest.mark.parametrize("keys", [["name"], ["route_prefix"], ["name", "route_prefix"]])
def test_an_applications_name_or_route_under_its_args_is_refused_not_ignored(keys):
    with pytest.raises(SettingsError, match=", ".join(keys) + ": set on the application in the Serve config"):
        build({"index": "runs/indexes", **{k: "x" for k in keys}})


@pytest.mark.ray
def test_a_distilled_query_tower_answers_the_queries_over_the_teachers_index(service, served_model, built_index,
                                                                             tmp_path):  # fmt: skip
    """``query_model`` (``ace-ray serve --query-model``): the student encodes the queries that miss the cache,
    the products stay the teacher's; a student of another embedding size is refused before anything deploys."""
    import dataclasses

    import pandas as pd
    import requests
    from ray import serve

    from ace_ray.eval import index as faiss_index
    from ace_ray.model.towers import encode_query_texts, load_towers, save_towers
    from ace_ray.serve import index_dir
    from ace_ray.train.distill import student_of

    settings, url = service
    _, _, _, model = served_model
    teacher, info = load_towers(model)
    meta = {k: info[k] for k in ("feature_manifest", "preset", "text")} | {"query_layers": 1}
    save_towers(student_of(teacher, 1), tmp_path / "student", info["text"]["tokenizer"], meta)
    query = "zzzz unseen query text"
    index = faiss_index.load_index(built_index / index_dir.INDEX_FILE)
    products = pd.read_parquet(built_index / index_dir.PRODUCTS_FILE)["product_id"].to_numpy()

    def top5(towers) -> list:
        return list(
            products[faiss_index.search(index, encode_query_texts(towers, [query], info["text"]), 5)[1][0]]
        )

    ids = top5(load_towers(tmp_path / "student")[0])
    assert ids != top5(teacher)  # so the answer says which tower encoded the query
    distilled = dataclasses.replace(settings, query_model=str(tmp_path / "student"))
    try:
        serve.run(build(distilled), name=settings.name, route_prefix=settings.route_prefix)
        health = requests.get(f"{url}/healthz", timeout=60).json()["model"]
        assert health["query_layers"] == 1 and health["query_model"] == str(tmp_path / "student")
        body = requests.post(f"{url}/search", json={"query": query, "k": 5}, timeout=60).json()
        assert body["cached"] is False and [r["product_id"] for r in body["results"]] == list(ids)
    finally:
        serve.run(
            build(settings), name=settings.name, route_prefix=settings.route_prefix
        )  # back, for the others
    narrow = student_of(teacher, 1)
    narrow.proj = type(narrow.proj)(narrow.proj.in_features, 8)
    save_towers(narrow, tmp_path / "narrow", info["text"]["tokenizer"], meta)
    with pytest.raises(SettingsError, match="embeds into 8 dimensions"):
        build(dataclasses.replace(settings, query_model=str(tmp_path / "narrow")))
