"""The command line: help everywhere, commands that run for real and record MLflow runs."""

import os
from pathlib import Path

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


def test_quickstart_without_a_workload_is_the_small_job(tmp_path, monkeypatch, capsys):
    from ace_ray.cli import _workload, parse

    small = _workload(parse(["quickstart", "data.synth.seed=3"]))
    assert small.name == "quickstart" and small.data.synth.products == 2000 and small.data.synth.seed == 3
    # Outside the checkout there is no quickstart workload: that is said, the defaults are not run.
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart"]) == 2
    assert "no --workload and no workloads/quickstart.yaml here" in capsys.readouterr().err


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


def test_a_workload_files_keys_win_over_its_own_preset(tmp_path, capsys):
    from ace_ray.config import dump_config, with_overrides
    from ace_ray.model.presets import load_with_preset

    # A sweep's best.yaml is a whole workload naming its preset: the game it found must survive loading it.
    best = tmp_path / "best.yaml"
    best.write_text(
        dump_config(with_overrides(load_with_preset(None, []), ["finetune.adversarial.mode=grl"]))
    )
    assert main(["config", "--workload", str(best)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["finetune"]["adversarial"]["mode"] == "grl"
    mine = tmp_path / "mine.yaml"
    mine.write_text("finetune: {preset: acebert}\nmodel: {pixels: false}\n")
    assert main(["config", "--workload", str(mine)]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert not cfg["model"]["pixels"] and cfg["model"]["patches"]  # the file's key; the preset's elsewhere
    # Another preset chosen on the command line wins over the file; the command line's keys over both.
    assert (
        main(["config", "--workload", str(best), "finetune.preset=twinbert", "finetune.hot_queries=true"])
        == 0
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert not cfg["model"]["patches"] and cfg["finetune"]["adversarial"]["mode"] == "none"
    assert cfg["finetune"]["hot_queries"]


def _runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


@pytest.mark.ray
def test_synth_then_validate_record_mlflow_runs(tmp_path, ray_session, capsys):
    out = tmp_path / "shop"
    args = ["--out", str(out), "--products", "30", "--days", "2", "--sessions", "10", "--seed", "5"]
    # A table title with characters MLflow refuses in a param name (parentheses) is logged under a safe name.
    tables = 'reproduce.tables={"Game (lambda 1.0)": [acebert]}'
    assert main(["synth", *args, f"workspace={tmp_path}", "data.synth.shard_size=10", tables]) == 0
    assert len(read_products(out)) == 30
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = _runs()
    assert run.data.params["data.synth.products"] == "30"
    assert run.data.params["reproduce.tables.Game _lambda 1.0_"] == "['acebert']"
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


# Placeholders of the README's command lines, and values to parse them with.
_PLACEHOLDERS = {"N": "2", "RUN": "finetune-acebert-x", "RUN_ID": "0123abcd", "DIR": "some/dir",
                 "PRETRAINED_MODEL_DIR": "runs/p/checkpoint_000001/model", "REPORT_DIR": "reports/r",
                 "W": "workloads/quickstart.yaml"}  # fmt: skip


def _readme_commands() -> list[str]:
    """The ``ace-ray ...`` lines of the README's Commands block, continuations joined, comments dropped."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [
        c.split("#")[0].strip() for c in block.replace("\\\n", " ").splitlines() if c.startswith("ace-ray ")
    ]


def _variants(line: str) -> list[list[str]]:
    """The command without its optional [...] parts, and with all of them (first of any a|b choice)."""
    minimal, full, depth = [], [], 0
    for ch in line:
        depth += ch == "["
        if depth == 0:
            minimal.append(ch)
        if ch not in "[]" or depth > 1:
            full.append(ch)
        depth -= ch == "]"
    out = []
    for text in ("".join(minimal), "".join(full)):
        words = [w for w in text.split(" | ")[0].split() if w != "..."]
        words = [_PLACEHOLDERS.get(w, w.split("|")[0]) for w in words]
        out.append(words[1:])
    return out


@pytest.mark.parametrize("line", _readme_commands(), ids=lambda s: " ".join(s.split()[:3]))
def test_every_readme_command_parses_into_a_valid_workload(line):
    from ace_ray.cli import _overrides, build_parser
    from ace_ray.model.presets import load_with_preset

    for argv in _variants(line):
        args = build_parser().parse_args(argv)
        load_with_preset(args.workload, _overrides(args), getattr(args, "preset", None))


def test_flag_shorthands_belong_to_their_command(tmp_path, monkeypatch):
    from ace_ray.cli import _absolute_paths, _overrides, build_parser, parse
    from ace_ray.config import load_workload

    monkeypatch.chdir(tmp_path)
    # `import table --products` is a file, `synth --products` a count: one global table read the file
    # name as an integer.
    args = build_parser().parse_args(["import", "table", "--products", "my.csv", "--images", "img", "--out",
                                      "out", "--id-col", "a", "--title-col", "b", "--category-col", "c",
                                      "--image-col", "d", "--seed", "4"])  # fmt: skip
    _absolute_paths(args)
    assert args.products == str(tmp_path / "my.csv") and args.images == str(tmp_path / "img")
    assert _overrides(args) == [f"data.root={tmp_path / 'out'}", "data.synth.seed=4"]
    args = build_parser().parse_args(["synth", "--products", "12", "--out", "shop", "data.synth.products=13"])
    assert _overrides(args) == [
        f"data.root={tmp_path / 'shop'}",
        "data.synth.products=12",
        "data.synth.products=13",
    ]
    # A training run's --resume is a run name, not a path, and not reproduce.resume.
    args = build_parser().parse_args(["finetune", "--resume", "finetune-acebert-1", "--workers", "1"])
    assert args.resume == "finetune-acebert-1" and _overrides(args) == ["finetune.train.workers=1"]
    args = build_parser().parse_args(["reproduce", "--resume", "reports/r"])
    assert _overrides(args) == [f"reproduce.resume={tmp_path / 'reports' / 'r'}"]
    # --reuse is repeatable, each a path, and leaves the overrides after it alone.
    args = build_parser().parse_args(
        ["reproduce", "--reuse", "reports/a b", "--reuse", "/x", "reproduce.seeds=[1]"]
    )
    (reuse,) = _overrides(args)[:1]
    assert load_workload(None, [reuse]).reproduce.reuse == [str(tmp_path / "reports" / "a b"), "/x"]
    assert args.overrides == ["reproduce.seeds=[1]"]
    args = build_parser().parse_args(["features", "shop", "--whole-image"])
    assert _overrides(args) == [f"data.root={tmp_path / 'shop'}", "data.features.roi=False"]
    # Overrides may follow a flag that follows a positional argument.
    args = parse(["features", "shop", "--workload", "w.yaml", "data.test_days=1", "data.features.grid=2"])
    assert args.overrides == ["data.test_days=1", "data.features.grid=2"] and args.workload == "w.yaml"
    assert args.argv == [
        "features",
        "shop",
        "--workload",
        "w.yaml",
        "data.test_days=1",
        "data.features.grid=2",
    ]
    with pytest.raises(SystemExit):
        parse(["features", "shop", "--workload", "w.yaml", "stray"])


@pytest.mark.ray
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_resuming_a_run_that_does_not_exist_is_an_error(command, tmp_path, ray_session, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / f"{command}-20260101-000000-abcd").mkdir(parents=True)
    assert main([command, "--resume", "no-such-run", f"workspace={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "--resume no-such-run: no such run in" in err and f"{command}-20260101-000000-abcd" in err
    assert not (tmp_path / "no-such-run").exists() and not list(tmp_path.glob("runs/no-such-run*"))
    # A run that stopped before its first checkpoint has nothing to resume from.
    assert main([command, "--resume", f"{command}-20260101-000000-abcd", f"workspace={tmp_path}"]) == 2
    assert "before its first checkpoint" in capsys.readouterr().err
