"""Detection data sets: YOLO txt, Pascal VOC XML, COCO JSON and the synthetic shapes
(NumPy + Pillow, no torch).

Every reader returns a :class:`DetectionDataset` of records with labels as
``(k, 5)`` arrays ``(class_id, cx, cy, w, h)`` in fractions of the image, and
a list of what it skipped and why; nothing is dropped silently. Boxes that stick
out of the image are clipped to it (and counted); boxes narrower or lower than
``MIN_BOX`` of the image are skipped, as darknet drops them.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from model.preprocess import resize_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_BOX = 0.005  # darknet's fill_truth_detection drops boxes with w or h below this


@dataclass
class Record:
    image_path: Path | None
    labels: np.ndarray  # (k, 5): class_id, cx, cy, w, h (fractions of the image)
    difficult: np.ndarray  # (k,) bool
    size: tuple[int, int] = (0, 0)  # (width, height) in pixels, when known
    image: Image.Image | None = None  # in-memory images (the shapes generator)
    split: str | None = None  # "train" | "val" | "test" when the data set names its splits


@dataclass
class DetectionDataset:
    class_names: list[str]
    records: list[Record]
    skipped: list[str] = field(default_factory=list)  # "where: why"
    clipped: int = 0  # boxes that stuck out of their image, clipped to it

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> dict:
        counts = np.zeros(len(self.class_names), dtype=int)
        for r in self.records:
            np.add.at(counts, r.labels[:, 0].astype(int), 1)
        return {
            "images": len(self.records),
            "boxes": int(counts.sum()),
            "boxes_per_class": dict(zip(self.class_names, counts.tolist(), strict=True)),
            "clipped": self.clipped,
            "skipped": list(self.skipped),
        }


class _Boxes:
    """One reader's box checks: clip to the image, skip what is too small, keep count."""

    def __init__(self, skipped: list[str]) -> None:
        self.skipped = skipped
        self.clipped = 0

    def label(
        self,
        where: str,
        cls: int,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        cxcywh: tuple[float, ...] | None = None,
    ) -> list[float] | None:
        """Corners in fractions of the image -> ``[cls, cx, cy, w, h]``, or None (skipped).
        ``cxcywh``: the same box as the file wrote it, kept as it is when not clipped."""
        if not all(np.isfinite((x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
            self.skipped.append(f"{where}: not a box")
            return None
        c = np.clip([x1, y1, x2, y2], 0.0, 1.0)
        if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
            self.skipped.append(f"{where}: box outside the image")
            return None
        if c[2] - c[0] < MIN_BOX or c[3] - c[1] < MIN_BOX:
            self.skipped.append(f"{where}: box smaller than {MIN_BOX} of the image")
            return None
        if (c == [x1, y1, x2, y2]).all() and cxcywh is not None:
            return [cls, *cxcywh]
        self.clipped += bool((c != [x1, y1, x2, y2]).any())
        return [cls, (c[0] + c[2]) / 2, (c[1] + c[3]) / 2, c[2] - c[0], c[3] - c[1]]

    def finish(self, class_names, records) -> DetectionDataset:
        return DetectionDataset(list(class_names), records, self.skipped, self.clipped)


def _labels_array(rows: list) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _yolo_names(root: Path) -> tuple[list[str], dict]:
    """Class names (and the whole ``data.yaml``, or {}) of a YOLO data set."""
    if (root / "data.yaml").exists():
        try:
            doc = yaml.safe_load((root / "data.yaml").read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"data.yaml is not valid YAML ({exc})") from exc
        if not isinstance(doc, dict):
            raise ValueError("data.yaml must be a mapping with 'names'")
        names = doc.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
        if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
            raise ValueError("data.yaml 'names' must be a list or an index -> name map")
        return [str(n) for n in names], doc
    for name in ("classes.txt", "obj.names"):  # obj.names: CVAT's YOLO 1.1 export
        if (root / name).exists():
            text = (root / name).read_text()
            return [n.strip() for n in text.splitlines() if n.strip()], {}
    raise ValueError("no data.yaml, classes.txt or obj.names with the class names")


def _inside(root: Path, entry: str) -> Path | None:
    """A ``data.yaml`` split entry as a folder inside the data set, or None. Roboflow
    writes ``../train/images`` relative to the data set root; Ultralytics resolves it
    against ``path`` or the root."""
    for cand in (entry, entry.removeprefix("../"), entry.removeprefix("./")):
        p = (root / cand).resolve()
        if p.is_relative_to(root.resolve()) and p.exists():
            return p
    return None


def _yolo_splits(root: Path, doc: dict) -> list[tuple[str | None, Path]]:
    """(split, images folder) pairs: ``data.yaml``'s train/val/test when it names
    them (Ultralytics, Roboflow, CVAT export), else ``images/`` with no split."""
    base = root / str(doc.get("path") or ".") if doc.get("path") else root
    pairs = []
    for split in ("train", "val", "test"):
        entries = doc.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            folder = _inside(base, str(entry)) or _inside(root, str(entry))
            if folder is not None and folder.is_dir():
                pairs.append((split, folder))
    if not pairs:  # CVAT: obj_train_data/, obj_valid_data/ ... with labels beside images
        pairs = [(_split_of(d.name), d) for d in sorted(root.glob("obj_*_data")) if d.is_dir()]
    return pairs or [(None, root / "images")]


def read_yolo(root: str | Path) -> DetectionDataset:
    """YOLO txt labels (one ``class cx cy w h`` line per box, fractions) beside images:
    ``images/`` and ``labels/``, or the splits ``data.yaml`` names (``train``/``val``/
    ``test``, folders or lists of folders; labels in the ``labels`` folder beside each
    ``images`` folder). Class names from ``data.yaml`` (``names``: a list or an
    index->name map) or ``classes.txt``."""
    root = Path(root)
    try:
        names, doc = _yolo_names(root)
    except ValueError as exc:
        raise ValueError(f"{root.name}: {exc}") from exc
    if not names:
        raise ValueError(f"{root.name}: no class names")
    records, skipped = [], []
    boxes = _Boxes(skipped)
    folders = _yolo_splits(root, doc)
    for split, image_dir in folders:
        label_dir = image_dir.parent / "labels" if image_dir.name == "images" else image_dir
        if image_dir.is_dir():
            _read_yolo_folder(root, image_dir, label_dir, split, len(names), records, boxes)
    if not records:
        where = ", ".join(str(f.relative_to(root)) for _, f in folders if f.is_relative_to(root))
        skipped.append(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {where or 'images/'}; a YOLO "
            "data set has images/ and labels/, or data.yaml naming train/val folders"
        )
    return boxes.finish(names, records)


def _read_yolo_folder(root, image_dir, label_dir, split, C, records, boxes) -> None:
    skipped = boxes.skipped
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for img_path in images:
        rel = img_path.relative_to(image_dir)
        lab_path = (label_dir / rel).with_suffix(".txt")
        rows = []
        if lab_path.exists():
            for n, line in enumerate(lab_path.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{lab_path.relative_to(root)}:{n}"
                try:
                    c, cx, cy, w, h = (float(v) for v in parts[:5])
                    if len(parts) != 5:
                        raise ValueError
                except ValueError:
                    skipped.append(f"{where}: not 'class cx cy w h'")
                    continue
                if c != int(c) or not 0 <= c < C:
                    skipped.append(f"{where}: unknown class {parts[0]}")
                    continue
                corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                row = boxes.label(where, int(c), *corners, cxcywh=(cx, cy, w, h))
                if row is not None:
                    rows.append(row)
        try:
            with Image.open(img_path) as im:
                size = im.size
        except Exception:
            skipped.append(f"{img_path.relative_to(root)}: unreadable image")
            continue
        records.append(
            Record(img_path, _labels_array(rows), np.zeros(len(rows), bool), size, split=split)
        )
    for lab_path in sorted(label_dir.rglob("*.txt")) if label_dir.exists() else []:
        stem = lab_path.relative_to(label_dir).with_suffix("")
        if not any((image_dir / stem).with_suffix(s).exists() for s in IMAGE_SUFFIXES):
            skipped.append(f"{lab_path.relative_to(root)}: missing image")


def read_voc(root: str | Path, split: str | None = None, class_names: list[str] | None = None):
    """Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, optional
    ``ImageSets/Main/<split>.txt``. Pixel boxes (1-based, inclusive, as VOC writes
    them) become fractions; ``difficult`` flags are kept for evaluation."""
    root = Path(root)
    ann_dir = root / "Annotations"
    if split and (root / "ImageSets" / "Main" / f"{split}.txt").exists():
        ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        xmls = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    parsed, skipped = [], []
    boxes = _Boxes(skipped)
    for x in xmls:
        try:
            parsed.append((x, ET.parse(x).getroot()))
        except (ET.ParseError, FileNotFoundError) as exc:
            skipped.append(f"{x.relative_to(root)}: unreadable annotation ({exc})")
    if class_names is None:
        class_names = sorted(
            {o.findtext("name", "").strip() for _, r in parsed for o in r.iter("object")} - {""}
        )
    index = {n: i for i, n in enumerate(class_names)}
    records = []
    for x, r in parsed:
        fname = r.findtext("filename") or f"{x.stem}.jpg"
        img_path = root / "JPEGImages" / fname
        if not img_path.resolve().is_relative_to(root.resolve()):
            skipped.append(f"{x.relative_to(root)}: image {fname!r} is outside the data set")
            continue
        if not img_path.exists():
            skipped.append(f"{x.relative_to(root)}: missing image {fname}")
            continue
        size = r.find("size")
        try:
            W, H = int(size.findtext("width")), int(size.findtext("height"))
        except (AttributeError, TypeError, ValueError):
            with Image.open(img_path) as im:
                W, H = im.size
        rows, diff = [], []
        for k, o in enumerate(r.iter("object")):
            name = o.findtext("name", "").strip()
            where = f"{x.relative_to(root)} object {k}"
            if name not in index:
                skipped.append(f"{where}: unknown class {name!r}")
                continue
            bb = o.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                skipped.append(f"{where}: no valid bndbox")
                continue
            x1, y1 = x1 - 1, y1 - 1  # VOC pixels are 1-based and inclusive
            row = boxes.label(where, index[name], x1 / W, y1 / H, x2 / W, y2 / H)
            if row is None:
                continue
            rows.append(row)
            diff.append(o.findtext("difficult", "0").strip() == "1")
        records.append(Record(img_path, _labels_array(rows), np.array(diff, bool), (W, H)))
    return boxes.finish(class_names, records)


def read_coco(
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    root: str | Path | None = None,
    split: str | None = None,
):
    """COCO JSON (``images``, ``annotations`` with ``bbox`` = x, y, w, h in pixels,
    ``categories``). Crowd annotations are kept as difficult. An image whose file would
    lie outside ``root`` (default: the JSON's folder) is skipped."""
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir else annotation_file.parent / "images"
    root = Path(root) if root else annotation_file.parent
    try:
        doc = json.loads(annotation_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{annotation_file}: not a readable COCO JSON file ({exc})") from exc
    cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    class_names = [c["name"] for c in cats]
    index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list] = {}
    for a in doc.get("annotations", []):
        by_image.setdefault(a.get("image_id"), []).append(a)
    records, skipped = [], []
    boxes = _Boxes(skipped)
    for im in doc.get("images", []):
        path = image_dir / str(im.get("file_name", ""))
        if not path.resolve().is_relative_to(root.resolve()):
            skipped.append(f"image {im.get('file_name')!r}: outside the data set")
            continue
        if not path.is_file():
            skipped.append(f"image {im['file_name']}: missing image")
            continue
        try:
            W, H = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            with Image.open(path) as opened:
                W, H = opened.size
        rows, diff = [], []
        for a in by_image.get(im["id"], []):
            where = f"annotation {a.get('id')}"
            if a.get("category_id") not in index:
                skipped.append(f"{where}: unknown class {a.get('category_id')}")
                continue
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                skipped.append(f"{where}: no valid bbox [x, y, w, h]")
                continue
            row = boxes.label(
                where, index[a["category_id"]], x / W, y / H, (x + w) / W, (y + h) / H
            )
            if row is None:
                continue
            rows.append(row)
            diff.append(bool(a.get("iscrowd", 0)))
        records.append(Record(path, _labels_array(rows), np.array(diff, bool), (W, H), split=split))
    known = {im["id"] for im in doc.get("images", [])}
    for image_id in by_image.keys() - known:
        skipped.append(f"annotations for image id {image_id}: no such image")
    return boxes.finish(class_names, records)


SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _split_of(name: str) -> str | None:
    """``instances_train2017`` -> "train", ``valid`` -> "val", ``obj_test_data`` -> "test"."""
    for word in re.split(r"[^a-z]+", name.lower()):
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
        for key, split in SPLIT_WORDS.items():
            if word.startswith(key) and word[len(key) :].isdigit():
                return split
    return None


def _merge(parts: list[DetectionDataset]) -> DetectionDataset:
    names = parts[0].class_names
    for p in parts[1:]:
        if p.class_names != names:
            raise ValueError(f"the splits name different classes: {names} and {p.class_names}")
    return DetectionDataset(
        names,
        [r for p in parts for r in p.records],
        [s for p in parts for s in p.skipped],
        sum(p.clipped for p in parts),
    )


def read_voc_splits(root: Path) -> DetectionDataset:
    """VOC with ``ImageSets/Main/train.txt`` and ``val.txt`` (``trainval.txt`` is their
    union): both, each record marked with its split; else every annotation."""
    main = root / "ImageSets" / "Main"
    if not ((main / "train.txt").exists() and (main / "val.txt").exists()):
        return read_voc(root)
    names = read_voc(root).class_names  # one class list for both splits
    parts = [read_voc(root, split, names) for split in ("train", "val")]
    for split, part in zip(("train", "val"), parts, strict=True):
        for r in part.records:
            r.split = split
    return _merge(parts)


def read_coco_splits(root: Path) -> DetectionDataset:
    """One COCO JSON, or one per split: ``annotations/instances_<split>*.json`` with
    images in ``<split>*/`` (the COCO layout), or ``<split>/_annotations.coco.json``
    beside its images (Roboflow's export)."""
    files = sorted({*root.glob("*.json"), *root.glob("annotations/*.json"), *root.glob("*/*.json")})
    if not files:
        raise ValueError("no COCO annotation JSON file (looked in ./, annotations/ and */)")
    if len(files) == 1:
        f = files[0]
        images = root / "images" if (root / "images").is_dir() else f.parent
        return read_coco(f, images, root=root)
    parts = []
    for f in files:
        split = _split_of(f.stem) or _split_of(f.parent.name)
        if split is None:
            raise ValueError(f"{f.relative_to(root)}: cannot tell its split (train, val, test)")
        if f.parent in (root, root / "annotations"):  # COCO: instances_train2017 -> train2017/
            folder = f.stem.split("_", 1)[-1]
            where = (root / folder, root / "images" / folder, root / "images")
            images = next((c for c in where if c.is_dir()), root)
        else:  # Roboflow: the JSON beside its images
            images = f.parent
        parts.append(read_coco(f, images, root=root, split=split))
    return _merge(parts)


def read_dataset(path: str | Path, fmt: str) -> DetectionDataset:
    """Read a data set folder in ``fmt`` ("yolo", "voc" or "coco"), with its own
    train/val/test splits where it has them (``Record.split``)."""
    path = Path(path)
    if fmt == "yolo":
        return read_yolo(path)
    if fmt == "voc":
        return read_voc_splits(path)
    if fmt == "coco":
        if path.is_file():
            return read_coco(path)
        return read_coco_splits(path)
    raise ValueError(f"unknown data set format {fmt!r}; use yolo, voc or coco")


def shapes_dataset(
    n: int, seed: int, level: str = "train", *, size: int | None = None
) -> DetectionDataset:
    """``n`` generated shapes images of ``level`` (``model.shapes.LEVELS``), in memory;
    the same seed and level give the same set. ``size``: keep each image only as
    ``to_arrays`` will use it, ``size`` x ``size`` (thousands of photo-sized images
    would not fit in memory); records keep the original size."""
    from model.shapes import CLASS_NAMES, make_sample, sample_seed

    def one(i: int) -> Record:
        s = make_sample(sample_seed(seed, i), level)
        img = s.image if size is None else s.image.resize((size, size), Image.BILINEAR)
        return Record(None, s.labels, np.zeros(len(s.labels), bool), s.image.size, img)

    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(one, range(n)))
    return DetectionDataset(list(CLASS_NAMES), records)


def load_image(record: Record) -> Image.Image:
    if record.image is not None:
        return record.image
    with Image.open(record.image_path) as im:
        from PIL import ImageOps

        return ImageOps.exif_transpose(im).convert("RGB")


def to_arrays(
    ds: DetectionDataset, size: int, *, keep_difficult: bool = True
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Resize every image to ``(size, size)``: ``(N, size, size, 3)`` uint8 and the labels.

    ``keep_difficult=False`` leaves difficult objects out of the labels, as darknet's
    ``voc_label.py`` leaves them out of training."""
    with ThreadPoolExecutor(2) as pool:
        imgs = list(pool.map(lambda r: resize_uint8(load_image(r), size), ds.records))
    images = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    labels = [r.labels if keep_difficult else r.labels[~r.difficult] for r in ds.records]
    return images, labels


def difficult_flags(ds: DetectionDataset) -> list[np.ndarray]:
    """Each image's ``(k,)`` difficult flags, beside ``to_arrays``' labels."""
    return [r.difficult for r in ds.records]


def split_dataset(
    ds: DetectionDataset, val_fraction: float, seed: int
) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, val): the data set's own splits when it names a ``val`` split (its
    ``test`` split is left out), else a seeded random split where ``round(n *
    val_fraction)`` images, at least one, go to validation and training keeps one."""
    if any(r.split == "val" for r in ds.records):
        return tuple(
            DetectionDataset(ds.class_names, [r for r in ds.records if r.split == name])
            for name in ("train", "val")
        )
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = min(max(1, round(len(ds) * val_fraction)), max(len(ds) - 1, 1))
    val = DetectionDataset(ds.class_names, [ds.records[i] for i in order[:n_val]])
    train = DetectionDataset(ds.class_names, [ds.records[i] for i in order[n_val:]])
    return train, val
