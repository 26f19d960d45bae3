"""A synthetic "shapes" detection data set, deterministic by seed (NumPy + Pillow, no torch).

Five classes: circle, square, triangle, star, cross, drawn on photo-like scenes whose
difficulty is set by a :class:`Level`: flat, gradient, noisy, sine-textured, blotchy,
checkerboard, striped and soft-blob backgrounds; filled or outlined shapes whose
luminance differs from what lies around them by as little as ``min_contrast`` levels
(so they stay visible in grayscale); clutter lines; shapes that overlap (occlusion)
or run off the image's border; pixel noise, colour casts, blur; any aspect ratio and
size from thumbnails to photos; saved as JPEG at varied quality or PNG, some
grayscale. ``LEVELS`` holds the training mixtures (``"train"``, and
``"train-closeups"`` for the default model's second stage) and the published held-out
levels (``"easy"``, ``"medium"``, ``"hard"``, ``"closeup"``); docs/shapes.png shows them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross"]
BACKGROUNDS = (
    "flat",
    "gradient",
    "noisy",
    "texture",
    "blotches",
    "checker",
    "stripes",
    "blobs",
)
# Luminance of an RGB colour (ITU-R 601, what Pillow's convert("L") uses).
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Level:
    """The ranges one image's settings are drawn from (probabilities are per image,
    or per object where the name says so)."""

    backgrounds: tuple[str, ...] = BACKGROUNDS
    short_side: tuple[int, int] = (160, 800)  # pixels, log-uniform
    max_aspect: float = 2.0  # long side / short side at most
    objects: tuple[int, int] = (0, 7)  # inclusive
    object_size: tuple[float, float] = (0.05, 0.45)  # larger extent / image's short side
    min_contrast: float = 50.0  # luminance levels between a shape and its surroundings
    outline: float = 0.3  # per object: drawn as an outline, not filled
    outline_width: tuple[float, float] = (0.06, 0.12)  # an outline's width / the shape's size
    clutter: tuple[int, int] = (0, 10)  # lines, inclusive
    occlusion: float = 0.3  # largest overlap (of the smaller box) between two objects
    border: float = 0.3  # per object: may run off the image (at least 60 % stays in)
    blur: float = 0.33
    noise: float = 0.3
    colour_cast: float = 0.3
    gray: float = 0.15
    png: float = 0.2
    jpeg_quality: tuple[int, int] = (35, 95)
    # per image: a close-up instead, of 1-2 objects of closeup_size (what a user draws
    # when one shape fills the picture)
    closeup: float = 0.0
    closeup_size: tuple[float, float] = (0.45, 0.98)
    # per close-up: one shape filling a near-square canvas (aspect up to fill_aspect)
    # to fill_size of its short side, as a user draws one shape to try a model
    fill: float = 0.0
    fill_size: tuple[float, float] = (0.8, 1.0)
    fill_aspect: float = 1.15


LEVELS: dict[str, Level] = {
    # What the default model trains on: every kind of variation, each range wider than
    # the hardest published level's, and easy scenes among them.
    "train": Level(),
    "easy": Level(
        backgrounds=("flat", "gradient"),
        short_side=(240, 640),
        objects=(1, 4),
        object_size=(0.12, 0.40),
        min_contrast=100,
        outline=0.0,
        clutter=(0, 0),
        occlusion=0.0,
        border=0.0,
        blur=0.0,
        noise=0.0,
        colour_cast=0.0,
        gray=0.0,
        png=0.0,
        jpeg_quality=(85, 95),
    ),
    "medium": Level(
        backgrounds=("flat", "gradient", "noisy", "texture", "blotches"),
        short_side=(240, 1080),
        objects=(1, 6),
        object_size=(0.08, 0.35),
        min_contrast=80,
        outline=0.2,
        clutter=(0, 5),
        occlusion=0.15,
        border=0.15,
        blur=0.25,
        noise=0.2,
        colour_cast=0.2,
        gray=0.1,
        png=0.1,
        jpeg_quality=(60, 95),
    ),
    # The scenes a user's first photo-like image meets: textured backgrounds, low
    # contrast, small objects, photo sizes up to 2016x1512.
    "hard": Level(
        backgrounds=BACKGROUNDS,
        short_side=(240, 1512),
        max_aspect=16 / 9,
        objects=(1, 7),
        object_size=(0.05, 0.24),
        min_contrast=60,
        jpeg_quality=(45, 95),
        png=0.25,
    ),
    # The second stage of the default model's training: the mixture above with three in
    # ten close-ups, seven in ten of them filling the canvas, and outlines down to 1.5 %
    # of the shape (a 1-pixel pen on a drawing).
    "train-closeups": Level(closeup=0.3, fill=0.7, outline_width=(0.015, 0.12)),
    # Held out: close-ups only, 1-2 shapes of 45-98 % of the short side or one filling a
    # near-square canvas, every background.
    "closeup": Level(closeup=1.0, fill=0.4, outline_width=(0.015, 0.12)),
}


@dataclass
class Sample:
    image: Image.Image  # RGB, decoded from ``encoded``
    labels: np.ndarray  # (k, 5) float64: class_id, cx, cy, w, h (fractions of the image)
    encoded: bytes  # the image file: JPEG or PNG (``suffix``)
    suffix: str  # ".jpg" or ".png"


def _outline(cls: str, rng: np.random.Generator) -> np.ndarray:
    """``(P, 2)`` unit-size outline (points in [-0.5, 0.5]) of one shape, before rotation;
    a circle is a 72-gon (for its box when the border cuts it; it is drawn as an ellipse)."""
    if cls == "circle":
        a = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        return 0.5 * np.stack([np.cos(a), np.sin(a)], 1)
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
        q = [(-t, -0.5), (t, -0.5), (t, -t), (0.5, -t), (0.5, t), (t, t)]
        q += [(t, 0.5), (-t, 0.5), (-t, t), (-0.5, t), (-0.5, -t), (-t, -t)]
        return np.array(q)
    raise ValueError(cls)


def _clip_polygon(pts: np.ndarray, w: float, h: float) -> np.ndarray:
    """``(P, 2)`` polygon clipped to the rectangle [0, w] x [0, h] (Sutherland-Hodgman);
    ``(0, 2)`` when nothing is left."""
    for axis, limit, keep_below in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        if not len(pts):
            break

        def inside(p: np.ndarray, axis: int = axis, limit: float = limit, kb: bool = keep_below):
            return p[axis] <= limit if kb else p[axis] >= limit

        out = []
        for i in range(len(pts)):
            cur, prev = pts[i], pts[i - 1]
            if inside(cur) != inside(prev):
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if inside(cur):
                out.append(cur)
        pts = np.array(out).reshape(-1, 2)
    return pts


def _background(w: int, h: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` float32 in [0, 255]."""
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
        f = rng.uniform(0.02, 0.3) * 480 / min(w, h)
        ang = rng.uniform(0, np.pi)
        t = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * f)
        if rng.random() < 0.5:
            t = t * np.sin((xx * np.sin(ang) - yy * np.cos(ang)) * f)
        img = (c1 + c2) / 2 + t[..., None] * (c2 - c1) / 2 * rng.uniform(0.2, 0.6)
    elif kind in ("checker", "stripes"):
        # Two colours 20-60 levels apart a channel: edges everywhere, none a shape.
        c2 = np.clip(c1 + rng.choice([-1, 1], 3) * rng.uniform(20, 60, 3), 0, 255)
        cell = rng.uniform(1 / 24, 1 / 6) * w
        if kind == "checker":
            mask = ((xx // cell + yy // cell) % 2).astype(bool)
        else:
            mask = ((xx + yy * rng.uniform(-1, 1)) // cell % 2).astype(bool)
        img = np.where(mask[..., None], c2, c1).astype(np.float32)
    else:  # "blotches": coloured; "blobs": a soft blend of two colours
        k = (int(rng.integers(2, 8)), int(rng.integers(2, 8)))
        if kind == "blotches":
            low = rng.uniform(0, 255, (*k, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
            img = img * 0.5 + c1 * 0.5
        else:
            low = (rng.uniform(0, 1, k) * 255).astype(np.uint8)
            t = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32) / 255
            img = c1 + t[..., None] * (c2 - c1)
    return np.clip(img, 0, 255)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: how much of one hides the other."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def _colour(around: np.ndarray, min_contrast: float, rng: np.random.Generator) -> tuple:
    """A colour whose luminance is at least ``min_contrast`` from both the darker and the
    lighter parts of ``around`` (``(n, 3)`` pixels), or the best of 30 tries."""
    lum = around @ _LUMA
    lo, hi = np.percentile(lum, [10, 90]) if len(lum) else (127.0, 127.0)
    best, best_c = -1.0, None
    for _ in range(30):
        c = rng.uniform(0, 255, 3)
        y = c @ _LUMA
        contrast = min(abs(y - lo), abs(y - hi)) if not lo <= y <= hi else 0.0
        if contrast >= min_contrast:
            return tuple(int(v) for v in c)
        if contrast > best:
            best, best_c = contrast, c
    # None far enough: push the best one away from the background's luminance.
    y = best_c @ _LUMA
    shift = (hi + min_contrast - y) if (hi + lo) / 2 < 128 else (lo - min_contrast - y)
    return tuple(int(v) for v in np.clip(best_c + shift, 0, 255))


def _size(level: Level, rng: np.random.Generator, max_aspect: float) -> tuple[int, int]:
    lo, hi = level.short_side
    short = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
    return (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))


def make_sample(seed: int, level: str | Level = "train") -> Sample:
    """One image and its labels; the same seed and level always give the same sample."""
    lv = LEVELS[level] if isinstance(level, str) else level
    rng = np.random.default_rng(seed)
    # No draw at all where a level has no close-ups: the other levels' samples stay
    # what they were for the same seed (the default model's first stage trained on them).
    closeup = lv.closeup > 0 and rng.random() < lv.closeup
    filling = closeup and lv.fill > 0 and rng.random() < lv.fill
    w, h = _size(lv, rng, lv.fill_aspect if filling else lv.max_aspect)
    short = min(w, h)
    bg = _background(w, h, lv.backgrounds[rng.integers(len(lv.backgrounds))], rng)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(lv.clutter[0], lv.clutter[1] + 1)):
        pts = rng.uniform(0, 1, 4) * [w, h, w, h]
        draw.line(
            list(pts),
            fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
            width=max(1, int(rng.integers(1, 4) * short / 480)),
        )
    placed: list[np.ndarray] = []
    labels = []
    if filling:
        count, sizes = 1, lv.fill_size
    elif closeup:
        count, sizes = rng.integers(1, 3), lv.closeup_size
    else:
        count, sizes = rng.integers(lv.objects[0], lv.objects[1] + 1), lv.object_size
    for _ in range(count):
        for _attempt in range(30):
            cls_id = int(rng.integers(0, len(CLASS_NAMES)))
            size = rng.uniform(*sizes) * short
            rot = rng.uniform(0, 2 * np.pi)
            shape = _outline(CLASS_NAMES[cls_id], rng)
            rmat = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
            pts = shape @ rmat.T
            pts *= size / np.ptp(pts, axis=0).max()  # the larger extent is `size`
            half = np.ptp(pts, axis=0) / 2
            # anywhere: up to 40 % of the box off the image (a filling shape stays whole)
            if rng.random() < lv.border and not filling:
                cx, cy = rng.uniform([0, 0], [w, h])
            else:
                cx, cy = rng.uniform(half, [w - half[0], h - half[1]])
            pts_abs = pts - pts.mean(0) + [cx, cy]
            full = np.r_[pts_abs.min(0), pts_abs.max(0)]
            visible = _clip_polygon(pts_abs, w, h)
            if len(visible) < 3:
                continue
            box = np.r_[visible.min(0), visible.max(0)]
            area = (full[2] - full[0]) * (full[3] - full[1])
            if (box[2] - box[0]) * (box[3] - box[1]) < 0.6 * area:
                continue
            if any(_overlap(box, p) > lv.occlusion for p in placed):
                continue
            x1, y1, x2, y2 = (int(v) for v in np.clip(full, 0, [w, h, w, h]))
            around = bg[y1 : y2 + 1, x1 : x2 + 1].reshape(-1, 3)
            fill = _colour(around, lv.min_contrast, rng)
            outline_only = rng.random() < lv.outline
            # At least 1 pixel where a level draws thin outlines, else 2 as before (the
            # first stage's samples stay the same).
            thinnest = 1 if lv.outline_width[0] < 0.06 else 2
            width = int(max(thinnest, size * rng.uniform(*lv.outline_width)))
            if CLASS_NAMES[cls_id] == "circle":
                c = pts_abs.mean(0)
                xy = [c[0] - size / 2, c[1] - size / 2, c[0] + size / 2, c[1] + size / 2]
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
                [
                    cls_id,
                    (box[0] + box[2]) / 2 / w,
                    (box[1] + box[3]) / 2 / h,
                    (box[2] - box[0]) / w,
                    (box[3] - box[1]) / h,
                ]  # fmt: skip
            )
            break
    img = _finish(img, lv, rng)
    buf = io.BytesIO()
    if rng.random() < lv.png:
        img.save(buf, format="PNG", compress_level=1)
        suffix = ".png"
    else:
        img.save(buf, format="JPEG", quality=int(rng.integers(*lv.jpeg_quality, endpoint=True)))
        suffix = ".jpg"
    encoded = buf.getvalue()
    decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
    lab = np.array(labels, dtype=np.float64).reshape(-1, 5)
    lab[:, 1:] = np.clip(lab[:, 1:], 0.0, 1.0)
    return Sample(decoded, lab, encoded, suffix)


def _finish(img: Image.Image, lv: Level, rng: np.random.Generator) -> Image.Image:
    """What a camera and its file add: colour cast, noise, blur, grayscale."""
    short = min(img.size)
    if rng.random() < lv.colour_cast or rng.random() < lv.noise:
        a = np.asarray(img, np.float32)
        if rng.random() < lv.colour_cast:
            a = a * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3)
        if rng.random() < lv.noise:
            a = a + rng.normal(0, rng.uniform(3, 15), a.shape).astype(np.float32)
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < lv.blur:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * short / 480))
    if rng.random() < lv.gray:
        img = img.convert("L")
    return img


def sample_seed(split_seed: int, index: int) -> int:
    """Seed of image ``index`` of a split; splits with different seeds never share images."""
    return int(np.random.SeedSequence([split_seed, index]).generate_state(1)[0])


def picture_grid(seed: int, per_level: int = 6, tile: int = 224) -> Image.Image:
    """A row of ``per_level`` samples per level, labels drawn, each image squeezed into a
    ``tile`` x ``tile`` square as the network sees it (docs/shapes.png)."""
    from PIL import ImageFont

    names = list(LEVELS)
    margin = 120
    grid = Image.new("RGB", (margin + tile * per_level, tile * len(names)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=15)
    for row, name in enumerate(names):
        draw.text((6, row * tile + tile // 2 - 8), name, fill="black", font=font)
        for col in range(per_level):
            s = make_sample(sample_seed(seed, col), name)
            im = s.image.resize((tile, tile), Image.BILINEAR)
            d = ImageDraw.Draw(im)
            for _c, cx, cy, w, h in s.labels:
                box = [
                    (cx - w / 2) * tile,
                    (cy - h / 2) * tile,
                    (cx + w / 2) * tile,
                    (cy + h / 2) * tile,
                ]
                d.rectangle(box, outline=(255, 0, 0), width=1)
            grid.paste(im, (margin + col * tile, row * tile))
    return grid


def write_yolo_dataset(root: str, n: int, seed: int, level: str = "train") -> None:
    """Write ``n`` samples as a YOLO-txt data set (images/, labels/, data.yaml)."""
    from pathlib import Path

    base = Path(root)
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = make_sample(sample_seed(seed, i), level)
        (base / "images" / f"{i:06d}{s.suffix}").write_bytes(s.encoded)
        lines = [f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}" for r in s.labels]
        (base / "labels" / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    (base / "data.yaml").write_text(f"names:\n{names}\n")
