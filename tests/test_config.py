import pytest

from ace_ray.config import (
    ConfigError,
    Workload,
    dump_config,
    load_config,
    load_workload,
    parse_override,
)


def test_quickstart_workload_loads_with_types():
    wl = load_workload("workloads/quickstart.yaml")
    assert wl.name == "quickstart"
    assert wl.data.synth.products == 2000
    assert isinstance(wl.data.clicks.base_ctr, float)


def test_overrides_are_typed_and_win_over_the_file():
    wl = load_workload(
        "workloads/quickstart.yaml",
        [
            "data.synth.products=10",
            "data.clicks.base_ctr=1e-1",
            "ray.address=null",
            "ray.num_cpus=3",
            "name=x",
        ],
    )
    assert wl.data.synth.products == 10
    assert wl.data.clicks.base_ctr == pytest.approx(0.1)
    assert wl.ray.address is None and wl.ray.num_cpus == 3
    assert wl.name == "x"


def test_int_widens_to_float_but_not_the_other_way():
    assert load_workload(None, ["data.clicks.base_ctr=1"]).data.clicks.base_ctr == 1.0
    with pytest.raises(ConfigError, match=r"data\.synth\.products: expected an integer"):
        load_workload(None, ["data.synth.products=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.synth.prodcts=3", r"unknown key 'data\.synth\.prodcts'; did you mean 'products'"),
        ("dta.root=x", r"unknown key 'dta'"),
        ("data.synth.products=abc", r"data\.synth\.products: expected an integer, got 'abc'"),
        ("data.root.deeper=1", r"'data\.root' is not a section"),
        ("data.synth.seed", r"not of the form key=value"),
        ("ray.num_cpus=[1, 2]", r"ray\.num_cpus: expected int"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_workload(None, [override])


def test_bad_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  synth:\n    sessions: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.synth\.sessions: expected an integer"):
        load_workload(bad)
    bad.write_text("data:\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'data\.colour'"):
        load_workload(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_workload(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_workload(tmp_path / "missing.yaml")


def test_effective_config_round_trips(tmp_path):
    wl = load_workload("workloads/quickstart.yaml", ["data.synth.seed=7"])
    saved = tmp_path / "effective.yaml"
    saved.write_text(dump_config(wl))
    assert load_config(Workload, saved) == wl


def test_yaml_style_values():
    assert parse_override("a=1e-4") == ("a", 1e-4)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=data/shop") == ("a", "data/shop")
    assert parse_override("a=") == ("a", "")


def test_workload_paths_are_absolute(tmp_path):
    wl = load_workload(None, [f"workspace={tmp_path}", "data.root=data/x"])
    assert wl.path(wl.data.root) == tmp_path / "data" / "x"
    assert wl.path("/abs/y").as_posix() == "/abs/y"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.features.grid=0", r"data\.features\.grid: must be >= 1, got 0"),
        ("finetune.gamma=-1", r"finetune\.gamma: must be > 0"),
        ("data.batches.batch_size=1", r"data\.batches\.batch_size: must be >= 2"),
        ("pretrain.train.lr=0", r"pretrain\.train\.lr: must be > 0"),
        ("finetune.hot_query_dropout=1.5", r"finetune\.hot_query_dropout: must be <= 1"),
        ("eval.index=bogus", r"eval\.index: 'bogus' is not one of hnsw, ivf"),
        ("eval.ks=[10, 0]", r"eval\.ks\[1\]: must be >= 1"),
        ("eval.baselines=[bm25, bert]", r"eval\.baselines\[1\]: 'bert' is not one of"),
        ("finetune.adversarial.mode=minimax", r"finetune\.adversarial\.mode: 'minimax' is not one of"),
        ("model.size=huge", r"model\.size: 'huge' is not one of tiny, small, base"),
        ("data.root=", r"data\.root: must not be empty"),
        ("data.root=' '", r"data\.root: must not be empty"),
        ("data.synth.start_date=12/01/2026", r"data\.synth\.start_date: expected an ISO date"),
        ("data.synth.products=0", r"data\.synth\.products: must be >= 1, got 0"),
        ("ray.num_cpus=0", r"ray\.num_cpus: must be >= 1"),
    ],
)
def test_out_of_range_settings_are_refused_when_loaded(override, message):
    with pytest.raises(ConfigError, match=message):
        load_workload(None, [override])


def test_out_of_range_in_a_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  adversarial:\n    weight: -0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: finetune\.adversarial\.weight: must be >= 0"):
        load_workload(bad)


def test_a_setting_no_stage_reads_is_refused():
    # Fine-tuning's batches are planned ahead (data.batches.batch_size): a batch size under finetune.train
    # used to be accepted and ignored.
    with pytest.raises(ConfigError, match=r"finetune\.train\.batch_size'; .*data\.batches\.batch_size"):
        load_workload(None, ["finetune.train.batch_size=8"])
    assert load_workload(None, ["pretrain.train.batch_size=8"]).pretrain.train.batch_size == 8
