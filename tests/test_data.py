"""Readers on small fixtures written by the tests, the shapes generator, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.augment import hflip, hsv_jitter, scale_translate
from model.data import (
    read_coco,
    read_dataset,
    read_voc,
    read_yolo,
    shapes_dataset,
    split_dataset,
    to_arrays,
)
from model.shapes import CLASS_NAMES, LEVELS, make_sample, sample_seed


def _img(path, size=(100, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_yolo_reader_reports_what_it_skips(tmp_path):
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    _img(tmp_path / "images" / "a.jpg")
    _img(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"
        "7 0.5 0.5 0.2 0.2\n"  # unknown class
        "1 1.5 0.5 0.2 0.2\n"  # outside
        "1 0.5 nonsense\n"  # unparsable
        "1 0.25 0.75 0.1 0.1\n"
        "0 0.95 0.5 0.2 0.2\n"  # sticks out on the right: clipped to x 0.85..1
        "0 0.5 0.5 0.004 0.2\n"  # narrower than darknet's 0.005
    )
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = read_yolo(tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds) == 2
    a = next(r for r in ds.records if r.image_path.name == "a.jpg")
    assert a.labels[:2].tolist() == [[0, 0.5, 0.5, 0.2, 0.4], [1, 0.25, 0.75, 0.1, 0.1]]
    assert np.allclose(a.labels[2], [0, 0.925, 0.5, 0.15, 0.2])
    assert len(a.labels) == 3 and ds.clipped == 1 and ds.summary()["clipped"] == 1
    assert a.size == (100, 50)
    text = "\n".join(ds.skipped)
    assert "a.txt:2: unknown class 7" in text
    assert "a.txt:3: box outside the image" in text
    assert "a.txt:4: not 'class cx cy w h'" in text
    assert "a.txt:7: box smaller than 0.005 of the image" in text
    assert "broken.jpg: unreadable image" in text
    assert "orphan.txt: missing image" in text


def test_a_data_set_of_avif_images_reads_and_trains_as_detection_sees_it(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [cat]\n")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (160, 120), (200, 40, 40)).save(tmp_path / "images" / "a.avif", quality=90)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    ds = read_yolo(tmp_path)
    assert [r.image_path.name for r in ds.records] == ["a.avif"]
    assert ds.records[0].size == (160, 120)
    X, L = to_arrays(ds, 32)
    assert X.shape == (1, 32, 32, 3) and abs(int(X[0, ..., 0].mean()) - 200) <= 4


def test_yolo_reader_classes_txt_and_list_names(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    _img(tmp_path / "images" / "x.jpg")
    assert read_yolo(tmp_path).class_names == ["a", "b"]
    (tmp_path / "data.yaml").write_text("names: [p, q, r]\n")
    assert read_yolo(tmp_path).class_names == ["p", "q", "r"]


def test_voc_reader(tmp_path):
    _img(tmp_path / "JPEGImages" / "1.jpg", (200, 100))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "1.xml").write_text(
        """<annotation><filename>1.jpg</filename><size><width>200</width><height>100</height>
        </size>
        <object><name>dog</name><difficult>1</difficult>
          <bndbox><xmin>21</xmin><ymin>11</ymin><xmax>60</xmax><ymax>50</ymax></bndbox></object>
        <object><name>cat</name><difficult>0</difficult>
          <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>200</xmax><ymax>100</ymax></bndbox></object>
        <object><name>dog</name>
          <bndbox><xmin>150</xmin><ymin>50</ymin><xmax>260</xmax><ymax>90</ymax></bndbox></object>
        </annotation>"""
    )
    (tmp_path / "Annotations" / "2.xml").write_text("<annotation><filename>2.jpg</filename>")
    (tmp_path / "Annotations" / "3.xml").write_text(
        "<annotation><filename>3.jpg</filename></annotation>"
    )
    ds = read_voc(tmp_path, class_names=["cat", "dog"])
    assert len(ds) == 1
    r = ds.records[0]
    assert r.difficult.tolist() == [True, False, False]
    assert np.allclose(r.labels[0], [1, 40 / 200, 30 / 100, 40 / 200, 40 / 100])
    assert np.allclose(r.labels[1], [0, 0.5, 0.5, 1.0, 1.0])
    # x 149..260 of an image 200 wide: clipped to 149..200 and counted
    assert np.allclose(r.labels[2], [1, 174.5 / 200, 0.695, 51 / 200, 0.41]) and ds.clipped == 1
    # darknet's voc_label.py leaves difficult objects out of training
    _, labels = to_arrays(ds, 32, keep_difficult=False)
    assert labels[0][:, 0].tolist() == [0, 1]
    text = "\n".join(ds.skipped)
    assert "2.xml: unreadable annotation" in text
    assert "3.xml: missing image 3.jpg" in text


def test_coco_reader(tmp_path):
    _img(tmp_path / "images" / "a.jpg", (100, 100))
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
            {"id": 2, "file_name": "gone.jpg", "width": 10, "height": 10},
        ],
        "categories": [{"id": 5, "name": "x"}, {"id": 9, "name": "y"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [110, 90, 20, 20]},
            {"id": 5, "image_id": 1, "category_id": 5},
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = read_dataset(tmp_path, "coco")
    assert ds.class_names == ["x", "y"]
    assert len(ds) == 1
    assert np.allclose(ds.records[0].labels[0], [1, 0.25, 0.4, 0.3, 0.4])
    assert ds.records[0].difficult.tolist() == [False, True]
    text = "\n".join(ds.skipped)
    assert "gone.jpg: missing image" in text
    assert "annotation 2: unknown class 3" in text
    assert "annotation 3: box outside the image" in text
    assert "annotation 5: no valid bbox" in text
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable COCO JSON"):
        read_coco(tmp_path / "bad.json")


def test_shapes_are_deterministic_and_varied():
    a, b = make_sample(sample_seed(7, 3)), make_sample(sample_seed(7, 3))
    assert a.encoded == b.encoded and np.array_equal(a.labels, b.labels)
    assert make_sample(sample_seed(7, 3), "hard").encoded != a.encoded
    ds = shapes_dataset(40, 11)
    sizes = {r.size for r in ds.records}
    counts = [len(r.labels) for r in ds.records]
    assert len(sizes) > 20 and min(counts) >= 0 and max(counts) <= 7
    classes = {int(c) for r in ds.records for c in r.labels[:, 0]}
    assert classes == set(range(len(CLASS_NAMES)))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_shapes_levels_keep_their_ranges(level):
    """Image sizes, object counts and object sizes within the level's ranges (a box the
    border cuts keeps at least 60 % of its area, so its extent stays above ~0.6x)."""
    lv = LEVELS[level]
    samples = [make_sample(sample_seed(21, i), level) for i in range(40)]
    for s in samples:
        W, H = s.image.size
        assert lv.short_side[0] - 1 <= min(W, H) <= lv.short_side[1]
        assert max(W, H) <= min(W, H) * lv.max_aspect + 1
        assert len(s.labels) <= lv.objects[1]
        assert ((s.labels[:, 1:] >= 0) & (s.labels[:, 1:] <= 1)).all()
        ext = np.maximum(s.labels[:, 3] * W, s.labels[:, 4] * H)
        ranges = [lv.closeup_size] if lv.closeup == 1 else [lv.object_size]
        ranges += [lv.closeup_size] if 0 < lv.closeup < 1 else []
        ranges += [lv.fill_size] if lv.fill else []
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if lv.closeup == 1:
            assert len(s.labels) <= 2
        assert ((ext >= 0.6 * lo * min(W, H) - 1) & (ext <= hi * min(W, H) + 1)).all()
    # A level with filling close-ups has images whose one box spans most of both sides.
    spans = [s.labels[0, 3:].min() for s in samples if len(s.labels) == 1]
    assert (max(spans, default=0) >= 0.75) == (lv.fill > 0), spans
    suffixes = {s.suffix for s in samples}
    assert suffixes == ({".jpg", ".png"} if lv.png >= 0.2 else suffixes)
    if lv.gray:
        assert any(np.ptp(np.asarray(s.image, np.int16), axis=-1).max() == 0 for s in samples)


def test_shapes_boxes_lie_inside_their_images():
    for i in range(15):
        s = make_sample(sample_seed(5, i))
        W, H = s.image.size
        for _c, cx, cy, w, h in s.labels:
            x1, y1 = int((cx - w / 2) * W), int((cy - h / 2) * H)
            x2, y2 = int((cx + w / 2) * W), int((cy + h / 2) * H)
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H


def _blob_image():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([40, 20, 79, 59], fill=(255, 255, 255))
    return np.asarray(img), np.array([[0, 60 / 200, 40 / 100, 40 / 200, 40 / 100]])


def _white_box(img):
    ys, xs = np.nonzero(img.mean(-1) > 128)
    H, W = img.shape[:2]
    return np.array(
        [
            (xs.min() + xs.max() + 1) / 2 / W,
            (ys.min() + ys.max() + 1) / 2 / H,
            (xs.max() - xs.min() + 1) / W,
            (ys.max() - ys.min() + 1) / H,
        ]
    )


def test_augmentation_keeps_boxes_on_their_objects():
    img, lab = _blob_image()
    for seed in range(20):
        out, new = scale_translate(img, lab, np.random.default_rng(seed))
        if len(new):
            assert np.allclose(new[0, 1:], _white_box(out), atol=0.03)
        flipped, fl = hflip(out, new)
        if len(fl):
            assert np.allclose(fl[0, 1:], _white_box(flipped), atol=0.03)


def test_no_scale_or_shift_leaves_every_pixel_where_it_was():
    # The warp's half-pixel bookkeeping: an off-by-half would blur or move every pixel.
    img, lab = _blob_image()
    out, new = scale_translate(img, lab, np.random.default_rng(0), jitter=0.0)
    assert np.array_equal(out, img) and np.allclose(new, lab)


def test_a_scaled_image_matches_the_scaling_of_its_coordinates():
    # Scaling 1.2x about the centre, no shift: pixel (x, y) reads (x - c) / 1.2 + c.
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    s, (tx, ty), flip = 1.2, (0.0, 0.0), False

    class Fixed:
        def uniform(self, lo, hi, n=None):
            return s if n is None else np.array([tx, ty])

        def random(self):
            return 1.0

    out, _ = scale_translate(img, np.zeros((0, 5), np.float32), Fixed(), flip=flip)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    sx, sy = (xs - 32) / s + 32 - 0.5, (ys - 32) / s + 32 - 0.5
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    f = img.astype(float)
    ref = (
        f[y0, x0] * (1 - fx) * (1 - fy) + f[y0, x0 + 1] * fx * (1 - fy)
        + f[y0 + 1, x0] * (1 - fx) * fy + f[y0 + 1, x0 + 1] * fx * fy
    )  # fmt: skip
    # Bilinear to within OpenCV's 1/32-pixel sample positions and fixed-point weights.
    err = np.abs(out - ref)
    assert err.max() <= 4 and err.mean() < 0.5, (err.max(), err.mean())


def test_a_flip_is_hflip_of_the_same_scaling_and_shift():
    img, lab = _blob_image()
    for seed in range(10):
        out, new = scale_translate(img, lab, np.random.default_rng(seed))
        both, moved = scale_translate(img, lab, np.random.default_rng(seed), flip=True)
        flipped, fl = hflip(out, new)
        assert np.array_equal(both, flipped) and np.array_equal(moved, fl)


def test_keep_whole_leaves_a_shape_that_fills_the_image_whole():
    # A white square of 90 % of a black canvas: the paper's scaling and shifting cut it in
    # most draws; kept whole, its pixels and its box stay inside, on the same draws.
    img = np.zeros((100, 100, 3), np.uint8)
    img[5:95, 5:95] = 255
    lab = np.array([[0, 0.5, 0.5, 0.9, 0.9]])

    def whole(box: np.ndarray) -> bool:
        # a cut box is clipped to the border, so one of its sides lies on it
        (x1, y1), (x2, y2) = box[1:3] - box[3:] / 2, box[1:3] + box[3:] / 2
        return bool(min(x1, y1) > 0 and max(x2, y2) < 1)

    cut = 0
    for seed in range(40):
        _, paper = scale_translate(img, lab, np.random.default_rng(seed), flip=None)
        cut += len(paper) == 0 or not whole(paper[0])
        rng = np.random.default_rng(seed)
        out, new = scale_translate(img, lab, rng, flip=None, keep_whole=True)
        assert whole(new[0]) and new[0, 3] == pytest.approx(new[0, 4]), (seed, new)
        assert np.allclose(new[0, 1:], _white_box(out), atol=0.03)
    assert cut >= 20
    # An object on the border is cut already: it does not hold the draws back.
    edge = np.array([[0, 0.25, 0.5, 0.5, 0.5]])
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a = scale_translate(img, edge, rng_a)
    b = scale_translate(img, edge, rng_b, keep_whole=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_augment_without_keep_whole_draws_as_before():
    # keep_whole 0 draws nothing more: a job's augmentation, seeded, is what it was.
    from model.augment import augment

    img, lab = _blob_image()
    out, _ = augment(img, lab, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    moved, _ = scale_translate(img, lab, rng, flip=None)
    assert np.array_equal(out, hsv_jitter(moved, rng))


def test_hsv_jitter_keeps_hue_and_scales_value():
    img = np.array([[[200, 100, 50]]], dtype=np.uint8)
    out = hsv_jitter(img, np.random.default_rng(0)).astype(float)[0, 0]
    r, g, b = out
    # Hue of (200, 100, 50): (g - b) / (r - b) stays 1/3.
    assert (g - b) / (r - b) == pytest.approx(1 / 3, abs=0.02)
    grey = np.full((1, 1, 3), 100, np.uint8)
    out = hsv_jitter(grey, np.random.default_rng(1))
    assert out[0, 0, 0] == out[0, 0, 1] == out[0, 0, 2]  # no saturation to scale


def test_split_is_seeded_and_rounds_once(tmp_path):
    ds = shapes_dataset(10, 4)
    tr, va = split_dataset(ds, 0.25, seed=1)
    assert (len(tr), len(va)) == (8, 2)  # round(2.5) == 2
    tr2, va2 = split_dataset(ds, 0.25, seed=1)
    assert [id(r) for r in va.records] == [id(r) for r in va2.records]
    assert len(split_dataset(ds, 0.01, seed=1)[1]) == 1  # at least one image each side


def test_training_shuffles_labels_that_share_a_cell():
    """darknet shuffles labels on every load: with two objects in one cell, each wins
    in some epochs. Scoring keeps the first listed (see test_loss)."""
    import torch

    from model.config import ModelConfig, TrainConfig
    from model.train import make_batch

    cfg = ModelConfig(input_size=32, S=1, C=2)
    images = np.zeros((1, 32, 32, 3), np.uint8)
    labels = [np.array([[0, 0.4, 0.4, 0.2, 0.2], [1, 0.6, 0.6, 0.3, 0.3]])]
    tc = TrainConfig(augment=False, channels_last=False)
    firsts = {
        int(make_batch(images, labels, np.array([0]), cfg, tc, epoch)[1][0][0, 0])
        for epoch in range(20)
    }
    assert firsts == {0, 1}
    fixed = TrainConfig(augment=False, channels_last=False, shuffle_labels=False)
    assert torch.equal(
        make_batch(images, labels, np.array([0]), cfg, fixed, 3)[1][0],
        torch.tensor(labels[0], dtype=torch.float32),
    )


def test_yolo_reader_takes_the_splits_data_yaml_names(tmp_path):
    """The layout Ultralytics and Roboflow export: data.yaml with train/val/test folders
    (Roboflow writes them as ../train/images), labels beside each images folder."""
    (tmp_path / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: 2\n"
        "names: ['a', 'b']\n"
    )
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for i in range(n):
            _img(tmp_path / split / "images" / f"{i}.jpg")
            (tmp_path / split / "labels").mkdir(exist_ok=True)
            (tmp_path / split / "labels" / f"{i}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    ds = read_dataset(tmp_path, "yolo")
    assert len(ds) == 6 and not ds.skipped
    tr, va = split_dataset(ds, 0.5, seed=0)
    assert (len(tr), len(va)) == (3, 2)
    assert all(r.image_path.parent.parent.name == "valid" for r in va.records)
    assert va.records[0].labels.tolist() == [[1, 0.5, 0.5, 0.2, 0.2]]


def test_yolo_reader_takes_the_layouts_ultralytics_and_cvat_write(tmp_path):
    """coco128's layout (images/train2017 with labels/train2017 beside it), split list
    files with paths relative to the list, to the data set or from the exporting
    machine, polygon labels, and labels left without an image."""
    root = tmp_path / "c128"
    for split in ("train2017", "val2017"):
        for i in range(2):
            _img(root / "images" / split / f"{i}.jpg")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{i}.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (root / "labels" / "val2017" / "9.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    # a segmentation label: the box around the polygon
    (root / "labels" / "train2017" / "1.txt").write_text("0 0.1 0.2 0.5 0.2 0.3 0.6\n")
    (root / "data.yaml").write_text(
        "path: /content/datasets/coco128\ntrain: images/train2017\nval: images/val2017\n"
        "names:\n  0: person\n  1: bicycle\n"
    )
    ds = read_dataset(root, "yolo")
    assert len(ds) == 4 and ds.skipped == ["labels/val2017/9.txt: missing image"]
    by_name = {(r.split, r.image_path.name): r.labels.tolist() for r in ds.records}
    assert by_name[("train", "0.jpg")] == [[1, 0.5, 0.5, 0.2, 0.4]]
    assert np.allclose(by_name[("train", "1.jpg")], [[0, 0.3, 0.4, 0.4, 0.4]])
    assert [len(r.labels) for r in split_dataset(ds, 0.5, 0)[1].records] == [1, 1]

    # the same images named by list files, three ways
    (root / "train.txt").write_text(
        "./images/train2017/0.jpg\n/content/datasets/coco128/images/train2017/1.jpg\n"
    )
    (root / "lists").mkdir()
    (root / "lists" / "val.txt").write_text("images/val2017/0.jpg\nimages/val2017/gone.jpg\n")
    (root / "data.yaml").write_text("train: train.txt\nval: lists/val.txt\nnames: [p, b]\n")
    ds = read_dataset(root, "yolo")
    assert sorted((r.split, r.image_path.name) for r in ds.records) == [
        ("train", "0.jpg"), ("train", "1.jpg"), ("val", "0.jpg")
    ]  # fmt: skip
    assert "lists/val.txt: 1 listed images are not in the data set" in ds.skipped
    assert all(len(r.labels) == 1 for r in ds.records)

    # no splits in the YAML, named as Ultralytics ships coco128: images/train2017 and
    # images/val2017 are still the splits
    (root / "data.yaml").unlink()
    (root / "coco128.yaml").write_text("names: [p, b]\n")
    ds = read_dataset(root, "yolo")
    assert sorted({r.split for r in ds.records}) == ["train", "val"] and len(ds) == 4
    assert ds.class_names == ["p", "b"]


def test_yolo_reader_says_where_it_looked(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    ds = read_yolo(tmp_path)
    assert len(ds) == 0 and "no images" in ds.skipped[0] and "images" in ds.skipped[0]
    (tmp_path / "data.yaml").write_text("names: [a\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_yolo(tmp_path)


def test_voc_and_coco_with_their_own_splits(tmp_path):
    from model.shapes import write_yolo_dataset

    # VOC: ImageSets/Main/train.txt and val.txt
    voc = tmp_path / "voc"
    for i in range(3):
        _img(voc / "JPEGImages" / f"{i}.jpg", (100, 100))
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>100</width>"
            "<height>100</height></size><object><name>cat</name><bndbox><xmin>10</xmin>"
            "<ymin>10</ymin><xmax>50</xmax><ymax>50</ymax></bndbox></object></annotation>"
        )
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("0\n1\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2\n")
    tr, va = split_dataset(read_dataset(voc, "voc"), 0.5, seed=0)
    assert [r.image_path.name for r in va.records] == ["2.jpg"] and len(tr) == 2
    # COCO as Roboflow exports it: one _annotations.coco.json per split folder
    coco = tmp_path / "coco"
    for split, n in (("train", 2), ("valid", 1)):
        doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
        for i in range(n):
            _img(coco / split / f"{i}.jpg", (100, 100))
            doc["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
            doc["annotations"].append({"id": i, "image_id": i, "category_id": 1,
                                       "bbox": [10, 10, 20, 20]})  # fmt: skip
        (coco / split / "_annotations.coco.json").write_text(json.dumps(doc))
    ds = read_dataset(coco, "coco")
    assert len(ds) == 3 and sorted(r.split for r in ds.records) == ["train", "train", "val"]
    # a file name that leaves the data set is a skip, not a file opened
    doc["images"].append({"id": 9, "file_name": "../../../../etc/passwd", "width": 1, "height": 1})
    (coco / "valid" / "_annotations.coco.json").write_text(json.dumps(doc))
    assert "outside the data set" in "\n".join(read_dataset(coco, "coco").skipped)
    # CVAT's YOLO 1.1 export: obj.names, obj_train_data/ with labels beside the images
    cvat = tmp_path / "cvat"
    write_yolo_dataset(str(tmp_path / "y"), 3, seed=2)
    (cvat / "obj_train_data").mkdir(parents=True)
    for p in [*(tmp_path / "y" / "images").iterdir(), *(tmp_path / "y" / "labels").iterdir()]:
        (cvat / "obj_train_data" / p.name).write_bytes(p.read_bytes())
    (cvat / "obj.names").write_text("\n".join(CLASS_NAMES) + "\n")
    ds = read_dataset(cvat, "yolo")
    assert len(ds) == 3 and {r.split for r in ds.records} == {"train"}
    assert sum(len(r.labels) for r in ds.records) > 0


def _voc_xml(filename, size, boxes):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for n, (a, b, c, d) in boxes
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{objs}</annotation>"
    )


def test_voc_beside_its_images_and_sizes_written_as_zero(tmp_path):
    """Roboflow's Pascal VOC export: train/ and valid/ each holding a.jpg beside a.xml;
    LabelImg writes <width>0</width> when it did not know, and a file name may differ
    from the image's (the XML's own name then finds it)."""
    root = tmp_path / "rf"
    _img(root / "train" / "a.jpg", (200, 100))
    (root / "train" / "a.xml").write_text(_voc_xml("a.jpg", (0, 0), [("dog", (21, 11, 60, 50))]))
    _img(root / "train" / "b.png", (200, 100))
    (root / "train" / "b.xml").write_text(
        _voc_xml("renamed.jpg", (200, 100), [("cat", (1, 1, 100, 100))])
    )
    _img(root / "valid" / "c.jpg", (200, 100))
    (root / "valid" / "c.xml").write_text(
        _voc_xml("c.jpg", (200, 100), [("cat", (101, 1, 200, 50))])
    )
    ds = read_dataset(root, "voc")
    assert ds.class_names == ["cat", "dog"] and not ds.skipped
    got = {(r.split, r.image_path.name): r.labels.tolist() for r in ds.records}
    assert np.allclose(got[("train", "a.jpg")], [[1, 0.2, 0.3, 0.2, 0.4]])
    assert np.allclose(got[("train", "b.png")], [[0, 0.25, 0.5, 0.5, 1.0]])
    assert np.allclose(got[("val", "c.jpg")], [[0, 0.75, 0.25, 0.5, 0.5]])


def test_coco_that_is_not_coco_is_a_value_error_not_a_crash(tmp_path):
    _img(tmp_path / "images" / "a.jpg", (100, 50))
    for doc in ([1, 2], {"images": [{"file_name": "a.jpg"}], "categories": [{"name": "x"}]},
                {"images": "a.jpg"}):  # fmt: skip
        (tmp_path / "ann.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="not a COCO detection file"):
            read_coco(tmp_path / "ann.json")
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 0}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10]}],
           "categories": [{"id": 3, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = read_coco(tmp_path / "ann.json")
    assert ds.records[0].size == (100, 50)
    assert np.allclose(ds.records[0].labels, [[0, 0.2, 0.2, 0.2, 0.2]])


def test_network_input_is_the_arithmetic_and_the_trainers_own():
    # Every uint8 value in every channel, as serving (to_input) and training (to_tensor)
    # make it: the same float32 numbers as (x / 255 - mean) / std.
    from model.config import ModelConfig
    from model.preprocess import to_input
    from model.train import to_tensor

    cfg = ModelConfig(input_size=16)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    batch[1].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # a view
    x = batch.astype(np.float32) / np.float32(255.0)
    want = ((x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)).transpose(
        0, 3, 1, 2
    )
    got = to_input(batch, cfg)
    assert got.shape == (2, 3, 16, 16) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)
    assert np.array_equal(to_tensor(batch, cfg, channels_last=False).numpy(), want)


def test_training_reads_an_image_as_detection_does(tmp_path):
    """A drawing on a transparent canvas (its transparent pixels storing black, as
    drawing programs leave them), a grey one with alpha and an EXIF-rotated JPEG: a job
    trains on the pixels that detection will be shown, not on the stored colour."""
    from pathlib import Path

    from model.data import Record, load_image
    from model.preprocess import decode_image

    rgba = Image.new("RGBA", (120, 80), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((10, 10, 60, 60), fill=(200, 30, 30, 255))
    rgba.save(tmp_path / "drawing.png")
    rgba.convert("LA").save(tmp_path / "grey.png")
    rotated = Image.new("RGB", (120, 80), (0, 90, 200))
    ImageDraw.Draw(rotated).rectangle((0, 0, 30, 20), fill=(250, 250, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("drawing.png", "grey.png", "rotated.jpg"):
        path = Path(tmp_path / name)
        record = Record(path, np.zeros((0, 5)), np.zeros(0, bool))
        trained = np.asarray(load_image(record))
        served = np.asarray(decode_image(path.read_bytes()))
        assert trained.shape == served.shape and np.array_equal(trained, served), name
    drawing = np.asarray(load_image(Record(tmp_path / "drawing.png", np.zeros((0, 5)), [])))
    assert drawing[0, 0].tolist() == [255, 255, 255]  # the canvas, on white
    Image.new("F", (16, 16)).save(tmp_path / "depth.tif")  # refused, and named
    with pytest.raises(ValueError, match=r"depth\.tif: TIFF images of 32-bit"):
        load_image(Record(tmp_path / "depth.tif", np.zeros((0, 5)), []))
    assert np.asarray(load_image(Record(tmp_path / "rotated.jpg", np.zeros((0, 5)), []))).shape[
        :2
    ] == (120, 80)
