"""Raw pixel patches: the feature store and the batches keep them as uint8 (RGB, channel last); the encoder
normalises them like ImageNet, ``(p / 255 - mean) / std``, as one scale and one shift."""

from __future__ import annotations

import functools

import numpy as np
import torch

PIXEL_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
PIXEL_STD = np.array([0.229, 0.224, 0.225], np.float32)
_PIXEL_SCALE = (1.0 / (255.0 * PIXEL_STD)).astype(np.float32)
_PIXEL_SHIFT = (PIXEL_MEAN / PIXEL_STD).astype(np.float32)


def normalise_pixel_tensor(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 patches [..., patch*patch*3] -> float32, normalised on their own device:
    a batch moves to a GPU as uint8, a quarter of the bytes of float32 (the host-to-device copy was
    most of an ACE-BERT step on a GPU; benchmarks/results/train_throughput.md)."""
    scale, shift = _scale_shift(pixels.device)
    out = pixels.reshape(*pixels.shape[:-1], -1, 3).float() * scale - shift
    return out.reshape(pixels.shape)


@functools.lru_cache(maxsize=8)
def _scale_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics on ``device``, sent once: a copy from pageable memory each step would stall the GPU."""
    return torch.from_numpy(_PIXEL_SCALE).to(device), torch.from_numpy(_PIXEL_SHIFT).to(device)
