"""CE-BERT's pretraining heads and the module that computes all three losses for a batch."""

from __future__ import annotations

import torch
from torch import nn

from ace_ray.model import losses
from ace_ray.model.encoder import PATCH, PIXEL, TITLE, CEBert


class PretrainHeads(nn.Module):
    """MLM (transform + decoder tied to the word embeddings), MPM (hidden -> D1 features), TIP (binary)."""

    def __init__(self, hidden: int, vocab: int, patch_dim: int):
        super().__init__()
        self.mlm_transform = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12)
        )
        self.mlm_bias = nn.Parameter(torch.zeros(vocab))
        self.mpm = nn.Linear(hidden, patch_dim)
        # TIP reads [CLS] and the product of the mean text and mean image outputs: a [CLS]-only head sat at
        # the 1:3 prior for hundreds of steps in small runs; the product gives matching a direct path.
        self.tip = nn.Linear(2 * hidden, 1)


def match_features(seq: torch.Tensor, offsets: dict, title_mask: torch.Tensor) -> torch.Tensor:
    """Mean title output (padding excluded) times mean image output (patches and pixels), per example."""
    start, n = offsets[TITLE]
    m = title_mask.unsqueeze(-1).to(seq.dtype)
    text = (seq[:, start : start + n] * m).sum(1) / m.sum(1).clamp(min=1)
    image = torch.cat([seq[:, s : s + k] for seg, (s, k) in offsets.items() if seg in (PATCH, PIXEL)], 1)
    return text * image.mean(1)


class CEBertPretraining(nn.Module):
    """Encoder + heads. ``forward`` takes a prepared batch (see ``ace_ray.train.pretrain.make_batch``) and
    returns each loss, TIP logits and counts. MLM and MPM are computed on the matched pairs only: masked
    modelling of a title against another product's image teaches nothing true."""

    def __init__(self, encoder: CEBert, vocab: int):
        super().__init__()
        self.encoder = encoder
        self.heads = PretrainHeads(encoder.hidden, vocab, encoder.patch_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seq, pooled, offsets = self.encoder(batch["title_ids"], batch["title_mask"], patches=batch.get("patches"),
                                            pixels=batch.get("pixels"))  # fmt: skip
        pos = batch["label"] > 0.5
        n_title = batch["title_ids"].shape[1]
        # Vocabulary logits at the masked tokens only: over every title token they were a third of a step.
        labels = batch["mlm_labels"][pos]
        masked = labels != losses.IGNORE
        h = self.heads.mlm_transform(seq[:, :n_title][pos][masked])
        logits = h @ self.encoder.bert.embeddings.word_embeddings.weight.T + self.heads.mlm_bias
        out = {"mlm": losses.mlm_loss(logits, labels[masked]), "seq": seq}
        if PATCH in offsets:
            start, _ = offsets[PATCH]
            n = batch["patch_target"].shape[1]
            pred = self.heads.mpm(seq[:, start : start + n][pos])
            out["mpm"] = losses.mpm_kl_loss(pred, batch["patch_target"][pos], batch["patch_masked"][pos])
        tip_logits = self.heads.tip(
            torch.cat([pooled, match_features(seq, offsets, batch["title_mask"])], -1)
        )
        tip_logits = tip_logits.squeeze(-1)
        out["tip"] = losses.tip_loss(tip_logits, batch["label"])
        out["tip_logits"] = tip_logits
        return out
