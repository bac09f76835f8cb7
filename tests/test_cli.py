"""The command line: help everywhere, commands that run for real and record MLflow runs."""

import os

import mlflow
import pytest
import yaml

from ace_ray.cli import main
from ace_ray.data.schema import QUARANTINE_FILE, read_products

HELP = [[], ["synth"], ["import"], ["import", "fashion-products"], ["import", "table"], ["validate"],
        ["features"], ["pretrain"], ["finetune"], ["evaluate"], ["distill"], ["reproduce"], ["quickstart"], ["config"]]  # fmt: skip


@pytest.mark.parametrize("words", HELP, ids=lambda w: " ".join(w) or "top")
def test_every_command_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ace-ray" in out and len(out) > 300


def test_config_shows_effective_workload(capsys):
    assert main(["config", "--workload", "workloads/quickstart.yaml", "data.synth.products=7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["synth"]["products"] == 7 and cfg["name"] == "quickstart"


def test_config_errors_exit_2_naming_the_key(capsys):
    assert main(["config", "data.synth.prodcts=7"]) == 2
    assert "unknown key 'data.synth.prodcts'" in capsys.readouterr().err


def test_presets_apply_beneath_user_overrides(capsys):
    assert main(["config", "--preset", "twinbert", "finetune.hot_queries=true"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (
        cfg["finetune"]["preset"] == "twinbert" and not cfg["model"]["patches"] and not cfg["model"]["pixels"]
    )
    assert cfg["finetune"]["hot_queries"]  # the user's override wins over the preset's
    assert main(["config", "finetune.preset=fashionbert"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert not cfg["data"]["features"]["roi"] and cfg["pretrain"]["adaptive"] and not cfg["model"]["pixels"]
    assert main(["config", "--preset", "acebert"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["finetune"]["adversarial"]["mode"] == "alternating"
    assert main(["config", "--preset", "acebrt"]) == 2
    assert "unknown preset 'acebrt'" in capsys.readouterr().err


def _runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


@pytest.mark.ray
def test_synth_then_validate_record_mlflow_runs(tmp_path, ray_session, capsys):
    out = tmp_path / "shop"
    args = ["--out", str(out), "--products", "30", "--days", "2", "--sessions", "10", "--seed", "5"]
    assert main(["synth", *args, f"workspace={tmp_path}", "data.synth.shard_size=10"]) == 0
    assert len(read_products(out)) == 30
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = _runs()
    assert run.data.params["data.synth.products"] == "30"
    assert run.data.params["data.synth.seed"] == "5"
    assert run.data.metrics["products"] == 30 and run.data.metrics["products_per_s"] > 0
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"workload.yaml", "catalogue.json"} <= arts
    assert run.info.run_id in capsys.readouterr().out  # the run id is printed

    assert main(["validate", str(out), "--strict"]) == 0
    (read_products(out).assign(title="")).to_parquet(out / "products.parquet")
    assert main(["validate", str(out), "--strict"]) == 1
    text = capsys.readouterr().out
    assert "quarantined      30" in text and QUARANTINE_FILE in text
    validate_run = [r for r in _runs() if r.info.run_name == "validate"][0]
    assert validate_run.data.metrics["products_quarantined"] == 30


def test_missing_catalogue_is_a_clear_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "products.parquet: file not found" in capsys.readouterr().err


@pytest.mark.ray
def test_features_command_builds_store_and_hot_queries(tmp_path, ray_session, capsys):
    out = tmp_path / "shop"
    assert main(["synth", "--out", str(out), "--products", "20", "--days", "3", "--sessions", "30",
                 f"workspace={tmp_path}", "data.synth.shard_size=10"]) == 0  # fmt: skip
    assert main(["validate", str(out)]) == 0
    small = ["data.features.cnn_input=64", "data.features.grid=2", "data.test_days=1"]
    assert main(["features", str(out), f"workspace={tmp_path}", *small]) == 0
    text = capsys.readouterr().out
    assert "20 of 20 products featurised, 0 quarantined" in text
    assert (out / "hot_queries").is_dir()
    run = [r for r in _runs() if r.info.run_name == "features"][0]
    assert run.data.metrics["featurised"] == 20 and run.data.metrics["images_per_s"] > 0
    assert run.data.params["data.features.grid"] == "2"
