"""Image decoding, edge-detection RoI, and the two image inputs of CE-BERT.

- ``decode``: any JPEG/PNG/WebP (alpha, greyscale, CMYK, huge) to BGR uint8, or a reason why not.
- ``detect_roi``: the product's box by edge detection (blur, Canny, close, contours), the whole frame
  as the fallback.
- ``square_crop``: the RoI (or the whole image) padded to a square and resized for the CNN.
- ``pixel_patches``: the whole image at 224x224 cut into 32x32 patches, kept as uint8.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ace_ray.config import RoiConfig

Box = tuple[int, int, int, int]  # x, y, w, h
_DEFAULT_ROI = RoiConfig()


class BadImage(ValueError):
    """An image that cannot be featurised; the message is the quarantine reason."""


def locate(root: Path, rel) -> tuple[Path | None, str | None]:
    """The file a catalogue's ``image_path`` names (``root`` resolved), or None and why not.

    Each way of pointing nowhere usable has its own reason: an empty cell, an absolute path, ``..`` out of
    the catalogue, a symlink to outside it, a file that is not there, a folder.
    """
    if rel is None or (isinstance(rel, float) and math.isnan(rel)) or not str(rel).strip():
        return None, "missing image_path"
    rel = str(rel)
    if "://" in rel:
        return None, "image path is a URL (download the images and give their paths)"
    if Path(rel).is_absolute():
        return None, "image path is absolute (it must be relative to the catalogue folder)"
    lexical = Path(os.path.normpath(root / rel))
    if not lexical.is_relative_to(root):
        return None, "image path escapes the catalogue root"
    full = lexical.resolve()
    if not full.is_relative_to(root):
        return None, "image is a symlink to outside the catalogue root"
    if not full.exists():
        return None, "image file not found"
    if not full.is_file():
        return None, "image path is a folder, not a file"
    return full, None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raises ``BadImage`` for empty or unreadable bytes."""
    if not data:
        raise BadImage("image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data)).size
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise BadImage(f"unreadable image ({type(exc).__name__})") from exc


def too_small(width: int, height: int, min_side: int) -> str | None:
    """The quarantine reason for an image under ``min_side`` pixels a side, or None."""
    if min(width, height) < min_side:
        return f"image too small ({width}x{height}; at least {min_side} px a side)"
    return None


def imdecode(data: bytes, flag: int) -> np.ndarray:
    """``cv2.imdecode`` that reports a bad stream as ``BadImage`` (OpenCV asserts on some, e.g. a
    reduced-scale decode of an image under 8 px)."""
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:
        raise BadImage("unreadable image (cannot be decoded)") from exc
    if img is None or img.size == 0:
        raise BadImage("unreadable image (cannot be decoded)")
    return img


def decode(data: bytes, max_side: int = 2048, min_side: int = 8) -> np.ndarray:
    """Bytes to a BGR uint8 image no larger than ``max_side``; raises ``BadImage`` with the reason.

    Huge images are decoded at a reduced scale (JPEG's DCT scaling) instead of in full, so a 10000x10000
    photo costs a fraction of its 300 MB; transparent pixels become white, as on a product page.
    """
    width, height = image_size(data)
    if reason := too_small(width, height, min_side):
        raise BadImage(reason)
    flag = cv2.IMREAD_UNCHANGED
    for factor, reduced in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if max(width, height) // factor >= max_side:
            flag = reduced
            break
    img = imdecode(data, flag)
    if img.dtype != np.uint8:  # 16-bit PNG
        img = (img / 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if max(img.shape[:2]) > max_side:
        scale = max_side / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def detect_roi(img: np.ndarray, p: RoiConfig = _DEFAULT_ROI) -> tuple[Box, bool]:
    """The product's box by edge detection, and whether it was found (False: the whole frame)."""
    h, w = img.shape[:2]
    scale = min(1.0, p.work_size / max(h, w))
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
    blurred = cv2.GaussianBlur(small, (p.blur, p.blur), 0)
    # Edges in any colour channel: a yellow product on a grey-green table has almost no luminance edge.
    edges = np.zeros(blurred.shape[:2], np.uint8)
    for c in range(3):
        edges |= cv2.Canny(blurred[..., c], p.canny_low, p.canny_high)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (p.close, p.close))
    closed = cv2.morphologyEx(cv2.dilate(edges, kernel), cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return (0, 0, w, h), False
    areas = np.array([cv2.contourArea(c) for c in contours])
    keep = [c for c, a in zip(contours, areas, strict=True) if a >= p.min_share * areas.max()]
    x, y, bw, bh = cv2.boundingRect(np.concatenate(keep))
    sh, sw = small.shape[:2]
    if bw * bh < p.min_box * sw * sh:
        return (0, 0, w, h), False
    # Dilation grew the box by about half the kernel; take that back, then add the margin.
    shrink = p.close // 2
    mx, my = int(p.margin * sw), int(p.margin * sh)
    x0, y0 = max(0, x + shrink - mx), max(0, y + shrink - my)
    x1, y1 = min(sw, x + bw - shrink + mx), min(sh, y + bh - shrink + my)
    box = (int(x0 / scale), int(y0 / scale), int(np.ceil((x1 - x0) / scale)), int(np.ceil((y1 - y0) / scale)))
    return (box[0], box[1], min(box[2], w - box[0]), min(box[3], h - box[1])), True


def square_crop(img: np.ndarray, box: Box, size: int) -> np.ndarray:
    """``box`` padded to a square with the image's border colour, resized to ``size`` (RGB order)."""
    x, y, w, h = box
    crop = img[y : y + h, x : x + w]
    side = max(w, h)
    border = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = border.astype(np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = crop
    out = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def pixel_patches(img: np.ndarray, size: int = 224, patch: int = 32) -> np.ndarray:
    """The whole image resized to ``size`` and cut into (size/patch)^2 patches of patch*patch*3 uint8 (RGB)."""
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    rgb = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return image_to_patches(rgb, patch)


def image_to_patches(img: np.ndarray, patch: int) -> np.ndarray:
    """A square [n*patch, n*patch, 3] image -> its n*n patches, row-major, each patch*patch*3 flattened."""
    n = img.shape[0] // patch
    return img.reshape(n, patch, n, patch, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, patch * patch * 3)


def patches_to_image(p: np.ndarray, patch: int) -> np.ndarray:
    """The inverse of ``image_to_patches``."""
    n = int(round(len(p) ** 0.5))
    return p.reshape(n, n, patch, patch, 3).transpose(0, 2, 1, 3, 4).reshape(n * patch, n * patch, 3)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0
