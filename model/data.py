"""Detection data sets: YOLO txt, Pascal VOC XML, COCO JSON and the synthetic shapes
(NumPy + Pillow, no torch).

Every reader returns a :class:`DetectionDataset` of records with labels as
``(k, 5)`` arrays ``(class_id, cx, cy, w, h)`` in fractions of the image, and
a list of what it skipped and why; nothing is dropped silently. Boxes that stick
out of the image are clipped to it (and counted); boxes narrower or lower than
``MIN_TRAINED_SIZE`` of the image are skipped, as darknet drops them.
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

from model.preprocess import IMAGE_SUFFIXES, ImageDecodeError, finish_decode, resize_uint8
from model.targets import MIN_TRAINED_SIZE


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
        if c[2] - c[0] < MIN_TRAINED_SIZE or c[3] - c[1] < MIN_TRAINED_SIZE:
            self.skipped.append(f"{where}: box smaller than {MIN_TRAINED_SIZE} of the image")
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
    """Class names (and the whole ``data.yaml``, or {}) of a YOLO data set. The YAML
    may have another name (Ultralytics ships ``coco128.yaml``) when it is the only one."""
    yamls = [root / "data.yaml"] if (root / "data.yaml").exists() else [
        p for p in sorted(root.glob("*.y*ml")) if p.suffix in (".yaml", ".yml")
    ]  # fmt: skip
    if len(yamls) == 1:
        try:
            doc = yaml.safe_load(yamls[0].read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{yamls[0].name} is not valid YAML ({exc})") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{yamls[0].name} must be a mapping with 'names'")
        names = doc.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
        if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
            raise ValueError(f"{yamls[0].name} 'names' must be a list or an index -> name map")
        return [str(n) for n in names], doc
    for name in ("classes.txt", "obj.names"):  # obj.names: CVAT's YOLO 1.1 export
        if (root / name).exists():
            text = (root / name).read_text()
            return [n.strip() for n in text.splitlines() if n.strip()], {}
    raise ValueError(
        "no data.yaml (or one other YAML file), classes.txt or obj.names with the class names"
    )


def _inside(root: Path, entry: str) -> Path | None:
    """A ``data.yaml`` split entry (a folder or a list file) inside the data set, or
    None. Roboflow writes ``../train/images`` relative to the data set root;
    Ultralytics resolves it against ``path`` or the root."""
    for cand in (entry, entry.removeprefix("../"), entry.removeprefix("./")):
        p = (root / cand).resolve()
        if p.is_relative_to(root.resolve()) and p.exists():
            return p
    return None


def _listed_image(root: Path, list_file: Path, line: str) -> Path | None:
    """One line of a split list (``train.txt``) as an image inside the data set. Lines
    are relative to the list's folder (Ultralytics' ``./images/...``) or to the data
    set (CVAT's ``data/obj_train_data/...``), or absolute on the machine that exported
    them: the longest tail of the path that names a file here wins."""
    parts = Path(line).parts
    for k in range(len(parts)):
        tail = Path(*parts[k:])
        if tail.is_absolute():
            continue
        for base in (list_file.parent, root):
            p = (base / tail).resolve()
            if p.is_relative_to(root.resolve()) and p.is_file():
                return p
    return None


def _yolo_splits(root: Path, doc: dict, skipped: list[str]) -> list[tuple[str | None, list[Path]]]:
    """(split, image files) pairs: ``data.yaml``'s train/val/test when it names them
    (folders, list files of image paths, or lists of either: Ultralytics, Roboflow,
    CVAT), else CVAT's ``obj_<split>_data/`` folders, else every image under
    ``images/``, split by its first subfolder when that is named train/val/test."""
    base = root / str(doc.get("path") or ".") if doc.get("path") else root
    pairs: list[tuple[str | None, list[Path]]] = []
    for split in ("train", "val", "test"):
        entries = doc.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            where = _inside(base, str(entry)) or _inside(root, str(entry))
            if where is None:
                skipped.append(f"data.yaml {split}: {entry} is not in the data set")
            elif where.is_dir():
                pairs.append((split, _images_under(where)))
            elif where.suffix.lower() == ".txt":
                found, missing = [], 0
                for line in where.read_text(errors="replace").splitlines():
                    p = _listed_image(root, where, line.strip()) if line.strip() else None
                    if p is not None:
                        found.append(p)
                    missing += bool(line.strip()) and p is None
                if missing:
                    skipped.append(
                        f"{where.relative_to(root.resolve())}: {missing} listed images are "
                        "not in the data set"
                    )
                pairs.append((split, found))
    if pairs:
        return pairs
    cvat = [d for d in sorted(root.glob("obj_*_data")) if d.is_dir()]
    if cvat:  # CVAT: obj_train_data/, obj_valid_data/ ... with labels beside images
        return [(_split_of(d.name), _images_under(d)) for d in cvat]
    images = root / "images"
    by_split: dict[str | None, list[Path]] = {}
    for p in _images_under(images):
        rel = p.relative_to(images).parts
        by_split.setdefault(_split_of(rel[0]) if len(rel) > 1 else None, []).append(p)
    return list(by_split.items())


def _images_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _label_path(root: Path, image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the image's path inside the data
    set becomes ``labels`` (``images/train/a.jpg`` -> ``labels/train/a.txt``,
    ``valid/images/a.jpg`` -> ``valid/labels/a.txt``); without one, or when no label file
    is there, the label sits beside the image (CVAT's export)."""
    parts = image.relative_to(root).parts
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[-2::-1].index("images")
        mapped = root.joinpath(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
        if mapped.exists() or not image.with_suffix(".txt").exists():
            return mapped
    return image.with_suffix(".txt")


def _yolo_row(line: str, C: int, pose: bool) -> tuple[int, tuple[float, ...]]:
    """One label line -> (class, (cx, cy, w, h)). A polygon (``class x1 y1 x2 y2 ...``,
    Ultralytics' segmentation labels) becomes the box around it; with ``kpt_shape`` in
    data.yaml (pose labels) the box is the first four numbers. Raises ValueError."""
    values = [float(v) for v in line.split()]
    if not np.isfinite(values).all():
        raise ValueError(line)
    c = values[0]
    if c != int(c) or not 0 <= c < C:
        raise KeyError(c)
    if len(values) == 5 or (pose and len(values) > 5):
        return int(c), tuple(values[1:5])
    if len(values) >= 7 and len(values) % 2 == 1:
        xy = np.asarray(values[1:]).reshape(-1, 2)
        (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
        return int(c), ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    raise ValueError(line)


def read_yolo(root: str | Path) -> DetectionDataset:
    """YOLO txt labels (one ``class cx cy w h`` line per box, fractions; a polygon is
    taken as the box around it) for images in the folders or list files ``data.yaml``
    names for ``train``/``val``/``test`` (Ultralytics, Roboflow), CVAT's
    ``obj_<split>_data/``, or ``images/``. Labels sit in the ``labels`` folder that
    mirrors each ``images`` folder, or beside each image. Class names from ``data.yaml``
    (``names``: a list or an index->name map), ``classes.txt`` or ``obj.names``."""
    root = Path(root).resolve()
    try:
        names, doc = _yolo_names(root)
    except ValueError as exc:
        raise ValueError(f"{root.name}: {exc}") from exc
    if not names:
        raise ValueError(f"{root.name}: no class names")
    records, skipped = [], []
    boxes = _Boxes(skipped)
    looked: set[Path] = set()  # every label file an image would have
    pose = "kpt_shape" in doc
    for split, images in _yolo_splits(root, doc, skipped):
        for img_path in images:
            lab_path = _label_path(root, img_path)
            looked.add(lab_path)
            record = _read_yolo_image(root, img_path, lab_path, split, names, pose, boxes)
            if record is not None:
                records.append(record)
    for folder in sorted({p.parent for p in looked} - {root}):
        for lab_path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            if lab_path not in looked:
                skipped.append(f"{lab_path.relative_to(root)}: missing image")
    if records and not any(len(r.labels) for r in records):
        example = _label_path(root, records[0].image_path).relative_to(root)
        skipped.append(
            f"no image has a label: for {records[0].image_path.relative_to(root)} the label "
            f"would be {example} (the labels folder mirrors the images folder) or beside it"
        )
    if not records:
        places = [str(doc[k]) for k in ("train", "val", "test") if doc.get(k)]
        skipped.append(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in "
            f"{', '.join(places) or 'images/'}; a YOLO data set has images/ and labels/, "
            "or data.yaml naming train/val folders or list files"
        )
    return boxes.finish(names, records)


def _read_yolo_image(root, img_path, lab_path, split, names, pose, boxes) -> Record | None:
    rows = []
    if lab_path.exists():
        for n, line in enumerate(lab_path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{lab_path.relative_to(root)}:{n}"
            try:
                c, (cx, cy, w, h) = _yolo_row(line, len(names), pose)
            except KeyError:
                boxes.skipped.append(f"{where}: unknown class {line.split()[0]}")
                continue
            except ValueError:
                boxes.skipped.append(f"{where}: not 'class cx cy w h' (or a polygon)")
                continue
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            row = boxes.label(where, c, *corners, cxcywh=(cx, cy, w, h))
            if row is not None:
                rows.append(row)
    try:
        with Image.open(img_path) as im:
            size = im.size
    except Exception:
        boxes.skipped.append(f"{img_path.relative_to(root)}: unreadable image")
        return None
    return Record(img_path, _labels_array(rows), np.zeros(len(rows), bool), size, split=split)


def _voc_image(root: Path, xml: Path, fname: str) -> Path | None:
    """The image of one annotation: ``JPEGImages/<filename>`` (VOC), or beside the XML
    (Roboflow's and LabelImg's exports); by the XML's own name when ``filename`` is
    missing or names no file there. Raises ValueError for a name that leaves ``root``."""
    folders = (root / "JPEGImages", xml.parent)
    for folder in folders if fname else ():
        p = folder / fname
        if not p.resolve().is_relative_to(root.resolve()):
            raise ValueError(fname)
        if p.is_file():
            return p
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            for p in (folder / (xml.stem + suffix), folder / (xml.stem + suffix.upper())):
                if p.is_file():
                    return p
    return None


def _image_size(declared: tuple, path: Path) -> tuple[int, int]:
    """The width and height an annotation file declares, or the image's own when they
    are missing or not positive (some tools write 0 for unknown)."""
    try:
        W, H = (int(float(v)) for v in declared)
        if W > 0 and H > 0:
            return W, H
    except (TypeError, ValueError, OverflowError):
        pass
    with Image.open(path) as im:
        return im.size


def read_voc(
    root: str | Path,
    split: str | None = None,
    class_names: list[str] | None = None,
    xmls: list[Path] | None = None,
):
    """Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, optional
    ``ImageSets/Main/<split>.txt``; or the given ``xmls`` (images beside them). Pixel
    boxes (1-based, inclusive, as VOC writes them) become fractions; ``difficult``
    flags are kept for evaluation."""
    root = Path(root)
    ann_dir = root / "Annotations"
    listed = root / "ImageSets" / "Main" / f"{split}.txt"
    if xmls is None and split and listed.exists():
        xmls = [ann_dir / f"{i}.xml" for i in listed.read_text().split()]
    elif xmls is None:
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
        fname = (r.findtext("filename") or "").strip()
        try:
            img_path = _voc_image(root, x, fname)
        except ValueError:
            skipped.append(f"{x.relative_to(root)}: image {fname!r} is outside the data set")
            continue
        if img_path is None:
            skipped.append(f"{x.relative_to(root)}: missing image {fname or x.stem}")
            continue
        try:
            W, H = _image_size((r.findtext("size/width"), r.findtext("size/height")), img_path)
        except OSError:
            skipped.append(f"{img_path.relative_to(root)}: unreadable image")
            continue
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
    try:
        return _coco_records(doc, image_dir, root, split)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{annotation_file.name}: not a COCO detection file (a required field is missing "
            f"or of the wrong type: {exc})"
        ) from exc


def _coco_records(doc: dict, image_dir: Path, root: Path, split: str | None):
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
            W, H = _image_size((im.get("width"), im.get("height")), path)
        except OSError:
            skipped.append(f"image {im['file_name']}: unreadable image")
            continue
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
    if not (root / "Annotations").is_dir():
        return _read_voc_beside(root)
    main = root / "ImageSets" / "Main"
    if not ((main / "train.txt").exists() and (main / "val.txt").exists()):
        return read_voc(root)
    names = read_voc(root).class_names  # one class list for both splits
    parts = [read_voc(root, split, names) for split in ("train", "val")]
    for split, part in zip(("train", "val"), parts, strict=True):
        for r in part.records:
            r.split = split
    return _merge(parts)


def _read_voc_beside(root: Path) -> DetectionDataset:
    """VOC XML files beside their images, as Roboflow exports them (``train/``,
    ``valid/``, ``test/``, each holding ``a.jpg`` and ``a.xml``) or in one folder."""
    folders = [root, *(d for d in sorted(root.iterdir()) if d.is_dir())]
    by_folder = {d: sorted(d.glob("*.xml")) for d in folders}
    everything = [x for xs in by_folder.values() for x in xs]
    if not everything:
        raise ValueError("no Annotations/ folder and no .xml files in the data set or its folders")
    names = read_voc(root, xmls=everything).class_names  # one class list for every split
    parts = []
    for folder, xmls in by_folder.items():
        if xmls:
            part = read_voc(root, class_names=names, xmls=xmls)
            for r in part.records:
                r.split = _split_of(folder.name) if folder != root else None
            parts.append(part)
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
    # As serving decodes (transparency on white): an RGBA drawing's transparent pixels
    # store any colour, black as often as not, and a model trained on that colour
    # would meet white at detection.
    with Image.open(record.image_path) as im:
        try:
            return finish_decode(im)
        except ImageDecodeError as exc:  # a job's error then names the file
            raise type(exc)(f"{record.image_path.name}: {exc}") from exc


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
