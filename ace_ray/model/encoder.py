"""CE-BERT's encoder: one HF ``BertModel`` fed through ``inputs_embeds``.

Sequence: ``[CLS] title [SEP] | hot queries [SEP] | RoI patch features (Linear D1->H) [SEP] | pixel patches
(Linear 32*32*3->H)``. Every segment has its own segment id (token type) and positions that restart at 0,
so a pretrained BERT's position table (512) is never outgrown by the image segments.

A saved model is a directory that reloads without ace-ray: ``config.json`` + ``model.safetensors`` (a plain
HF BERT, ``AutoModel.from_pretrained(dir)``), the tokenizer files, ``multimodal.safetensors`` (the two
projections and any heads, by name) and ``ace_ray.json`` (segment layout, feature manifest).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ace_ray.config import ModelConfig
from ace_ray.data import text
from ace_ray.data.pixels import normalise_pixel_tensor

# Segment ids (token types).
TITLE, HOT, PATCH, PIXEL = 0, 1, 2, 3
SEGMENTS = 4
# init=random sizes: hidden, attention heads, intermediate width.
SIZES = {"tiny": (64, 2, 128), "small": (256, 4, 1024), "base": (768, 12, 3072)}
META_FILE = "ace_ray.json"
EXTRA_WEIGHTS = "multimodal.safetensors"
TRIM_MULTIPLE = 8  # text segments are cut to a multiple of this many tokens (see trim_padding)


def _bert_config(cfg: ModelConfig, vocab_size: int):
    from transformers import BertConfig

    if cfg.size not in SIZES:
        raise ValueError(f"model.size: unknown size {cfg.size!r}; one of {', '.join(SIZES)}")
    hidden, heads, inter = SIZES[cfg.size]
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=cfg.layers or 4,
                      num_attention_heads=heads, intermediate_size=inter, type_vocab_size=SEGMENTS,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)  # fmt: skip


def load_bert(cfg: ModelConfig, tokenizer_name: str):
    """The backbone: the first ``layers`` layers of a pretrained BERT, or a random one of ``size``."""
    from transformers import BertModel

    if cfg.init == "random":
        vocab = len(text.load_tokenizer(tokenizer_name))
        return BertModel(_bert_config(cfg, vocab))
    name = text.resolve(cfg.init)
    kwargs = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    if cfg.layers:
        kwargs["num_hidden_layers"] = cfg.layers
    bert = BertModel.from_pretrained(name, **kwargs)
    _widen_segments(bert)
    return bert


def _widen_segments(bert) -> None:
    """A text BERT has 2 segment ids; CE-BERT needs 4. New rows start as copies of segment 1."""
    old = bert.embeddings.token_type_embeddings
    if old.num_embeddings >= SEGMENTS:
        return
    new = nn.Embedding(SEGMENTS, old.embedding_dim)
    with torch.no_grad():
        new.weight[: old.num_embeddings] = old.weight
        new.weight[old.num_embeddings :] = old.weight[-1]
    bert.embeddings.token_type_embeddings = new
    bert.config.type_vocab_size = SEGMENTS


class CEBert(nn.Module):
    """The multimodal encoder. ``forward`` returns the BERT output and where each segment starts."""

    def __init__(self, bert, cfg: ModelConfig, patch_dim: int, pixel_dim: int, sep_id: int):
        super().__init__()
        self.bert, self.cfg = bert, cfg
        self.patch_dim, self.pixel_dim, self.sep_id = patch_dim, pixel_dim, sep_id
        hidden = bert.config.hidden_size
        self.patch_proj = nn.Linear(patch_dim, hidden) if cfg.patches else None
        self.pixel_proj = nn.Linear(pixel_dim, hidden) if cfg.pixels else None

    @property
    def hidden(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, title_ids, title_mask, hot_ids=None, hot_mask=None, patches=None, pixels=None,
                text_attends_text_only: bool = False, image_attends_text: bool = True,
                hot_apart: bool = False):  # fmt: skip
        """Encode a batch. Text ids are ``[CLS] ... [SEP]`` rows (the hot-query row's [CLS] is dropped); a
        segment whose input is None is left out (the query tower passes text only). With
        ``text_attends_text_only`` the text tokens do not attend to the image tokens (which still attend to
        everything unless ``image_attends_text`` is False): the text outputs are then exactly those of the
        text alone (and the image outputs those of the image alone). With ``hot_apart`` the hot-query
        tokens attend only to each other and no other token attends to them: their outputs are those of
        the hot queries alone, and the others' those of the product without them.

        Returns ``(sequence_output, pooled, offsets)`` with ``offsets[segment] = (start, length)``.
        """
        words = self.bert.embeddings.word_embeddings
        b = title_ids.shape[0]
        parts, types, positions, masks, offsets = [], [], [], [], {}

        def add(emb, segment, mask):
            n = emb.shape[1]
            offsets[segment] = (sum(p.shape[1] for p in parts), n)
            parts.append(emb)
            types.append(torch.full((b, n), segment, dtype=torch.long, device=emb.device))
            positions.append(torch.arange(n, device=emb.device).expand(b, n))
            masks.append(mask.to(torch.long))

        add(words(title_ids.long()), TITLE, title_mask)
        if hot_ids is not None:
            add(words(hot_ids[:, 1:].long()), HOT, hot_mask[:, 1:])
        if patches is not None:
            if self.patch_proj is None:
                raise ValueError("this encoder was built with model.patches=false but got patch features")
            sep = words(torch.full((b, 1), self.sep_id, dtype=torch.long, device=title_ids.device))
            x = torch.cat([self.patch_proj(patches.to(sep.dtype)), sep], 1)
            add(x, PATCH, torch.ones(x.shape[:2], device=x.device))
        if pixels is not None:
            if self.pixel_proj is None:
                raise ValueError("this encoder was built with model.pixels=false but got pixel patches")
            if pixels.dtype == torch.uint8:  # as stored: normalised here, on the model's device
                pixels = normalise_pixel_tensor(pixels)
            x = self.pixel_proj(pixels.to(parts[0].dtype))
            add(x, PIXEL, torch.ones(x.shape[:2], device=x.device))
        embeds, mask = torch.cat(parts, 1), torch.cat(masks, 1)
        if text_attends_text_only or (hot_apart and hot_ids is not None):
            mask = _segment_mask(torch.cat(types, 1), mask, embeds.dtype, text_attends_text_only,
                                 image_attends_text, hot_apart)  # fmt: skip
        out = self.bert(inputs_embeds=embeds, attention_mask=mask,
                        token_type_ids=torch.cat(types, 1), position_ids=torch.cat(positions, 1))  # fmt: skip
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        return out.last_hidden_state, pooled, offsets


def _segment_mask(types: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype, text_apart: bool = True,
                  image_attends_text: bool = True, hot_apart: bool = False) -> torch.Tensor:  # fmt: skip
    """An additive attention mask [B, 1, L, L]: padding is never attended to, and positions attend only
    within their group: the title, the hot queries (their own group with ``hot_apart``, else the title's)
    and the image (its own group with ``text_apart``, else the title's); image positions also attend to
    the title's group when ``image_attends_text``. HF BERT takes a 4-D mask as it is."""
    text = types <= HOT
    group = torch.where(text | (not text_apart), TITLE, PATCH)
    if hot_apart:
        group = torch.where(types == HOT, HOT, group)
    pairs = group[:, :, None] == group[:, None, :]  # [B, query, key]
    if text_apart and image_attends_text:
        pairs |= ~text[:, :, None] & (group == TITLE)[:, None, :]
    allowed = mask.bool()[:, None, :] & pairs
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


def trim_padding(mask: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``mask`` and the tensors aligned with it, without the trailing columns that are padding in every row
    (kept to a multiple of ``TRIM_MULTIPLE``).

    Text is padded to its configured maximum (32 title, 48 hot-query tokens) but most batches need far less;
    cutting the all-padding tail changes no output for real tokens (positions restart per segment, padding
    is masked) and saves the encoder that much work. Rounding the cut up bounds the number of distinct
    shapes: bf16 matrix products on a CPU (oneDNN) build a kernel per new shape, which cost a fine-tuning
    run with exact cuts 30% of its time (``benchmarks/results/train_throughput.md``).
    """
    used = mask.any(0).nonzero()
    n = int(used.max()) + 1 if len(used) else 1
    n = min(mask.shape[1], -(-n // TRIM_MULTIPLE) * TRIM_MULTIPLE)
    return tuple(t[:, :n] for t in (mask, *aligned))


def build_encoder(cfg: ModelConfig, tokenizer_name: str, patch_dim: int, pixel_dim: int) -> CEBert:
    """A fresh CE-BERT from ``cfg.init`` (pretrained text BERT or random)."""
    tok = text.load_tokenizer(tokenizer_name)
    bert = load_bert(cfg, tokenizer_name)
    if bert.config.vocab_size < len(tok):
        raise ValueError(f"model.init {cfg.init!r} has {bert.config.vocab_size} word embeddings but tokenizer "
                         f"{tokenizer_name!r} has {len(tok)} tokens: use the model's own tokenizer")  # fmt: skip
    return CEBert(bert, cfg, patch_dim, pixel_dim, tok.sep_token_id)


def save_model(encoder: CEBert, heads: nn.Module | None, out: str | Path, tokenizer_name: str,
               meta: dict | None = None) -> Path:  # fmt: skip
    """Write a self-describing model directory (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.bert.save_pretrained(out)
    text.load_tokenizer(tokenizer_name).save_pretrained(out)
    extra = {
        f"{k}": v.detach().cpu().contiguous()
        for k, v in encoder.named_parameters()
        if not k.startswith("bert.")
    }
    if heads is not None:
        extra.update({f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()})
    save_file(extra, str(out / EXTRA_WEIGHTS))
    info = {"model": dataclasses.asdict(encoder.cfg), "patch_dim": encoder.patch_dim, "pixel_dim": encoder.pixel_dim,
            "segments": {"title": TITLE, "hot_queries": HOT, "patches": PATCH, "pixels": PIXEL}, **(meta or {})}  # fmt: skip
    (out / META_FILE).write_text(json.dumps(info, indent=2))
    return out


def read_info(path: str | Path) -> dict:
    """A saved model directory's ``ace_ray.json`` (task, preset, layout), without loading the weights."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path}: not an ace-ray model directory (no {META_FILE})")
    return json.loads((path / META_FILE).read_text())


def load_model(path: str | Path) -> tuple[CEBert, dict[str, torch.Tensor], dict]:
    """A saved model directory -> (encoder, the heads' state dict, its ace_ray.json)."""
    from transformers import BertModel

    path = Path(path)
    info = read_info(path)
    cfg = ModelConfig(**info["model"])
    tok = text.load_tokenizer(str(path))
    # Fine-tuned towers pool for themselves and were saved without BERT's pooler.
    bert = BertModel.from_pretrained(str(path), add_pooling_layer=info.get("task") != "finetune")
    enc = CEBert(bert, cfg, info["patch_dim"], info["pixel_dim"], tok.sep_token_id)
    extra = load_file(str(path / EXTRA_WEIGHTS))
    own = {k: v for k, v in extra.items() if not k.startswith("heads.")}
    missing = (
        set(dict(enc.named_parameters())) - {f"bert.{k}" for k, _ in enc.bert.named_parameters()} - set(own)
    )
    if missing:
        raise ValueError(f"{path / EXTRA_WEIGHTS}: missing weights {sorted(missing)}")
    enc.load_state_dict(own, strict=False)
    heads = {k[len("heads.") :]: v for k, v in extra.items() if k.startswith("heads.")}
    return enc, heads, info
