"""A synthetic "shapes" detection data set, deterministic by seed (NumPy + Pillow, no torch).

Five classes: circle, square, triangle, star, cross. Images of varied size and
aspect ratio; gradient, noisy and textured backgrounds; clutter lines; filled
or outlined shapes in any colour that stands out from the background around
them; objects 10-45% of the short side, rotated, sometimes blurred; saved as
JPEG at varied quality; 0-6 objects per image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross"]


@dataclass
class Sample:
    image: Image.Image  # RGB, decoded from the JPEG it was saved as
    labels: np.ndarray  # (k, 5) float64: class_id, cx, cy, w, h (fractions of the image)
    jpeg: bytes


def _polygon(cls: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size outline (points in [-0.5, 0.5]) of one shape, before rotation."""
    if cls == "square":
        return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    if cls == "triangle":
        a = np.deg2rad([90, 210, 330]) + rng.uniform(-0.12, 0.12, 3)
        return 0.5 * np.stack([np.cos(a), -np.sin(a)], 1)
    if cls == "star":
        inner = rng.uniform(0.35, 0.55)
        a = np.deg2rad(90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * inner)
        return np.stack([r * np.cos(a), -r * np.sin(a)], 1)
    if cls == "cross":
        t = rng.uniform(0.1, 0.2)  # half the arm thickness
        return np.array(
            [
                [-t, -0.5],
                [t, -0.5],
                [t, -t],
                [0.5, -t],
                [0.5, t],
                [t, t],
                [t, 0.5],
                [-t, 0.5],
                [-t, t],
                [-0.5, t],
                [-0.5, -t],
                [-t, -t],
            ]
        )
    raise ValueError(cls)


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(["flat", "gradient", "noisy", "texture", "blotches"])
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        img = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind in ("gradient", "noisy"):
        ang = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(np.ptp(t), 1)
        img = c1 + t[..., None] * (c2 - c1)
        if kind == "noisy":
            img = img + rng.normal(0, rng.uniform(8, 30), (h, w, 3))
    elif kind == "texture":
        f = rng.uniform(0.02, 0.3)
        ang = rng.uniform(0, np.pi)
        t = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * f)
        if rng.random() < 0.5:
            t = t * np.sin((xx * np.sin(ang) - yy * np.cos(ang)) * f)
        img = (c1 + c2) / 2 + t[..., None] * (c2 - c1) / 2 * rng.uniform(0.2, 0.6)
    else:
        low = rng.uniform(0, 255, (rng.integers(2, 8), rng.integers(2, 8), 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
        img = img * 0.5 + c1 * 0.5
    return np.clip(img, 0, 255)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: how much of one hides the other."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def make_sample(seed: int, *, max_objects: int = 6) -> Sample:
    """One image and its labels; the same seed always gives the same sample."""
    rng = np.random.default_rng(seed)
    short = int(rng.integers(160, 481))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    bg = _background(w, h, rng)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 6)):  # clutter lines
        pts = rng.uniform(0, 1, 4) * [w, h, w, h]
        draw.line(
            list(pts),
            fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
            width=int(rng.integers(1, 4)),
        )
    n = int(rng.integers(0, max_objects + 1))
    placed: list[np.ndarray] = []
    labels = []
    for _ in range(n):
        for _attempt in range(20):
            cls_id = int(rng.integers(0, len(CLASS_NAMES)))
            size = rng.uniform(0.10, 0.45) * min(w, h)
            rot = rng.uniform(0, 2 * np.pi)
            if CLASS_NAMES[cls_id] == "circle":
                pts = None
                half = np.array([size / 2, size / 2])
            else:
                poly = _polygon(CLASS_NAMES[cls_id], rng) * size
                rmat = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
                pts = poly @ rmat.T
                # Rescale so the rotated shape's larger extent is `size`.
                pts *= size / np.ptp(pts, axis=0).max()
                half = None
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            if pts is not None:
                pts_abs = pts + [cx, cy]
                x1, y1 = pts_abs.min(0)
                x2, y2 = pts_abs.max(0)
            else:
                x1, y1, x2, y2 = cx - half[0], cy - half[1], cx + half[0], cy + half[1]
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                continue
            box = np.array([x1, y1, x2, y2])
            if any(_overlap(box, p) > 0.2 for p in placed):
                continue
            region = bg[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1].reshape(-1, 3).mean(0)
            for _c in range(20):
                colour = rng.uniform(0, 255, 3)
                if np.linalg.norm(colour - region) > 90:
                    break
            fill = tuple(int(v) for v in colour)
            outline_only = rng.random() < 0.2
            width = int(max(2, size * rng.uniform(0.05, 0.12)))
            if pts is None:
                xy = [x1, y1, x2, y2]
                if outline_only:
                    draw.ellipse(xy, outline=fill, width=width)
                else:
                    draw.ellipse(xy, fill=fill)
            else:
                flat = [tuple(p) for p in pts_abs]
                if outline_only:
                    draw.polygon(flat, outline=fill, width=width)
                else:
                    draw.polygon(flat, fill=fill)
            placed.append(box)
            labels.append(
                [cls_id, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
            )
            break
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(35, 96)))
    jpeg = buf.getvalue()
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    lab = np.array(labels, dtype=np.float64).reshape(-1, 5)
    lab[:, 1:] = np.clip(lab[:, 1:], 0.0, 1.0)
    return Sample(decoded, lab, jpeg)


def sample_seed(split_seed: int, index: int) -> int:
    """Seed of image ``index`` of a split; splits with different seeds never share images."""
    return int(np.random.SeedSequence([split_seed, index]).generate_state(1)[0])


def write_yolo_dataset(root: str, n: int, seed: int) -> None:
    """Write ``n`` samples as a YOLO-txt data set (images/, labels/, data.yaml)."""
    from pathlib import Path

    base = Path(root)
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = make_sample(sample_seed(seed, i))
        (base / "images" / f"{i:06d}.jpg").write_bytes(s.jpeg)
        lines = [f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}" for r in s.labels]
        (base / "labels" / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    (base / "data.yaml").write_text(f"names:\n{names}\n")
