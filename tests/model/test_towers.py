"""The two towers' product-side fusion: ``additive`` starts as the text-only tower and learns the image in."""

import torch

from ace_ray.config import ModelConfig
from ace_ray.data import text
from ace_ray.model.encoder import build_encoder
from ace_ray.model.towers import TwoTower, load_towers, save_towers

TINY = ModelConfig(init="random", size="tiny", layers=2, dropout=0.0)


def _batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = text.encode(["red cotton dress", "blue heels", "a bag"], 10)
    h = text.encode(["red dress", "", "bag ; bags"], 8)
    return {"title_ids": torch.from_numpy(t["input_ids"]), "title_mask": torch.from_numpy(t["attention_mask"]),
            "hot_ids": torch.from_numpy(h["input_ids"]), "hot_mask": torch.from_numpy(h["attention_mask"]),
            "patches": torch.randn(b, 4, 12, generator=g), "pixels": torch.randn(b, 5, 48, generator=g)}  # fmt: skip


def _towers(fusion, image=True):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**vars(TINY), "patches": image, "pixels": image})
    return TwoTower(build_encoder(cfg, "minilm", 12, 48), 16, fusion=fusion).eval()


def test_additive_starts_exactly_as_the_text_only_tower_and_ignores_the_photo_until_it_learns():
    additive, text_only = _towers("additive"), _towers("joint", image=False)
    text_only.load_state_dict(additive.state_dict(), strict=False)  # same BERT and text projection
    x = _batch()
    with torch.no_grad():
        a, b = additive.encode_products(x), text_only.encode_products(x)
        other_photos = additive.encode_products(
            {**x, **{k: v for k, v in _batch(seed=1).items() if k in ("patches", "pixels")}}
        )
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, other_photos, atol=1e-5)
    # The joint tower, by contrast, is moved by the photo from the start.
    joint = _towers("joint")
    with torch.no_grad():
        moved = (joint.encode_products(x) - joint.encode_products({**x, "pixels": -x["pixels"]})).abs().max()
    assert moved > 1e-3


def test_the_image_projection_learns_from_the_first_step_and_then_the_photo_counts():
    towers = _towers("additive").train()
    x = _batch()
    loss = -(towers.encode_products(x)[:, 0]).sum()
    loss.backward()
    assert towers.image_proj.weight.grad.abs().max() > 0  # the zero projection gets a gradient at once
    assert towers.image_share == 0.0
    torch.optim.SGD(towers.parameters(), lr=1.0).step()
    towers.eval()
    with torch.no_grad():
        a = towers.encode_products(x)
        b = towers.encode_products({**x, "pixels": -x["pixels"]})
    assert (a - b).abs().max() > 1e-4 and towers.image_share > 0


def test_an_additive_model_directory_reloads_with_its_image_projection(tmp_path):
    towers = _towers("additive")
    with torch.no_grad():
        towers.image_proj.weight.normal_()
    save_towers(towers, tmp_path / "m", "minilm", {})
    again, info = load_towers(tmp_path / "m")
    assert info["fusion"] == "additive" and again.additive
    x = _batch()
    with torch.no_grad():
        assert torch.allclose(towers.encode_products(x), again.encode_products(x), atol=1e-5)


def _image_part(towers, batch):
    """The product embedding with the text side silenced: what the image vector alone points at."""
    with torch.no_grad():
        towers.proj.weight.zero_()
        towers.proj.bias.zero_()
        return towers.encode_products(batch)


def test_apart_keeps_the_title_out_of_the_image_vector_where_additive_lets_it_in():
    x = _batch()
    other_titles = {**x, "title_ids": x["title_ids"].flip(0), "title_mask": x["title_mask"].flip(0)}
    moved = {}
    for fusion in ("additive", "apart"):
        towers = _towers(fusion)
        with torch.no_grad():
            towers.image_proj.weight.normal_()
        moved[fusion] = (_image_part(towers, x) - _image_part(towers, other_titles)).abs().max()
    assert moved["apart"] < 1e-5 < 1e-3 < moved["additive"]
    # The photo still moves the apart tower's image vector, and its start is the text-only tower (zero proj).
    towers = _towers("apart")
    with torch.no_grad():
        towers.image_proj.weight.normal_()
    assert (_image_part(towers, x) - _image_part(towers, {**x, "pixels": -x["pixels"]})).abs().max() > 1e-3
    assert not _towers("apart").image_proj.weight.any()


def _hot_towers(fusion, hot_apart=True, hot_queries=True):
    torch.manual_seed(0)
    return TwoTower(build_encoder(TINY, "minilm", 12, 48), 16, fusion=fusion, hot_queries=hot_queries,
                    hot_apart=hot_apart).eval()  # fmt: skip


def test_hot_queries_apart_start_as_the_tower_without_them_and_add_only_their_own_part(tmp_path):
    x = _batch()
    other_hot = {**x, "hot_ids": x["hot_ids"].flip(0), "hot_mask": x["hot_mask"].flip(0)}
    other_titles = {**x, "title_ids": x["title_ids"].flip(0), "title_mask": x["title_mask"].flip(0)}
    for fusion in ("joint", "apart"):
        apart, without = _hot_towers(fusion), _hot_towers(fusion, hot_apart=False, hot_queries=False)
        without.load_state_dict(apart.state_dict(), strict=False)
        with torch.no_grad():
            start = apart.encode_products(x)
            assert torch.allclose(start, without.encode_products(x), atol=1e-5)
            assert torch.allclose(start, apart.encode_products(other_hot), atol=1e-5)
            # In one mean with the title, the hot queries move the product from the start.
            joined = _hot_towers(fusion, hot_apart=False)
            assert (joined.encode_products(x) - joined.encode_products(other_hot)).abs().max() > 1e-3
            # Once their projection has learnt, they count, through their own part alone: with the rest
            # silenced, the title no longer moves the product.
            apart.hot_proj.weight.normal_()
            assert (apart.encode_products(x) - apart.encode_products(other_hot)).abs().max() > 1e-3
            save_towers(apart, tmp_path / fusion, "minilm", {})
            again, info = load_towers(tmp_path / fusion)
            assert info["hot_apart"] and torch.allclose(
                apart.encode_products(x), again.encode_products(x), atol=1e-5
            )
            for head in (apart.proj, apart.image_proj):
                if head is not None:
                    head.weight.zero_()
                    head.bias.zero_()
            assert torch.allclose(apart.encode_products(x), apart.encode_products(other_titles), atol=1e-5)


def test_the_workload_key_builds_towers_with_the_hot_queries_apart():
    from ace_ray.config import load_workload
    from ace_ray.model.towers import build_towers

    tiny = ["model.init=random", "model.size=tiny", "model.layers=2"]
    for value, hot, apart in (("true", "true", True), ("false", "true", False), ("true", "false", False)):
        w = load_workload(None, [*tiny, f"finetune.hot_queries_apart={value}", f"finetune.hot_queries={hot}"])
        assert build_towers(w, 12, 48).hot_apart is apart


def test_towers_from_a_pretrained_model_fine_tune_with_the_workloads_dropout(tmp_path, capsys):
    from ace_ray.config import load_workload
    from ace_ray.model.encoder import save_model
    from ace_ray.model.towers import build_towers

    torch.manual_seed(0)
    pretrained = ModelConfig(**{**vars(TINY), "dropout": 0.3})
    save_model(build_encoder(pretrained, "minilm", 12, 48), None, tmp_path / "m", "minilm")
    batch = _batch()

    def towers(*overrides):
        w = load_workload(None, [f"finetune.init_from={tmp_path / 'm'}", "model.layers=2", *overrides])
        return build_towers(w, 12, 48).train()

    for dropout, same in (("0.0", True), ("0.5", False)):
        t = towers(f"model.dropout={dropout}")
        a, b = t.encode_products(batch), t.encode_products(batch)
        assert torch.allclose(a, b) is same  # in training mode: no dropout is no noise
        assert t.encoder.bert.config.hidden_dropout_prob == float(dropout)
    capsys.readouterr()
    towers("model.layers=4")  # the architecture is the pretrained model's: said, not silently dropped
    assert "model.layers=4: no effect here" in capsys.readouterr().out
