"""Product silhouettes: each draws a filled mask inside a box, in coordinates relative to the box."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h


def _pts(box: Box, uv: list[tuple[float, float]]) -> np.ndarray:
    x, y, w, h = box
    return np.array([[x + u * (w - 1), y + v * (h - 1)] for u, v in uv], dtype=np.int32)


def _poly(mask: np.ndarray, box: Box, uv: list[tuple[float, float]]) -> None:
    cv2.fillPoly(mask, [_pts(box, uv)], 255, lineType=cv2.LINE_AA)


def _ellipse(mask: np.ndarray, box: Box, cu: float, cv: float, ru: float, rv: float, thick: int = -1) -> None:
    x, y, w, h = box
    centre = (int(x + cu * (w - 1)), int(y + cv * (h - 1)))
    axes = (max(1, int(ru * w)), max(1, int(rv * h)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thick, lineType=cv2.LINE_AA)


def _rect(mask: np.ndarray, box: Box, u0: float, v0: float, u1: float, v1: float) -> None:
    _poly(mask, box, [(u0, v0), (u1, v0), (u1, v1), (u0, v1)])


def tshirt(m, b):
    _poly(m, b, [(0.3, 0), (0.42, 0.06), (0.58, 0.06), (0.7, 0), (1, 0.2), (0.88, 0.38), (0.78, 0.3),
                 (0.78, 1), (0.22, 1), (0.22, 0.3), (0.12, 0.38), (0, 0.2)])  # fmt: skip


def shirt(m, b):
    tshirt(m, b)
    _poly(m, b, [(0.78, 0.3), (1, 0.2), (1, 0.85), (0.88, 0.85)])
    _poly(m, b, [(0.22, 0.3), (0, 0.2), (0, 0.85), (0.12, 0.85)])


def sweater(m, b):
    shirt(m, b)
    _rect(m, b, 0.2, 0.9, 0.8, 1)


def jacket(m, b):
    shirt(m, b)
    _poly(m, b, [(0.35, 0), (0.5, 0.25), (0.65, 0)])


def dress(m, b):
    _poly(m, b, [(0.35, 0), (0.65, 0), (0.68, 0.35), (1, 1), (0, 1), (0.32, 0.35)])


def skirt(m, b):
    _poly(m, b, [(0.2, 0), (0.8, 0), (1, 1), (0, 1)])


def trousers(m, b):
    _poly(m, b, [(0.05, 0), (0.95, 0), (1, 1), (0.58, 1), (0.5, 0.3), (0.42, 1), (0, 1)])


def shorts(m, b):
    _poly(m, b, [(0.05, 0), (0.95, 0), (1, 1), (0.56, 1), (0.5, 0.55), (0.44, 1), (0, 1)])


def sneaker(m, b):
    _poly(m, b, [(0, 0.55), (0.05, 0.2), (0.35, 0), (0.5, 0.3), (0.8, 0.45), (1, 0.7), (1, 1), (0, 1)])


def boot(m, b):
    _poly(m, b, [(0.1, 0), (0.55, 0), (0.58, 0.6), (0.9, 0.72), (1, 0.85), (1, 1), (0.05, 1), (0.08, 0.6)])


def heel(m, b):
    _poly(m, b, [(0, 0.2), (0.25, 0.25), (0.55, 0.6), (1, 0.75), (1, 0.9), (0.45, 0.85), (0.12, 0.5),
                 (0.1, 1), (0.03, 1), (0.02, 0.45)])  # fmt: skip


def sandal(m, b):
    _ellipse(m, b, 0.5, 0.75, 0.5, 0.25)
    _poly(m, b, [(0.2, 0.55), (0.45, 0), (0.6, 0), (0.8, 0.55), (0.65, 0.55), (0.52, 0.2), (0.35, 0.55)])


def handbag(m, b):
    _poly(m, b, [(0.12, 0.35), (0.88, 0.35), (1, 1), (0, 1)])
    _ellipse(m, b, 0.5, 0.36, 0.28, 0.34, thick=max(2, b[3] // 16))


def backpack(m, b):
    _ellipse(m, b, 0.5, 0.2, 0.42, 0.2)
    _rect(m, b, 0.08, 0.2, 0.92, 1)
    _rect(m, b, 0.2, 0.55, 0.8, 0.9)


def wallet(m, b):
    _rect(m, b, 0, 0.1, 1, 1)
    _poly(m, b, [(0, 0.1), (1, 0.1), (0.5, 0)])


def hat(m, b):
    _ellipse(m, b, 0.5, 0.8, 0.5, 0.2)
    _ellipse(m, b, 0.5, 0.55, 0.3, 0.55)
    _rect(m, b, 0.2, 0.5, 0.8, 0.8)


def scarf(m, b):
    _poly(m, b, [(0.2, 0), (0.8, 0), (0.7, 0.35), (0.9, 1), (0.55, 1), (0.5, 0.45), (0.35, 1), (0.05, 1),
                 (0.3, 0.35)])  # fmt: skip


def watch(m, b):
    _rect(m, b, 0.3, 0, 0.7, 1)
    _ellipse(m, b, 0.5, 0.5, 0.5, 0.28)


def sunglasses(m, b):
    _ellipse(m, b, 0.22, 0.55, 0.22, 0.42)
    _ellipse(m, b, 0.78, 0.55, 0.22, 0.42)
    _rect(m, b, 0.3, 0.2, 0.7, 0.35)


def belt(m, b):
    _rect(m, b, 0, 0.3, 1, 0.7)
    _rect(m, b, 0.06, 0, 0.2, 1)


def mug(m, b):
    _rect(m, b, 0, 0, 0.75, 1)
    _ellipse(m, b, 0.78, 0.5, 0.2, 0.28, thick=max(2, b[2] // 12))


def vase(m, b):
    _poly(
        m,
        b,
        [(0.35, 0), (0.65, 0), (0.6, 0.15), (0.95, 0.55), (0.75, 1), (0.25, 1), (0.05, 0.55), (0.4, 0.15)],
    )


def cushion(m, b):
    _poly(m, b, [(0, 0), (0.5, 0.06), (1, 0), (0.94, 0.5), (1, 1), (0.5, 0.94), (0, 1), (0.06, 0.5)])


def lamp(m, b):
    _poly(m, b, [(0.25, 0), (0.75, 0), (1, 0.45), (0, 0.45)])
    _rect(m, b, 0.45, 0.45, 0.55, 0.92)
    _rect(m, b, 0.15, 0.9, 0.85, 1)


def bowl(m, b):
    _poly(m, b, [(0, 0), (1, 0), (0.85, 0.7), (0.65, 0.9), (0.65, 1), (0.35, 1), (0.35, 0.9), (0.15, 0.7)])


def headphones(m, b):
    x, y, w, h = b
    centre, axes = (int(x + 0.5 * w), int(y + 0.6 * h)), (int(0.4 * w), int(0.55 * h))
    cv2.ellipse(m, centre, axes, 0, 180, 360, 255, max(3, w // 12), lineType=cv2.LINE_AA)  # the band
    _rect(m, b, 0, 0.5, 0.22, 1)
    _rect(m, b, 0.78, 0.5, 1, 1)


def phone_case(m, b):
    _rect(m, b, 0, 0, 1, 1)


def laptop_sleeve(m, b):
    _rect(m, b, 0, 0.05, 1, 1)
    _rect(m, b, 0.3, 0, 0.7, 0.06)


SHAPES: dict[str, Callable[[np.ndarray, Box], None]] = {
    "tshirt": tshirt, "shirt": shirt, "sweater": sweater, "jacket": jacket, "dress": dress, "skirt": skirt,
    "trousers": trousers, "shorts": shorts, "sneaker": sneaker, "boot": boot, "heel": heel, "sandal": sandal,
    "handbag": handbag, "backpack": backpack, "wallet": wallet, "hat": hat, "scarf": scarf, "watch": watch,
    "sunglasses": sunglasses, "belt": belt, "mug": mug, "vase": vase, "cushion": cushion, "lamp": lamp,
    "bowl": bowl, "headphones": headphones, "phone_case": phone_case, "laptop_sleeve": laptop_sleeve,
}  # fmt: skip
