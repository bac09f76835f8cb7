"""``ace-ray reproduce`` end to end on a small shop (real Ray Train runs, MLflow, evaluation), then resumed
in its directory with one more table: only the missing row trains. The ledger's failure modes are tested
directly."""

import json
import re
import shutil

import mlflow
import pandas as pd
import pytest

from ace_ray import tracking
from ace_ray.cli import main
from ace_ray.config import ConfigError, dump_config, with_overrides
from ace_ray.eval import reproduce as reproduce_module
from ace_ray.eval.ledger import Ledger
from ace_ray.eval.reproduce import reproduce, row_overrides
from ace_ray.model.presets import preset_overrides

pytestmark = pytest.mark.ray


def _workload(featurised_shop, tmp_path, *extra):
    w, root, _ = featurised_shop
    return with_overrides(w, [
        f"workspace={tmp_path}", "data.batches.batch_size=32", "data.batches.partitions=4",
        "pretrain.train.workers=1", "pretrain.train.max_steps=3", "pretrain.train.batch_size=48",
        "finetune.train.workers=1", "finetune.train.max_steps=4", "finetune.train.log_every=2",
        "finetune.adversarial.encoder_steps=1", "eval.baselines=[random, bm25]", "eval.map_points=200",
        "reproduce.seeds=[0]", *extra,
    ])  # fmt: skip


def _stages(w) -> list[str]:
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(w))
    exp = client.get_experiment_by_name(w.tracking.experiment)
    return [r.data.tags.get("stage") for r in client.search_runs([exp.experiment_id])]


def test_reproduce_writes_the_report_and_resumes_training_only_what_is_missing(featurised_shop, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    w = _workload(featurised_shop, tmp_path, 'reproduce.tables={"Table 4": [hot_query, adversarial]}')
    report = reproduce(w, command="ace-ray reproduce --workload w.yaml 'reproduce.tables=...'")
    out = report.parent
    text = report.read_text()
    assert (
        "Command: `ace-ray reproduce --workload w.yaml 'reproduce.tables=...'`" in text
    )  # as the CLI passes it
    assert "## Table 4" in text and "Fig. 6" in text and "Fig. 7" in text
    assert "| cold_recall@100 |" in text  # the cold products' column: where only title and photo can help
    assert "| cold_among_cold_recall@100 |" in text  # and ranked among the cold products alone
    assert "| cold_gauc |" in text  # and their clicks against the session's other impressions
    assert (out / "fig6_matching_loss.png").stat().st_size > 10_000
    assert len(list(out.glob("fig7_embedding_map_*.png"))) == 2
    game = re.search(r"D's accuracy (\S+) \(0.5 = fooled\)", text)  # read from the adversarial run's curves
    assert game and 0.0 <= float(game[1]) <= 1.0 and (out / "fig6_game.png").stat().st_size > 10_000
    first = pd.read_csv(out / "results.csv")
    assert set(first["method"]) == {"hot_query", "adversarial", "random", "bm25"}
    assert _stages(w).count("pretrain") == 1 and _stages(w).count("finetune") == 2  # one shared pretraining

    # Widen it: an ablation row (a preset with an override) in a table of its own is added; the Table 4 rows
    # are read back, not trained again, and the ablation shares their pretraining.
    additive = "hot_query finetune.fusion=additive"
    widened = _workload(featurised_shop, tmp_path, f"reproduce.resume={out}",
                        'reproduce.tables={"Table 4": [hot_query, adversarial], '
                        f'"Levers": [{additive}]}}')  # fmt: skip
    # What is done so far, as the command line asks for it: the report of the finished rows; nothing trains.
    (tmp_path / "w.yaml").write_text(dump_config(w))
    levers = f'reproduce.tables={{"Table 4": [hot_query, adversarial], "Levers": [{additive}]}}'
    args = [
        "reproduce",
        "--workload",
        str(tmp_path / "w.yaml"),
        "--resume",
        str(out),
        "--report-only",
        levers,
    ]
    assert main(args) == 0
    assert _stages(w).count("finetune") == 2
    assert f"2 of the 3 fine-tunings are done; not yet trained: {additive} seed 0" in report.read_text()
    with pytest.raises(ConfigError, match="report_only: name the report directory"):
        reproduce(with_overrides(w, ["reproduce.report_only=true"]))

    # The new row's evaluation dies (as a Ray Data worker did on a busy machine) after it trained: the
    # resume evaluates that model instead of training it again.
    real = reproduce_module.run_evaluation

    def dies_once(*args, **kwargs):
        monkeypatch.setattr(reproduce_module, "run_evaluation", real)
        raise RuntimeError("the evaluation's worker died")

    monkeypatch.setattr(reproduce_module, "run_evaluation", dies_once)
    with pytest.raises(RuntimeError, match="worker died"):
        reproduce(widened)
    assert _stages(w).count("finetune") == 3
    assert reproduce(widened) == report
    second = pd.read_csv(out / "results.csv")
    by_method = second.set_index("method")
    assert set(second["method"]) == {"hot_query", "adversarial", additive, "random", "bm25"}
    assert _stages(w).count("pretrain") == 1 and _stages(w).count("finetune") == 3
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(w))
    params = client.get_run(by_method.loc[additive, "run_id"]).data.params
    assert params["finetune.fusion"] == "additive" and params["finetune.preset"] == "hot_query"
    assert "## Levers" in report.read_text() and (out / "hot_query_finetune.fusion=additive-seed0").is_dir()
    for method in ("hot_query", "adversarial"):
        before, after = (r.set_index("method").loc[method] for r in (first, second))
        assert before["run_id"] == after["run_id"] and before["recall@100"] == after["recall@100"]

    # Anything but reproduce.* / ray.* changed: refused, naming the setting.
    with pytest.raises(ConfigError, match="model.layers"):
        reproduce(with_overrides(widened, ["model.layers=1"]))

    # A new report of the command line reuses that one's runs with the same settings (from a copy made as
    # before the ledger recorded trained models: read from MLflow), and its pretraining for a new row.
    old = tmp_path / "older-report"
    shutil.copytree(out, old)
    lines = (old / "runs.jsonl").read_text().splitlines(keepends=True)
    (old / "runs.jsonl").write_text("".join(x for x in lines if '"kind": "trained"' not in x))
    kept = {p: p.read_bytes() for p in old.iterdir() if p.is_file()}
    # A row's own pretraining setting pretrains apart (it would do nothing on a shared pretraining).
    gamma, mlm = "adversarial finetune.gamma=10", "adversarial pretrain.mlm_prob=0.3"
    tables = f'reproduce.tables={{"Table 4": [hot_query, adversarial], "Levers": [{gamma}, {mlm}]}}'
    assert main(["reproduce", "--workload", str(tmp_path / "w.yaml"), "--reuse", str(old), tables]) == 0
    (new,) = [d for d in (tmp_path / "reports").iterdir() if d != out]
    assert _stages(w).count("pretrain") == 2 and _stages(w).count("finetune") == 5
    third = pd.read_csv(new / "results.csv").set_index("method")
    for method in ("hot_query", "adversarial"):  # the same models, evaluated again: the same figures
        assert third.loc[method, "run_id"] == by_method.loc[method, "run_id"]
        assert third.loc[method, "recall@100"] == pytest.approx(by_method.loc[method, "recall@100"])
    params = client.get_run(third.loc[gamma, "run_id"]).data.params
    assert params["finetune.init_from"] == Ledger(old).pretrained[("True", "True", "True", "False")]
    own = Ledger(new).pretrained[("True", "True", "True", "False", "pretrain.mlm_prob=0.3")]
    assert client.get_run(third.loc[mlm, "run_id"]).data.params["finetune.init_from"] == own
    exp = client.get_experiment_by_name(w.tracking.experiment).experiment_id
    pretrainings = client.search_runs([exp], "tags.stage = 'pretrain'")
    assert sorted(r.data.params["pretrain.mlm_prob"] for r in pretrainings) == ["0.15", "0.3"]
    text = (new / "report.md").read_text()
    assert "2 of the 4 fine-tunings were trained for other reports with the same settings" in text
    assert f"`{old}` (2)" in text
    after = {p: p.read_bytes() for p in old.iterdir() if p.is_file()}
    assert after == kept  # the other report is read, never written

    # The report directory carried to another clone (as a repository carries a long reproduction across
    # machines): another workspace with an empty MLflow store, the pretrained model gone. Its finished rows
    # are read, the figures drawn from the directory alone, and a new row's pretraining is done again.
    clone = tmp_path / "clone"
    carried = clone / "benchmarks" / "report"
    shutil.copytree(out, carried)
    shutil.rmtree(Ledger(out).pretrained[("True", "True", "True", "False")])
    for f in carried.glob("fig*.png"):
        f.unlink()
    lr = "hot_query finetune.train.lr=0.001"
    there = _workload(featurised_shop, clone, f"reproduce.resume={carried}", f"tracking.uri=sqlite:///{clone}/mlflow.db",
                      f'reproduce.tables={{"Table 4": [hot_query, adversarial], "Levers": [{lr}]}}')  # fmt: skip
    reproduce(there)
    assert _stages(there) == ["reproduce", "finetune", "pretrain"]  # only the new row and its pretraining
    carried_results = pd.read_csv(carried / "results.csv").set_index("method")
    for method in ("hot_query", "adversarial"):
        assert carried_results.loc[method, "recall@100"] == by_method.loc[method, "recall@100"]
    assert (carried / "fig6_matching_loss.png").stat().st_size > 10_000
    assert len(list(carried.glob("fig7_embedding_map_*.png"))) == 2
    text = (carried / "report.md").read_text()
    assert "started from 2 different pretrainings" in text and "Fine-tunings trained in " in text


def test_a_row_of_another_image_input_builds_its_features(featurised_shop, tmp_path):
    # A freshly imported catalogue has no features; after the first RoI row, a whole-image row (FashionBERT)
    # finds only RoI stores: it builds its own instead of stopping the reproduction hours in.
    w, _, store = featurised_shop
    out = tmp_path / "features"
    shutil.copytree(store.path, out / store.path.name)
    whole = with_overrides(w, [f"data.features.out={out}", "data.features.roi=false"])
    built = reproduce_module._features(whole)
    assert built.manifest.roi is False and built.path.parent == out
    assert (
        reproduce_module._features(with_overrides(w, [f"data.features.out={out}"])).path.name
        == store.path.name
    )


def test_a_row_is_compared_with_the_row_above_it_that_the_report_has():
    # An unfinished report (--report-only) lacks roi_patch: roi_patch_pixel is compared with patch.
    part = pd.DataFrame({"method": ["patch", "roi_patch_pixel"], "recall@100_mean": [0.63, 0.62],
                         "gauc_mean": [0.63, 0.64]})  # fmt: skip
    rows = ["patch", "roi_patch", "roi_patch_pixel"]
    assert reproduce_module._regressions(part, rows) == (
        "- roi_patch_pixel does not beat patch on recall@100 (0.6200 vs 0.6300)."
    )
    assert reproduce_module._regressions(part.iloc[:1], rows) == ""  # one row: nothing to compare


def test_each_trained_config_is_compared_with_twinbert_once_under_its_first_name(tmp_path):
    presets = ["twinbert", "cebert", "acebert", "none", "adversarial"]
    configs = {"twinbert": ("t",), "cebert": ("c",), "acebert": ("a",), "none": ("c",), "adversarial": ("a",)}
    results = pd.DataFrame([{"method": p, "seed": s, "recall@100": 0.6 + 0.01 * s + (p != "twinbert") * 0.05}
                            for p in presets for s in (0, 1)])  # fmt: skip
    ((title, text),) = reproduce_module._against_text_only(results, presets, configs, tmp_path)
    assert title == "Against the text-only preset (twinbert)"
    assert text.endswith("![each row against twinbert](margins.png)") and (tmp_path / "margins.png").is_file()
    lines = [x for x in text.splitlines() if x.startswith("| ")][2:]
    assert [x.split(" | ")[0] for x in lines] == ["| cebert", "| acebert"]
    assert "+0.0500 (1.08x), ahead on 2 of 2 seeds; **ahead by more than the spread** (0.0071)" in lines[0]
    no_twinbert = results[results["method"] != "twinbert"]
    assert reproduce_module._against_text_only(no_twinbert, presets[1:], configs, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_figures_come_from_the_first_seed_whose_two_runs_kept_their_evaluation_directories(tmp_path):
    # Seed 0's adversarial entry was carried over from another report (its evaluation directory is there):
    # the figures come from seed 1; with no such seed the report says why, instead of failing.
    configs = {"hot_query": ("h",), "adversarial": ("a",)}
    runs = {}
    for cfg, seed in [("h", 0), ("a", 0), ("h", 1), ("a", 1), ("h", 2), ("a", 2)]:
        d = tmp_path / f"{cfg}{seed}"
        if (cfg, seed) != ("a", 0):
            d.mkdir()
            (d / "embedding_map.png").write_bytes(f"map {cfg}{seed}".encode())
            curves = {
                "step": range(1, 21),
                "main": [2.0] * 20,
                "centroid_gap": [0.3 if cfg == "h" else 0.1] * 20,
            }
            if cfg == "a":  # only the adversarial run logs D's accuracy
                curves["d_acc"] = [0.9] * 18 + [0.6, 0.5]
            pd.DataFrame(curves).to_csv(d / reproduce_module.CURVES_FILE, index=False)
        gap, recall = (0.25, 0.6) if cfg == "h" else (0.15, 0.59)
        runs[((cfg,), seed)] = {
            "eval_dir": d,
            "metrics": {"centroid_gap": gap, "recall@100": recall, "gauc": 0.6},
        }
    out = tmp_path / "report"
    out.mkdir()
    sections = reproduce_module._figures(None, runs, configs, [0, 1, 2], out)
    assert "fig6_matching_loss.png" in sections[0][1]
    assert (out / "fig6_matching_loss.png").stat().st_size > 1000
    assert (out / "fig7_embedding_map_with_adversarial.png").read_bytes() == b"map a1"
    assert (out / "fig7_embedding_map_without_adversarial.png").read_bytes() == b"map h1"
    title, game = sections[2]
    # The last tenth of training (steps 19-20) and the test set, for each seed with both runs (1 and 2).
    assert title.startswith("The game")
    assert game.startswith("- Seed 1, over the last tenth of training: D's accuracy 0.550 (0.5 = fooled), the "
                           "centroid gap 0.100 with the game against 0.300 without. On the test set: centroid "
                           "gap 0.150 against 0.250, Recall@100 0.5900 against 0.6000")  # fmt: skip
    assert "\n- Seed 2, over the last tenth" in game and "Seed 0" not in game
    assert (out / "fig6_game.png").stat().st_size > 1000
    (note,) = reproduce_module._figures(None, runs, configs, [0], out)
    assert note[1].startswith("Not drawn: no seed has both rows")
    no_adversarial_row = {"hot_query": ("h",)}
    assert reproduce_module._figures(None, runs, no_adversarial_row, [0, 1], out) == []
    # A report of the game alone, its adversarial row under Table 1's name: the same reading.
    named_acebert = {"hot_query": ("h",), "acebert": ("a",)}
    assert reproduce_module._figures(None, runs, named_acebert, [0, 1, 2], out)[2] == (title, game)


def test_a_row_is_a_preset_with_overrides():
    assert row_overrides("twinbert") == tuple(preset_overrides("twinbert"))
    assert row_overrides("acebert finetune.gamma=10")[-1] == "finetune.gamma=10"
    with pytest.raises(ConfigError, match="'gated' is not key=value"):
        row_overrides("acebert gated")
    with pytest.raises(ConfigError, match="unknown preset 'acebrt'"):
        row_overrides("acebrt")


def test_ledger_skips_a_cut_short_last_entry_and_names_a_broken_one(featurised_shop, tmp_path, capsys):
    w = featurised_shop[0]
    ledger = Ledger(tmp_path, w, resume=False)
    ledger.add_pretrain(("True", "True", "True", "False"), str(tmp_path))
    ledger.add_pretrain(("False", "True", "False", "True"), str(tmp_path / "deleted"))
    ledger.add_run((("a=1",), 0), {"run_id": "r0", "metrics": {"gauc": 0.6}, "eval_dir": tmp_path})
    ledger.add_trained((("b=1",), 0), "r1", str(tmp_path))  # trained, its evaluation never finished
    ledger.add_trained((("c=1",), 0), "r2", str(tmp_path / "deleted"))
    # Evaluated below, so its gone model is not needed.
    ledger.add_trained((("d=1",), 0), "r3", str(tmp_path / "deleted"))
    ledger.add_run((("d=1",), 0), {"run_id": "r3", "metrics": {"gauc": 0.5}, "eval_dir": tmp_path})
    with ledger.path.open("a") as f:
        f.write('{"kind": "finetune", "config": ["a=1"], "se')  # the process died mid-write
    capsys.readouterr()
    again = Ledger(tmp_path, w, resume=True)
    said = capsys.readouterr().out
    assert "runs.jsonl:2: " in said and "runs.jsonl:5: " in said and "that fine-tuning is redone" in said
    assert "runs.jsonl:6: " not in said  # a finished fine-tuning whose model is gone is not done again
    assert list(again.runs) == [(("a=1",), 0), (("d=1",), 0)]
    assert again.runs[(("a=1",), 0)]["metrics"] == {"gauc": 0.6}
    assert list(again.pretrained) == [("True", "True", "True", "False")]  # its model directory is gone
    assert again.trained == {(("b=1",), 0): {"run_id": "r1", "model_dir": str(tmp_path)}}
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    read = Ledger(tmp_path)  # another report's, as reproduce.reuse reads it: nothing written
    assert read.runs == again.runs and read.trained == again.trained
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp
    lines = ledger.path.read_text().splitlines()
    ledger.path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match=r"runs.jsonl:2"):
        Ledger(tmp_path, w, resume=True)
    assert json.loads(lines[2])["run_id"] == "r0"
    with pytest.raises(ConfigError, match="not a reproduce directory"):
        Ledger(tmp_path / "elsewhere", w, resume=True)
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    fingerprint = json.loads((tmp_path / "data.json").read_text())
    (tmp_path / "data.json").write_text(json.dumps({**fingerprint, "impressions.parquet": "0" * 64}))
    with pytest.raises(ConfigError, match=r"impressions.parquet is not the data .* ran on"):
        Ledger(tmp_path, w, resume=True)  # the same settings on other data
