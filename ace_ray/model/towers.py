"""ACE-BERT's two towers (paper 3): one shared CE-BERT encodes queries (``[CLS] query [SEP]``) and
products (title, hot queries, RoI patch features, pixel patches); both are pooled, projected to
``embed_dim`` and L2-normalised, so a dot product is the cosine similarity FAISS searches by.

Also the adversarial parts (paper 3.3): the domain classifier D and a gradient-reversal layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ace_ray.model.encoder import HOT, CEBert, build_encoder, load_model, save_model, trim_padding

POOLING = ("mean", "cls")
FUSION = ("joint", "additive", "apart")


class TwoTower(nn.Module):
    """Shared-weight query and product towers over one ``CEBert``.

    ``fusion`` says how a product's image tokens reach its embedding:
    - ``joint`` (the paper): every token attends to every other and all are pooled together, so 65 image
      tokens outweigh a 10-token title in the mean;
    - ``additive``: the text tokens (title, hot queries) attend only to text, the image tokens to everything;
      each side is pooled on its own and the image vector is added through its own projection, which starts
      at zero. At the start the product tower is exactly the text-only one; the image is learnt in on top.
      (A zero scalar gate in front of a random projection was tried first: the gate's gradient is the
      random projection's correlation with the loss, the projection's is scaled by the gate, and in a short
      fine-tuning neither moved. A zero projection gets its full gradient from the first step.)
    - ``apart``: as ``additive``, but the image tokens attend only to the image too, so the image vector is
      the photo's alone. Where they may read the title, the image part can repeat what the title says (and
      learn the clicked products by heart through it) instead of what only the photo shows.

    ``hot_apart`` does for the hot queries what ``additive`` does for the image: they attend only to each
    other, are pooled on their own and added through their own projection, which starts at zero; the rest
    of the product is encoded as without them. Mean-pooled with the title, up to 48 hot-query tokens outweigh
    a 10-token title, and a warm product's embedding becomes its training queries' (which a test query often
    is not); apart, the tower starts as the one without hot queries and learns in only what they add.
    """

    def __init__(self, encoder: CEBert, embed_dim: int, pooling: str = "mean", hot_queries: bool = True,
                 fusion: str = "joint", hot_apart: bool = False):  # fmt: skip
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"finetune.pooling: unknown pooling {pooling!r}; one of {', '.join(POOLING)}")
        if fusion not in FUSION:
            raise ValueError(f"finetune.fusion: unknown fusion {fusion!r}; one of {', '.join(FUSION)}")
        # The towers pool the sequence themselves: BERT's pooler would be an unused (DDP-breaking) layer.
        encoder.bert.pooler = None
        self.encoder, self.pooling, self.hot_queries, self.fusion = encoder, pooling, hot_queries, fusion
        self.proj = nn.Linear(encoder.hidden, embed_dim)
        has_image = encoder.patch_proj is not None or encoder.pixel_proj is not None
        self.image_proj = None
        if fusion != "joint" and has_image:
            self.image_proj = nn.Linear(encoder.hidden, embed_dim)
            nn.init.zeros_(self.image_proj.weight)
            nn.init.zeros_(self.image_proj.bias)
        self.hot_proj = None
        if hot_queries and hot_apart:
            self.hot_proj = nn.Linear(encoder.hidden, embed_dim)
            nn.init.zeros_(self.hot_proj.weight)
            nn.init.zeros_(self.hot_proj.bias)
        self.image_share = float("nan")  # the last product batch's |image part| / |text part| (additive)
        self.image_emb: torch.Tensor | None = None  # the last product batch's image part alone, L2-normalised

    def _pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return seq[:, 0]
        m = mask.unsqueeze(-1).to(seq.dtype)
        return (seq * m).sum(1) / m.sum(1).clamp(min=1)

    def _embed(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self._pool(seq, mask)).float(), dim=-1)

    @property
    def additive(self) -> bool:
        """Whether product image tokens are pooled apart and added (``fusion`` additive or apart, with image
        segments)."""
        return self.image_proj is not None

    @property
    def hot_apart(self) -> bool:
        """Whether the hot queries are pooled apart and added through their own projection."""
        return self.hot_proj is not None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(query embeddings, product embeddings) of a batch of pairs: what DDP wraps for training."""
        return self.encode_queries(batch["query_ids"], batch["query_mask"]), self.encode_products(batch)

    def encode_queries(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Query token ids/masks [B, L] -> unit embeddings [B, embed_dim]."""
        mask, ids = trim_padding(mask, ids)
        seq, _, _ = self.encoder(ids, mask)
        return self._embed(seq, mask)

    def encode_products(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A product batch (title_ids/mask, hot_ids/mask, patches, pixels; what the model uses) -> unit
        embeddings [B, embed_dim]."""
        enc = self.encoder
        title_mask, title_ids = trim_padding(batch["title_mask"], batch["title_ids"])
        masks = [title_mask]
        hot_ids = hot_mask = None
        if self.hot_queries and "hot_ids" in batch:
            hot_mask, hot_ids = trim_padding(batch["hot_mask"], batch["hot_ids"])
            masks.append(hot_mask[:, 1:])
        seq, _, offsets = enc(
            title_ids,
            title_mask,
            hot_ids=hot_ids,
            hot_mask=hot_mask,
            patches=batch["patches"] if enc.patch_proj is not None else None,
            pixels=batch["pixels"] if enc.pixel_proj is not None else None,
            text_attends_text_only=self.additive,
            image_attends_text=self.fusion != "apart",
            hot_apart=self.hot_apart,
        )
        text = sum(m.shape[1] for m in masks)
        masks.append(torch.ones(seq.shape[0], seq.shape[1] - text, device=seq.device))
        mask = torch.cat([m.to(seq.device, seq.dtype) for m in masks], 1)
        hot_part = 0
        if self.hot_apart and hot_ids is not None:
            start, n = offsets[HOT]
            hot_part = self.hot_proj(self._pool(seq[:, start : start + n], mask[:, start : start + n]))
            mask = mask.clone()
            mask[:, start : start + n] = 0  # the rest of the product is pooled without them
        if not self.additive:
            return F.normalize((self.proj(self._pool(seq, mask)) + hot_part).float(), dim=-1)
        text_part = self.proj(self._pool(seq[:, :text], mask[:, :text]))
        image_part = self.image_proj(seq[:, text:].mean(1))
        with torch.no_grad():  # how much of the photo the product tower has let in so far (logged)
            self.image_share = (
                (image_part.norm(dim=-1) / text_part.norm(dim=-1).clamp(min=1e-12)).mean().item()
            )
        self.image_emb = F.normalize(image_part.float(), dim=-1)
        return F.normalize((text_part + image_part + hot_part).float(), dim=-1)


class DomainClassifier(nn.Module):
    """D (eq. 6): embedding -> logit of "this came from the query tower"."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb).squeeze(-1)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; gradient times ``-scale`` backward (Ganin & Lempitsky's gradient reversal)."""
    return _Reverse.apply(x, scale)


def encode_query_texts(towers: TwoTower, queries: list[str], text_cfg: dict, batch: int = 256) -> np.ndarray:
    """Query texts -> unit embeddings (float32 [n, embed_dim]), tokenised as in training, in batches."""
    from ace_ray.data import text

    out = [np.zeros((0, towers.proj.out_features), np.float32)]
    device = towers.proj.weight.device
    with torch.inference_mode():
        for i in range(0, len(queries), batch):
            q = text.encode(queries[i : i + batch], text_cfg["max_query"], text_cfg["tokenizer"])
            ids, mask = (
                torch.from_numpy(q[k].astype(np.int64)).to(device) for k in ("input_ids", "attention_mask")
            )
            out.append(towers.encode_queries(ids, mask).float().cpu().numpy())
    return np.concatenate(out)


def build_towers(w, patch_dim: int, pixel_dim: int) -> TwoTower:
    """The towers a workload fine-tunes: from ``finetune.init_from`` (a pretrained model directory) or a
    fresh encoder from ``model``; the image segments follow ``model.patches``/``model.pixels`` (a text-only
    preset drops a pretrained model's projections, a missing one starts random)."""
    ft = w.finetune
    if not ft.init_from:
        enc = build_encoder(w.model, w.data.text.tokenizer, patch_dim, pixel_dim)
        return TwoTower(enc, ft.embed_dim, ft.pooling, ft.hot_queries, ft.fusion, ft.hot_queries_apart)
    enc, _, _ = load_model(w.path(ft.init_from))
    _fine_tuning_dropout(enc, w.model.dropout)
    differ = [
        f"model.{k}={getattr(w.model, k)!r}"
        for k in _ARCHITECTURE
        if getattr(w.model, k) != getattr(enc.cfg, k)
    ]
    if differ:
        print(f"[finetune] {', '.join(differ)}: no effect here; the towers are {ft.init_from}'s "
              f"({', '.join(f'{k}={getattr(enc.cfg, k)!r}' for k in _ARCHITECTURE)})")  # fmt: skip
    hidden = enc.hidden
    if w.model.patches and (enc.patch_proj is None or enc.patch_dim != patch_dim):
        print(f"[finetune] {ft.init_from}: no patch projection for {patch_dim}-d features; starting one")
        enc.patch_proj = nn.Linear(patch_dim, hidden)
    if w.model.pixels and (enc.pixel_proj is None or enc.pixel_dim != pixel_dim):
        print(f"[finetune] {ft.init_from}: no pixel projection for {pixel_dim}-d patches; starting one")
        enc.pixel_proj = nn.Linear(pixel_dim, hidden)
    enc.patch_proj = enc.patch_proj if w.model.patches else None
    enc.pixel_proj = enc.pixel_proj if w.model.pixels else None
    enc.patch_dim, enc.pixel_dim = patch_dim, pixel_dim
    enc.cfg = dataclasses.replace(
        enc.cfg, patches=w.model.patches, pixels=w.model.pixels, dropout=w.model.dropout
    )
    return TwoTower(enc, ft.embed_dim, ft.pooling, ft.hot_queries, ft.fusion, ft.hot_queries_apart)


# What a pretrained model decides for the towers that start from it (the workload's model.* say how to build one).
_ARCHITECTURE = ("init", "layers", "size")


def _fine_tuning_dropout(enc: CEBert, p: float) -> None:
    """The workload's ``model.dropout`` on a loaded encoder (it was built with its pretraining's), kept in its
    BERT config so that the saved towers say it too."""
    for m in enc.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    enc.bert.config.hidden_dropout_prob = enc.bert.config.attention_probs_dropout_prob = p


def save_towers(towers: TwoTower, out, tokenizer_name: str, meta: dict) -> None:
    """A self-contained model directory (see ``save_model``) whose ``ace_ray.json`` also describes the
    towers (embedding size, pooling, hot queries)."""
    info = {"task": "finetune", "embed_dim": towers.proj.out_features, "pooling": towers.pooling,
            "hot_queries": towers.hot_queries, "fusion": towers.fusion, "hot_apart": towers.hot_apart, **meta}  # fmt: skip
    heads = {"proj": towers.proj, **({"image_proj": towers.image_proj} if towers.additive else {}),
             **({"hot_proj": towers.hot_proj} if towers.hot_apart else {})}  # fmt: skip
    save_model(towers.encoder, nn.ModuleDict(heads), out, tokenizer_name, info)


def load_towers(path) -> tuple[TwoTower, dict]:
    """A fine-tuned model directory -> (towers in eval mode, its ace_ray.json)."""
    enc, heads, info = load_model(path)
    if info.get("task") != "finetune":
        raise ValueError(f"{path}: a {info.get('task', 'unknown')} model, not fine-tuned towers")
    towers = TwoTower(
        enc,
        info["embed_dim"],
        info["pooling"],
        info["hot_queries"],
        info.get("fusion", "joint"),
        info.get("hot_apart", False),
    )
    missing = {k for k, _ in towers.named_parameters() if not k.startswith("encoder.")} - set(heads)
    if missing:
        raise ValueError(f"{path}: missing tower weights {sorted(missing)}")
    towers.load_state_dict(heads, strict=False)  # the heads are the towers' own parameters, by name
    return towers.eval(), info
