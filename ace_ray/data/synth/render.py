"""Product photos drawn with OpenCV: the product's shape in its colour and pattern, off-centre at 30-70% of
the frame, on a plain or textured background, with occasional clutter."""

from __future__ import annotations

import cv2
import numpy as np

from ace_ray.data.synth.shapes import SHAPES
from ace_ray.data.synth.taxonomy import COLOURS

_CLUTTER_P = 0.2
_TEXTURED_P = 0.35


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(200, 256, 3) if rng.random() < 0.8 else rng.integers(150, 230, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    if rng.random() < _TEXTURED_P:
        kind = int(rng.integers(3))
        if kind == 0:  # fabric-like noise, blurred so it stays low-contrast
            noise = cv2.GaussianBlur(rng.normal(0, 12, (size, size)).astype(np.float32), (0, 0), 2.0)
            img += noise[..., None]
        elif kind == 1:  # studio gradient
            ramp = np.linspace(-18, 18, size, dtype=np.float32)
            img += (ramp[:, None] if rng.random() < 0.5 else ramp[None, :])[..., None]
        else:  # faint wood / paper lines
            period = int(rng.integers(6, 16))
            lines = (np.arange(size) % period < 2).astype(np.float32) * -10
            img += lines[:, None, None]
    return img


def _pattern(size: int, colour: np.ndarray, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """A full-frame texture of the product's colour and pattern (masked to the silhouette later)."""
    tex = np.empty((size, size, 3), np.float32)
    tex[:] = colour
    if pattern == "solid":
        return tex
    # Second colour: light on dark fabrics, dark on light ones.
    second = (235.0, 235.0, 235.0) if colour.mean() < 130 else (35.0, 35.0, 35.0)
    step = int(rng.integers(max(6, size // 28), max(8, size // 12)))
    canvas = tex.copy()
    if pattern == "striped":
        angle = rng.choice([0, 45, 90, 135])
        yy, xx = np.mgrid[0:size, 0:size]
        coord = {0: yy, 90: xx, 45: xx + yy, 135: xx - yy + size}[int(angle)]
        canvas[(coord % step) < max(2, step // 3)] = second
    elif pattern == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, size, step):
                cv2.circle(canvas, (x, y), r, second, -1, lineType=cv2.LINE_AA)
    elif pattern == "checked":
        yy, xx = np.mgrid[0:size, 0:size]
        canvas[((yy // step) + (xx // step)) % 2 == 0] = 0.55 * colour + 0.45 * np.array(second)
    elif pattern == "floral":
        accent = (np.array(COLOURS[str(rng.choice(list(COLOURS)))], np.float32) + second) / 2
        for _ in range(int((size / step) ** 2 * 0.6)):
            cx, cy = rng.integers(0, size, 2)
            r = max(1, step // 5)
            for k in range(5):
                a = 2 * np.pi * k / 5
                cv2.circle(
                    canvas, (int(cx + 2 * r * np.cos(a)), int(cy + 2 * r * np.sin(a))), r, accent.tolist(), -1
                )
            cv2.circle(canvas, (int(cx), int(cy)), r, second, -1)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return canvas


def _clutter(img: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """One or two small props (a pen, a coin, a leaf) away from the product."""
    size = img.shape[0]
    x, y, w, h = box
    gap = size // 16  # props lie apart from the product, as in a styled photo
    for _ in range(int(rng.integers(1, 3))):
        r = int(size * rng.uniform(0.03, 0.06))
        for _try in range(10):
            cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
            if cx + r < x - gap or cx - r > x + w + gap or cy + r < y - gap or cy - r > y + h + gap:
                colour = rng.integers(60, 200, 3).tolist()
                if rng.random() < 0.5:
                    cv2.circle(img, (cx, cy), r, colour, -1, lineType=cv2.LINE_AA)
                else:
                    cv2.rectangle(img, (cx - r, cy - r // 3), (cx + r, cy + r // 3), colour, -1)
                break


def render(
    shape: str, colour: str, pattern: str, aspect: float, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one product photo; returns the BGR image and the product's true box (x, y, w, h)."""
    img = _background(size, rng)
    frac = rng.uniform(0.3, 0.7)  # the object's longer side, as a share of the frame
    w, h = (frac * size, frac * size / aspect) if aspect >= 1 else (frac * size * aspect, frac * size)
    w, h = max(8, int(w)), max(8, int(h))
    margin = max(2, size // 40)
    x = int(rng.integers(margin, max(margin + 1, size - w - margin)))
    y = int(rng.integers(margin, max(margin + 1, size - h - margin)))
    mask = np.zeros((size, size), np.uint8)
    SHAPES[shape](mask, (x, y, w, h))
    base = np.array(COLOURS[colour], np.float32) * rng.uniform(0.9, 1.08)
    tex = _pattern(size, np.clip(base, 0, 255), pattern, rng)
    shade = np.linspace(1.06, 0.86, size, dtype=np.float32)[:, None, None]  # light from above
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    # A soft shadow grounds the product, as in studio photos.
    shadow = cv2.GaussianBlur(np.roll(mask, (3, 3), (0, 1)), (0, 0), 3).astype(np.float32)[..., None] / 255.0
    img = img * (1 - 0.25 * shadow)
    img = img * (1 - alpha) + np.clip(tex * shade, 0, 255) * alpha
    img = np.clip(img, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    edge = (np.clip(base * 0.55, 0, 255)).tolist()
    cv2.drawContours(img, contours, -1, edge, 1, lineType=cv2.LINE_AA)
    bx, by, bw, bh = cv2.boundingRect(mask)
    if rng.random() < _CLUTTER_P:
        _clutter(img, (bx, by, bw, bh), rng)
    return img, (bx, by, bw, bh)
