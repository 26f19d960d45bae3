"""Shapes drawn by a third program: matplotlib's patches (``Circle``, ``Polygon``) rendered
by Agg, anti-aliased, on white or a light tint, 1-4 of them of 10-70 % of the short side,
filled or outlined with a 1-4 point line, turned at random; 640x480, 512x512 or 800x600
PNG. Neither ``model.shapes`` nor ``support.drawings`` (Pillow) nor
``support.opencv_shapes`` drew them. Deterministic by the generator; YOLO labels over the
default model's five classes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from support.drawings import CLASSES, corners, place


def draw(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One RGB image and its ``(k, 5)`` labels ``(class, cx, cy, w, h)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patches

    w, h = [(640, 480), (512, 512), (800, 600)][rng.integers(3)]
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)  # y down, as image pixels
    ax.axis("off")
    bg = (1.0, 1.0, 1.0) if rng.random() < 0.5 else tuple(rng.uniform(0.8, 1.0, 3))
    labels: list[list[float]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        spot = place(rng, w, h, (0.05, 0.35), placed)
        if spot is None:
            continue
        cx, cy, r = spot
        k = int(rng.integers(len(CLASSES)))
        colour = tuple(rng.uniform(0.0, 0.6, 3))
        filled = rng.random() < 0.5
        style = {
            "facecolor": colour if filled else "none",
            "edgecolor": colour,
            "linewidth": float(rng.uniform(1, 4)),
        }
        if CLASSES[k] == "circle":
            ax.add_patch(patches.Circle((cx, cy), r, **style))
            box = (cx - r, cy - r, cx + r, cy + r)
        else:
            p = np.array(corners(CLASSES[k], cx, cy, r, rng.uniform(0, 2 * math.pi)))
            ax.add_patch(patches.Polygon(p, closed=True, **style))
            box = (*p.min(0), *p.max(0))
        cxn, cyn = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
        labels.append([k, cxn, cyn, (box[2] - box[0]) / w, (box[3] - box[1]) / h])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor=bg)
    plt.close(fig)
    img = Image.open(buf).convert("RGB")
    return img, np.array(labels, np.float64).reshape(-1, 5)
