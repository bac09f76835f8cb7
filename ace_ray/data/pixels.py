"""Raw pixel patches: the feature store keeps them as uint8 (RGB, channel last); the encoder reads them
normalised like ImageNet, ``(p / 255 - mean) / std``, as one scale and one shift."""

from __future__ import annotations

import functools

import numpy as np
import torch

PIXEL_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
PIXEL_STD = np.array([0.229, 0.224, 0.225], np.float32)
_PIXEL_SCALE = (1.0 / (255.0 * PIXEL_STD)).astype(np.float32)
_PIXEL_SHIFT = (PIXEL_MEAN / PIXEL_STD).astype(np.float32)


def normalise_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 patches [..., patch*patch*3] -> float32, normalised (two passes over the batch, not five)."""
    out = np.multiply(pixels.reshape(*pixels.shape[:-1], -1, 3), _PIXEL_SCALE, dtype=np.float32)
    out -= _PIXEL_SHIFT
    return out.reshape(pixels.shape)


def normalise_pixel_tensor(pixels: torch.Tensor) -> torch.Tensor:
    """``normalise_pixels`` of a uint8 tensor, on its own device: a batch moves to a GPU as uint8, a quarter
    of the bytes of float32 (the host-to-device copy was most of an ACE-BERT step on a GPU)."""
    scale, shift = _scale_shift(pixels.device)
    out = pixels.reshape(*pixels.shape[:-1], -1, 3).float() * scale - shift
    return out.reshape(pixels.shape)


@functools.lru_cache(maxsize=8)
def _scale_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics on ``device``, sent once: a copy from pageable memory each step would stall the GPU."""
    return torch.from_numpy(_PIXEL_SCALE).to(device), torch.from_numpy(_PIXEL_SHIFT).to(device)
