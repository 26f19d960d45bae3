"""Shapes drawn by another program: OpenCV's filled primitives (``cv2.circle``,
``cv2.rectangle``, ``cv2.fillPoly``) on flat backgrounds with clutter lines, slight
blur, sizes 640x480 to 1280x720, JPEG and PNG. Neither ``model.shapes`` (the default
model's training data) nor ``bench/scenes.py`` (the fine-tuning bench's) drew them.
Classes: the default model's five plus ``pentagon``. Deterministic by seed; writes a
YOLO data set in Roboflow's layout (``train/images``, ``valid/images``, data.yaml).
Used by ``make bench`` (a fine-tuning job on them) and the default model's tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ["circle", "square", "triangle", "star", "cross", "pentagon"]
SIZES = [(640, 480), (1024, 768), (800, 600), (1280, 720)]


def _polygon(cx: int, cy: int, r: int, name: str) -> np.ndarray:
    """Corners of ``name`` around (cx, cy), ``r`` from the centre to its tips."""
    if name == "cross":
        t = r // 3
        return np.array(
            [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
             (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
             (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)],
            np.int32,
        )  # fmt: skip
    corners, inner = {"triangle": (3, None), "star": (10, 0.45), "pentagon": (5, None)}[name]
    a = -np.pi / 2 + np.arange(corners) * 2 * np.pi / corners
    rr = np.where(np.arange(corners) % 2 == 1, r * inner, r) if inner else np.full(corners, r)
    return np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1).astype(np.int32)


Label = tuple[int, float, float, float, float]  # (class, cx, cy, w, h), normalised


def draw(rng: np.random.Generator, classes: list[str] = CLASSES) -> tuple[np.ndarray, list[Label]]:
    """One BGR image of ``classes`` and its YOLO labels (class ids index ``CLASSES``)."""
    w, h = SIZES[rng.integers(len(SIZES))]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(120, 256, 3)
    for _ in range(rng.integers(0, 6)):
        p, q = rng.integers(0, [w, h], (2, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), colour, int(rng.integers(1, 4)))
    labels, taken = [], []
    for _ in range(rng.integers(1, 5)):
        for _try in range(20):  # a place that overlaps no other shape
            r = int(rng.uniform(0.06, 0.18) * min(w, h))
            cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3] for o in taken):
                break
        else:
            continue
        k = CLASSES.index(classes[rng.integers(len(classes))])
        colour = tuple(int(v) for v in rng.integers(0, 100, 3))
        if CLASSES[k] == "circle":
            cv2.circle(img, (cx, cy), r, colour, -1)
            x1, y1, x2, y2 = box
        elif CLASSES[k] == "square":
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            x1, y1, x2, y2 = box
        else:
            p = _polygon(cx, cy, r, CLASSES[k])
            cv2.fillPoly(img, [p], colour)
            (x1, y1), (x2, y2) = p.min(0), p.max(0)
        taken.append(box)
        labels.append((k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
    return cv2.GaussianBlur(img, (3, 3), 0), labels


def _write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, labels = draw(rng)
        ext = ".png" if i % 3 == 0 else ".jpg"
        cv2.imwrite(str(root / split / "images" / f"{i:05d}{ext}"), img)
        rows = [f"{k} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for k, x, y, bw, bh in labels]
        (root / split / "labels" / f"{i:05d}.txt").write_text("".join(rows))


def write_opencv_set(root: str | Path, train: int, valid: int, seed: int) -> Path:
    """A data set of ``train`` images and, when ``valid``, a ``valid`` split."""
    root, rng = Path(root), np.random.default_rng(seed)
    _write_split(root, "train", train, rng)
    yaml = "train: train/images\n"
    if valid:
        _write_split(root, "valid", valid, rng)
        yaml += "val: valid/images\n"
    (root / "data.yaml").write_text(yaml + "names: [" + ", ".join(CLASSES) + "]\n")
    return root
