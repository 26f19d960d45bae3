"""Shapes as a person draws them in a paint program or a script: Pillow's ``ImageDraw``
on a plain canvas, no noise, no texture. Three kinds the default model's first training
stage never saw: a close-up (one shape filling 50-95 % of the canvas), line drawings
(black outlines 1-3 pixels wide on white), and one shape filling 80-97 % of a square
canvas in both directions, filled or drawn with a 1-3 pixel pen. Deterministic by the
generator; labels as YOLO ``(class, cx, cy, w, h)`` over the default model's five
classes."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "square", "triangle", "star", "cross"]
KINDS = ("closeup", "outline", "fill")


def corners(name: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """The polygon of ``name`` (not a circle), ``r`` from its centre to its tips."""
    if name == "cross":
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t),
               (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]  # fmt: skip
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    n, inner = {"square": (4, 1.0), "triangle": (3, 1.0), "star": (10, 0.4)}[name]
    start = rot + (math.pi / 4 if name == "square" else -math.pi / 2)
    radii = [r if k % 2 == 0 else r * inner for k in range(n)]
    angles = [start + k * 2 * math.pi / n for k in range(n)]
    return [
        (cx + q * math.cos(a), cy + q * math.sin(a)) for q, a in zip(radii, angles, strict=True)
    ]


def place(
    rng: np.random.Generator,
    w: int,
    h: int,
    radius: tuple[float, float],
    placed: list[tuple[float, float, float]],
) -> tuple[float, float, float] | None:
    """A centre and radius ``(cx, cy, r)`` inside a ``w`` x ``h`` canvas, ``r`` drawn from
    ``radius`` (shares of the short side), whose square overlaps none of ``placed``;
    appended to ``placed``. None after 50 tries."""
    for _try in range(50):
        r = rng.uniform(*radius) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if all(abs(cx - x) > r + q or abs(cy - y) > r + q for x, y, q in placed):
            placed.append((cx, cy, r))
            return cx, cy, r
    return None


def draw(rng: np.random.Generator, kind: str) -> tuple[Image.Image, np.ndarray]:
    """One RGB drawing of ``kind`` and its ``(k, 5)`` labels."""
    if kind == "fill":
        return _fill(rng)
    w, h = [(640, 480), (512, 512), (800, 600), (300, 400)][rng.integers(4)]
    closeup = kind == "closeup"
    bg = tuple(int(v) for v in rng.integers(0, 256, 3)) if closeup else (255, 255, 255)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    labels: list[list[float]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(1 if closeup else int(rng.integers(1, 5))):
        spot = place(rng, w, h, (0.25, 0.475) if closeup else (0.08, 0.3), placed)
        if spot is None:
            continue
        cx, cy, r = spot
        k = int(rng.integers(len(CLASSES)))
        if closeup:
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            while sum(abs(a - b) for a, b in zip(colour, bg, strict=True)) < 150:
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            style = {"fill": colour}
        else:
            style = {"outline": (0, 0, 0), "width": int(rng.integers(1, 4))}
        if CLASSES[k] == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], **style)
            box = (cx - r, cy - r, cx + r, cy + r)
        else:
            p = corners(CLASSES[k], cx, cy, r, rng.uniform(0, 2 * math.pi))
            d.polygon(p, **style)
            xs, ys = [q[0] for q in p], [q[1] for q in p]
            # a turned cross's corners reach 5 % past its arms' tips: keep the box inside
            box = (max(min(xs), 0), max(min(ys), 0), min(max(xs), w), min(max(ys), h))
        cxn, cyn = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
        labels.append([k, cxn, cyn, (box[2] - box[0]) / w, (box[3] - box[1]) / h])
    return img, np.array(labels, np.float64).reshape(-1, 5)


def _fill(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One shape whose box spans 80-97 % of a square canvas, upright or turned, filled
    in colour on white or outlined in black."""
    side = int(rng.choice([256, 400, 512, 640]))
    img = Image.new("RGB", (side, side), (255, 255, 255))
    d = ImageDraw.Draw(img)
    k = int(rng.integers(len(CLASSES)))
    if rng.random() < 0.5:
        style = {"fill": tuple(int(v) for v in rng.integers(0, 200, 3))}
    else:
        style = {"outline": (0, 0, 0), "width": int(rng.integers(1, 4))}
    extent = rng.uniform(0.8, 0.97) * side  # the box's larger side
    if CLASSES[k] == "circle":
        p = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 73)]
    else:
        rot = 0.0 if rng.random() < 0.5 else rng.uniform(0, 2 * math.pi)
        p = corners(CLASSES[k], 0.0, 0.0, 1.0, rot)
    xs, ys = np.array([q[0] for q in p]), np.array([q[1] for q in p])
    scale = extent / max(np.ptp(xs), np.ptp(ys))
    bw, bh = np.ptp(xs) * scale, np.ptp(ys) * scale
    x0, y0 = rng.uniform(0, side - bw), rng.uniform(0, side - bh)
    box = (x0, y0, x0 + bw, y0 + bh)
    if CLASSES[k] == "circle":
        d.ellipse(box, **style)
    else:
        d.polygon(
            [(x0 + (x - xs.min()) * scale, y0 + (y - ys.min()) * scale) for x, y in p], **style
        )
    cx, cy = (box[0] + box[2]) / 2 / side, (box[1] + box[3]) / 2 / side
    return img, np.array([[k, cx, cy, bw / side, bh / side]], np.float64)
