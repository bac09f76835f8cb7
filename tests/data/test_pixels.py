"""Pixel normalisation, as the encoder does it on its device."""

import numpy as np
import torch

from ace_ray.data.pixels import normalise_pixel_tensor


def test_pixel_normalisation_matches_a_naive_loop():
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 4 * 4 * 3), dtype=np.uint8)
    out = normalise_pixel_tensor(torch.from_numpy(px)).numpy()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for i in range(px.shape[-1]):
        c = i % 3
        np.testing.assert_allclose(out[..., i], (px[..., i] / 255.0 - mean[c]) / std[c], rtol=1e-5)
