"""What makes two fine-tunings the same experiment for ``reproduce.reuse`` (the matching itself runs end to end
in ``test_reproduce.py``)."""

from ace_ray.config import load_workload
from ace_ray.eval.reuse import training_settings


def test_settings_compare_where_the_data_is_not_how_the_workspace_was_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = training_settings(load_workload(None, ["workspace=.", "data.root=shop"]))
    assert training_settings(load_workload(None, [f"workspace={tmp_path}", "data.root=shop"])) == here
    assert training_settings(load_workload(None, ["workspace=.", f"data.root={tmp_path / 'shop'}"])) == here
    # Another shop, another seed, another name for the preset's label: only the first two are other experiments.
    assert (
        training_settings(load_workload(None, [f"workspace={tmp_path / 'elsewhere'}", "data.root=shop"]))
        != here
    )
    assert (
        training_settings(load_workload(None, ["workspace=.", "data.root=shop", "finetune.train.seed=1"]))
        != here
    )
    assert (
        training_settings(load_workload(None, ["workspace=.", "data.root=shop", "finetune.preset=cebert"]))
        == here
    )


def test_a_run_without_the_game_is_the_same_experiment_however_the_game_would_be_played():
    """A hot-query row (no game) of a report that varies the game is the one its baseline report trained."""
    plain = ["workspace=.", "finetune.adversarial.mode=none"]
    here = training_settings(load_workload(None, plain))
    for game in ("finetune.adversarial.disc_lr_schedule=encoder", "finetune.adversarial.weight=1.0"):
        assert training_settings(load_workload(None, [*plain, game])) == here, game
        played = ["workspace=.", "finetune.adversarial.mode=alternating"]
        assert training_settings(load_workload(None, [*played, game])) != training_settings(
            load_workload(None, played)
        ), game
    assert training_settings(load_workload(None, ["workspace=.", "finetune.adversarial.mode=grl"])) != here


def test_a_twinbert_run_is_the_same_experiment_whatever_the_pretraining_it_never_read():
    """A report that varies the pretraining takes its TwinBERT row from its baseline report; the image rows
    it trains again."""
    from pathlib import Path

    from ace_ray.eval.reuse import Candidate, match

    def candidate(preset, *extra, init=None):
        w = load_workload(None, ["workspace=.", f"finetune.preset={preset}", *extra])
        return w, Candidate(Path("base"), preset, None, init, training_settings(w, pretrained=bool(init)))

    longer = "pretrain.train.max_steps=600"
    twin, c = candidate("twinbert", "model.patches=false", "model.pixels=false")
    wanted = load_workload(None, ["workspace=.", "finetune.preset=twinbert", "model.patches=false",
                                  "model.pixels=false", longer])  # fmt: skip
    assert match(wanted, None, [c]) == (c, "")
    _, image = candidate("cebert", init=str(Path(__file__).parent))
    assert match(load_workload(None, ["workspace=.", "finetune.preset=cebert"]), None, [image]) == (image, "")
    got, why = match(load_workload(None, ["workspace=.", "finetune.preset=cebert", longer]), None, [image])
    assert got is None and why == "no recorded run has these settings"
