"""Photo-like scenes for the fine-tuning bench, drawn by a renderer of their own (not
``model.shapes``, the default model's training distribution): checkerboard, stripe
and blob backgrounds, filled and outlined shapes at low contrast, clutter lines,
photo sizes from 320x240 to 2016x1512, JPEG (quality 45-95) and PNG, some grayscale,
blur on a third. Classes: the default model's five, plus ``hexagon`` and ``ring``
when asked. Deterministic by seed; writes YOLO data sets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OLD = ["circle", "square", "triangle", "star", "cross"]
NEW = ["hexagon", "ring"]
SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 960), (2016, 1512)]


def _background(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(40, 215, 3)
    other = np.clip(base + rng.choice([-1, 1], 3) * rng.uniform(20, 60, 3), 0, 255)
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    cell = rng.integers(w // 24, w // 6)
    if kind == 0:  # checkerboard
        mask = ((xx // cell + yy // cell) % 2).astype(bool)
    elif kind == 1:  # stripes
        mask = ((xx + yy * rng.uniform(-1, 1)) // cell % 2).astype(bool)
    else:  # soft blobs: a smooth blend of the two colours, no edges
        low = rng.uniform(0, 1, (rng.integers(3, 7), rng.integers(3, 7)))
        blob = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), 3))
        t = (blob.astype(np.float32) / 255)[..., None]
        return Image.fromarray((base + t * (other - base)).astype(np.uint8))
    img = np.where(mask[..., None], other, base).astype(np.uint8)
    return Image.fromarray(img)


def _points(name: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    k = {"square": 4, "triangle": 3, "hexagon": 6, "star": 10, "cross": 12}[name]
    if name == "cross":
        t = 0.35
        base = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
                (-1, t), (-1, -t), (-t, -t)]  # fmt: skip
        pts = np.array(base, float)
    else:
        a = rot + np.arange(k) * 2 * np.pi / k
        rad = np.where(np.arange(k) % 2, 0.45, 1.0) if name == "star" else np.ones(k)
        pts = np.stack([rad * np.cos(a), rad * np.sin(a)], 1)
    if name == "cross":
        c, s = np.cos(rot), np.sin(rot)
        pts = pts @ np.array([[c, -s], [s, c]]).T
    pts = pts / np.abs(pts).max()  # the shape fills its box
    return [(cx + x * r, cy + y * r) for x, y in pts]


def scene(seed: int, classes: list[str]) -> tuple[bytes, str, np.ndarray]:
    """One encoded image (bytes, ".jpg" or ".png") and its ``(k, 5)`` YOLO labels."""
    rng = np.random.default_rng(seed)
    w, h = SIZES[rng.integers(len(SIZES))]
    img = _background(w, h, rng)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 11)):
        draw.line(list(rng.uniform(0, 1, 4) * [w, h, w, h]), fill=tuple(rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 4)))  # fmt: skip
    labels, boxes = [], []
    short = min(w, h)
    for _ in range(rng.integers(1, 8)):
        for _try in range(30):
            name = classes[rng.integers(len(classes))]
            r = rng.uniform(0.05, 0.24) * short / 2
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            box = np.array([cx - r, cy - r, cx + r, cy + r])
            if all(min(box[2], b[2]) < max(box[0], b[0]) or min(box[3], b[3]) < max(box[1], b[1])
                   for b in boxes):  # fmt: skip
                break
        else:
            continue
        pixel = np.asarray(img.getpixel((int(cx), int(cy))), float)
        away = np.where(pixel > 127, -1.0, 1.0)  # contrast of at least 60 levels a channel
        colour = np.clip(pixel + away * rng.uniform(60, 140, 3), 0, 255)
        fill = tuple(int(v) for v in colour)
        outline = rng.random() < 0.3
        width = max(2, int(r * 0.18))
        if name in ("circle", "ring"):
            xy = list(box)
            if name == "ring" or outline:
                draw.ellipse(
                    xy, outline=fill, width=width if name == "circle" else max(3, int(r * 0.3))
                )
            else:
                draw.ellipse(xy, fill=fill)
        else:
            pts = _points(name, cx, cy, r, rng.uniform(0, 2 * np.pi))
            draw.polygon(pts, outline=fill, width=width) if outline else draw.polygon(
                pts, fill=fill
            )
            xs, ys = zip(*pts, strict=True)
            box = np.array([min(xs), min(ys), max(xs), max(ys)])
        boxes.append(box)
        labels.append([classes.index(name), (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h,
                       (box[2] - box[0]) / w, (box[3] - box[1]) / h])  # fmt: skip
    if rng.random() < 1 / 3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * short / 480))
    if rng.random() < 0.15:
        img = img.convert("L")
    buf = io.BytesIO()
    if rng.random() < 0.25:
        img.save(buf, format="PNG", compress_level=1)
        ext = ".png"
    else:
        img.save(buf, format="JPEG", quality=int(rng.integers(45, 96)))
        ext = ".jpg"
    return buf.getvalue(), ext, np.array(labels, float).reshape(-1, 5)


def write_scenes(root: str | Path, n: int, seed: int, classes: list[str]) -> Path:
    """``n`` scenes as a YOLO data set (images/, labels/, data.yaml) under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data, ext, lab = scene(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]), classes)
        (root / "images" / f"{i:05d}{ext}").write_bytes(data)
        rows = [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, x, y, bw, bh in lab]
        (root / "labels" / f"{i:05d}.txt").write_text("\n".join(rows) + "\n" if rows else "")
    (root / "data.yaml").write_text("names: [" + ", ".join(classes) + "]\n")
    return root
