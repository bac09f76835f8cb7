"""The encoder's sequence layout, initialisation from the packaged MiniLM or a local directory, and a
saved model that reloads without ace-ray."""

import json

import pytest
import torch

from ace_ray.config import ModelConfig
from ace_ray.data import text
from ace_ray.data.pixels import normalise_pixel_tensor
from ace_ray.model.encoder import HOT, PATCH, PIXEL, TITLE, build_encoder, load_model, save_model
from ace_ray.model.heads import PretrainHeads

TINY = ModelConfig(init="random", size="tiny", layers=2)


def _inputs(b=3, patch_dim=12, pixel_dim=48):
    t = text.encode(["red cotton dress", "blue heels", "a bag"], 10)
    h = text.encode(["red dress ; dress red", "", "bag"], 8)
    return dict(title_ids=torch.from_numpy(t["input_ids"]), title_mask=torch.from_numpy(t["attention_mask"]),
                hot_ids=torch.from_numpy(h["input_ids"]), hot_mask=torch.from_numpy(h["attention_mask"]),
                patches=torch.randn(b, 4, patch_dim), pixels=torch.randn(b, 5, pixel_dim))  # fmt: skip


def test_segments_are_laid_out_in_order_with_their_own_positions():
    enc = build_encoder(TINY, "minilm", 12, 48).eval()
    seq, pooled, offsets = enc(**_inputs())
    # title 10, hot queries 8 - [CLS], 4 patches + [SEP], 5 pixel patches
    assert offsets == {TITLE: (0, 10), HOT: (10, 7), PATCH: (17, 5), PIXEL: (22, 5)}
    assert seq.shape == (3, 27, 64) and pooled.shape == (3, 64)
    # Without hot queries and pixels (a switch, not a fork), the layout shrinks accordingly.
    enc2 = build_encoder(ModelConfig(init="random", size="tiny", layers=2, pixels=False), "minilm", 12, 48)
    x = _inputs()
    _, _, off = enc2(x["title_ids"], x["title_mask"], patches=x["patches"])
    assert off == {TITLE: (0, 10), PATCH: (10, 5)}


def test_padding_does_not_change_the_encoding():
    enc = build_encoder(TINY, "minilm", 12, 48).eval()
    x = _inputs()
    a = enc(**x)[1]
    pad = {**x, "title_ids": torch.cat([x["title_ids"], torch.zeros(3, 5, dtype=x["title_ids"].dtype)], 1),
           "title_mask": torch.cat([x["title_mask"], torch.zeros(3, 5, dtype=x["title_mask"].dtype)], 1)}  # fmt: skip
    assert torch.allclose(a, enc(**pad)[1], atol=1e-5)


def test_stored_image_inputs_encode_as_their_float32_normalised_form():
    """Batches carry patches and pixels as stored (float16, uint8) and the encoder converts them on its own
    device: the encoding must be the one of the converted inputs."""
    enc = build_encoder(TINY, "minilm", 12, 48).eval()
    x = _inputs()
    stored = {
        **x,
        "patches": x["patches"].half(),
        "pixels": torch.randint(0, 256, (3, 5, 48), dtype=torch.uint8),
    }
    converted = {**stored, "patches": stored["patches"].float(),
                 "pixels": normalise_pixel_tensor(stored["pixels"])}  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(enc(**stored)[0], enc(**converted)[0], atol=1e-5)


def test_packaged_minilm_first_layers_and_a_local_directory(tmp_path):
    enc = build_encoder(ModelConfig(init="minilm", layers=2), "minilm", 12, 48)
    assert enc.bert.config.num_hidden_layers == 2 and enc.hidden == 384
    assert enc.bert.embeddings.token_type_embeddings.num_embeddings == 4
    # The pretrained word embeddings came along: the packaged model's weights, not a random init.
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(text.packaged_minilm_dir()))
    assert torch.equal(enc.bert.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    # Any HF BERT directory works the same way (here: one written by save_pretrained).
    ref.save_pretrained(tmp_path / "bert")
    enc2 = build_encoder(ModelConfig(init=str(tmp_path / "bert"), layers=1), "minilm", 12, 48)
    assert enc2.bert.config.num_hidden_layers == 1
    with pytest.raises(OSError):
        build_encoder(ModelConfig(init=str(tmp_path / "nowhere")), "minilm", 12, 48)


def test_saved_model_reloads_with_and_without_ace_ray(tmp_path):
    enc = build_encoder(TINY, "minilm", 12, 48).eval()
    heads = PretrainHeads(enc.hidden, enc.bert.config.vocab_size, 12)
    out = save_model(enc, heads, tmp_path / "m", "minilm", {"task": "test"})
    x = _inputs()
    again, head_state, info = load_model(out)
    assert torch.allclose(enc(**x)[1], again.eval()(**x)[1], atol=1e-6)
    assert set(head_state) == set(heads.state_dict()) and info["task"] == "test"
    # Plain transformers reads the BERT and the tokenizer; the image projections are named tensors.
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    bert = AutoModel.from_pretrained(out)
    assert bert.config.type_vocab_size == 4
    assert AutoTokenizer.from_pretrained(out)("red dress")["input_ids"][0] == 101
    assert {"patch_proj.weight", "pixel_proj.weight"} <= set(load_file(out / "multimodal.safetensors"))
    assert json.loads((out / "ace_ray.json").read_text())["segments"]["pixels"] == PIXEL


def test_towers_cut_shared_padding_without_changing_any_embedding():
    from ace_ray.model.encoder import trim_padding
    from ace_ray.model.towers import TwoTower

    torch.manual_seed(0)
    towers = TwoTower(build_encoder(TINY, "minilm", 12, 48), 16).eval()
    x = _inputs()
    mask, ids = trim_padding(x["title_mask"], x["title_ids"])
    assert int(x["title_mask"].sum(1).max()) == 5  # the longest title, [CLS] and [SEP] included
    assert mask.shape[1] == 8 < x["title_mask"].shape[1]  # cut to a multiple of 8, below the padded 10
    # Naive reference: the encoder on the untrimmed, max-length inputs, mean-pooled over every real token.
    seq, _, off = towers.encoder(**x)
    real = torch.cat([x["title_mask"], x["hot_mask"][:, 1:], torch.ones(3, off[PATCH][1] + off[PIXEL][1])], 1)
    naive = torch.nn.functional.normalize(
        towers.proj((seq * real[..., None]).sum(1) / real.sum(1, keepdim=True))
    )
    with torch.no_grad():
        assert torch.allclose(towers.encode_products(x), naive, atol=1e-5)
        # A product's embedding does not depend on the batch it is in (its batch-mates set the cut).
        alone = towers.encode_products({k: v[2:] for k, v in x.items()})
        assert torch.allclose(alone, naive[2:], atol=1e-5)
        q = towers.encode_queries(x["title_ids"], x["title_mask"])
        assert torch.allclose(
            q[1:2], towers.encode_queries(x["title_ids"][1:2], x["title_mask"][1:2]), atol=1e-5
        )


def test_mlm_on_masked_tokens_only_equals_the_loss_over_every_title_token():
    """The vocabulary logits are computed at the masked tokens only; loss and gradients are those of the
    reference that scores every title token of the matched pairs and ignores the unmasked ones."""
    import torch.nn.functional as F

    from ace_ray.model.heads import CEBertPretraining
    from ace_ray.model.losses import IGNORE

    torch.manual_seed(0)
    model = CEBertPretraining(build_encoder(TINY, "minilm", 12, 48), 30522).eval()  # no dropout
    x = _inputs()
    labels = torch.full(x["title_ids"].shape, IGNORE)
    labels[0, 1], labels[0, 3], labels[2, 2], labels[1, 1] = 2417, 7, 99, 5  # row 1 is not a matched pair
    batch = {**x, "label": torch.tensor([1.0, 0.0, 1.0]), "mlm_labels": labels,
             "patch_target": torch.randn(3, 4, 12), "patch_masked": torch.rand(3, 4) < 0.5}  # fmt: skip
    fast = model(batch)["mlm"]
    (g_fast,) = torch.autograd.grad(fast, model.heads.mlm_transform[0].weight)

    seq = model.encoder(x["title_ids"], x["title_mask"], patches=x["patches"], pixels=x["pixels"])[0]
    pos = batch["label"] > 0.5
    h = model.heads.mlm_transform(seq[:, : labels.shape[1]][pos])
    logits = h @ model.encoder.bert.embeddings.word_embeddings.weight.T + model.heads.mlm_bias
    ref = F.cross_entropy(logits.reshape(-1, 30522), labels[pos].reshape(-1), ignore_index=IGNORE)
    (g_ref,) = torch.autograd.grad(ref, model.heads.mlm_transform[0].weight)
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(g_fast, g_ref, atol=1e-6)
