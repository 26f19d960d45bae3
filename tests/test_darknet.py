"""The loss against the authors' own code: darknet's detection layer and the label
loading it trains from (tests/darknet/, verbatim, compiled here with gcc), on random
predictions and labels that cross the image's edge, are tiny, or share a cell.

darknet's layer writes ``delta = scale * (target - output)`` for every output, the
negative gradient of half the paper's loss: so the gradient of ``yolo_loss`` must be
``-2 * delta`` element by element, and each term of the loss ``sum(delta**2 / scale)``
over its outputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from model.layout import cells_to_darknet
from model.loss import yolo_loss
from model.loss_core import darknet_cost
from model.loss_numpy import yolo_loss_numpy
from model.targets import assign_cells

HERE = Path(__file__).parent / "darknet"
LAMBDA_COORD, LAMBDA_NOOBJ = 5.0, 0.5  # the harness's cfg, the paper's values


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler (gcc) is needed to build darknet's detection layer"
    exe = tmp_path_factory.mktemp("darknet") / "harness"
    subprocess.run([gcc, "-O2", "-o", str(exe), str(HERE / "harness.c"),
                    str(HERE / "darknet_excerpt.c"), "-lm"], check=True)  # fmt: skip
    return exe


def _labels(rng, S: int, C: int, n: int, *, shared: bool) -> list[np.ndarray]:
    """Up to 7 boxes an image, some crossing the edge, some under 0.005 of it. Without
    ``shared``, their clipped centres lie in distinct cells: darknet shuffles an image's
    labels before its first-wins rule, so only then is the winner known in advance."""
    out = []
    for _ in range(n):
        rows, cells = [], set()
        for _ in range(int(rng.integers(0, 8))):
            cx, cy = rng.uniform(0, 1, 2)
            w, h = rng.uniform(0.001, 0.6, 2)
            x1, x2 = np.clip([cx - w / 2, cx + w / 2], 0, 1)
            y1, y2 = np.clip([cy - h / 2, cy + h / 2], 0, 1)
            cell = (int((x1 + x2) / 2 * S), int((y1 + y2) / 2 * S))
            if cell in cells and not shared:
                continue
            cells.add(cell)
            rows.append([int(rng.integers(C)), cx, cy, w, h])
        # float32: the numbers darknet reads from the label files, exactly
        out.append(np.array(rows, np.float32).astype(np.float64).reshape(-1, 5))
    return out


def _predictions(rng, N: int, S: int, B: int, C: int, spread: float) -> np.ndarray:
    """``spread`` 1: boxes mostly overlap their truth; small: many IoUs are 0, so the
    responsible predictor comes from darknet's RMSE rule."""
    pred = np.empty((N, S, S, 5 * B + C), np.float32)
    box = pred[..., : 5 * B].reshape(N, S, S, B, 5)
    box[..., 0:2] = rng.uniform(-0.2, 1.2, (N, S, S, B, 2))
    box[..., 2:4] = rng.uniform(-0.3, 1.0, (N, S, S, B, 2)) * spread
    box[..., 4] = rng.uniform(-0.5, 1.5, (N, S, S, B))
    pred[..., : 5 * B] = box.reshape(N, S, S, 5 * B)
    pred[..., 5 * B :] = rng.uniform(-0.5, 1.5, (N, S, S, C))
    return pred


def _darknet(
    harness, tmp: Path, pred, labels, S, B, C, rescore
) -> tuple[np.ndarray, np.ndarray, float]:
    """darknet's ``delta`` ``(N, S*S*(5B+C))``, its truth ``(N, S, S, 5+C)`` and its
    cost."""
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "labels").mkdir(exist_ok=True)
    paths = []
    for i, lab in enumerate(labels):
        rows = "".join(f"{int(c)} {x!r} {y!r} {w!r} {h!r}\n" for c, x, y, w, h in lab.tolist())
        (tmp / "labels" / f"{i}.txt").write_text(rows)
        paths.append(str(tmp / "images" / f"{i}.jpg"))
    (tmp / "list.txt").write_text("\n".join(paths) + "\n")
    cells_to_darknet(pred, S=S, B=B, C=C).astype(np.float32).tofile(tmp / "pred.bin")
    out = [str(tmp / "delta.bin"), str(tmp / "truth.bin")]
    ran = subprocess.run([str(harness), str(S), str(B), str(C), str(rescore),
                          str(tmp / "pred.bin"), str(tmp / "list.txt"), *out],
                         check=True, capture_output=True, text=True)  # fmt: skip
    N = len(labels)
    delta = np.fromfile(out[0], np.float32).reshape(N, -1)
    truth = np.fromfile(out[1], np.float32).reshape(N, S, S, 5 + C)
    cost = float(ran.stdout.split()[-1])  # the last line: *l.cost
    return delta, truth, cost


def _terms_from_delta(delta, pred, S, B, C) -> dict[str, float]:
    """The paper's five terms out of darknet's deltas, each output's ``delta**2 / scale``."""
    loc = S * S
    flat = cells_to_darknet(pred, S=S, B=B, C=C)
    cls, conf = delta[:, : loc * C], delta[:, loc * C : loc * (C + B)]
    coords = delta[:, loc * (C + B) :].reshape(len(delta), loc * B, 4)
    # a predictor nobody is responsible for has delta = noobject_scale * (0 - output)
    noobj = np.isclose(conf, -LAMBDA_NOOBJ * flat[:, loc * C : loc * (C + B)], rtol=0, atol=1e-7)
    return {
        "coord_xy": float((coords[..., :2].astype(np.float64) ** 2).sum() / LAMBDA_COORD),
        "coord_wh": float((coords[..., 2:].astype(np.float64) ** 2).sum() / LAMBDA_COORD),
        "obj": float((conf[~noobj].astype(np.float64) ** 2).sum()),
        "noobj": float((conf[noobj].astype(np.float64) ** 2).sum() / LAMBDA_NOOBJ),
        "class": float((cls.astype(np.float64) ** 2).sum()),
    }


@pytest.mark.parametrize("S,B,C", [(7, 2, 20), (7, 3, 20), (5, 2, 3)])
@pytest.mark.parametrize("rescore", [1, 0])
def test_gradient_and_terms_equal_darknets_detection_layer(harness, tmp_path, S, B, C, rescore):
    target = "iou" if rescore else "one"
    for seed, spread in ((0, 1.0), (1, 0.2), (2, 1.0)):
        rng = np.random.default_rng([seed, S, B, C, rescore])
        labels = _labels(rng, S, C, 16, shared=False)
        pred = _predictions(rng, 16, S, B, C, spread)
        delta, truth, cost = _darknet(harness, tmp_path, pred, labels, S, B, C, rescore)

        # The same cells hold the same (clipped) boxes and classes.
        a = assign_cells(labels, len(labels), S, C)
        assert np.array_equal(np.argwhere(truth[..., 0] > 0), np.stack([a.img, a.row, a.col], 1))
        owned = truth[a.img, a.row, a.col]  # (M, 5 + C)
        assert np.array_equal(owned[:, 1 : 1 + C].argmax(1), a.labels[:, 0].astype(int))
        off = np.stack([a.labels[:, 1] * S - a.col, a.labels[:, 2] * S - a.row], 1)
        assert np.allclose(owned[:, 1 + C : 3 + C], off, atol=1e-5)
        assert np.allclose(owned[:, 3 + C :], a.labels[:, 3:5], atol=1e-6)

        t = torch.tensor(pred, requires_grad=True)
        r = yolo_loss(t, [torch.tensor(lab) for lab in labels], S=S, B=B, C=C,
                      confidence_target=target, reduction="sum")  # fmt: skip
        r.total.backward()
        grad = cells_to_darknet(t.grad.numpy(), S=S, B=B, C=C)
        assert np.abs(grad + 2 * delta).max() < 1e-4, (seed, spread)

        ours = yolo_loss_numpy(pred, labels, S=S, B=B, C=C, confidence_target=target,
                               reduction="sum")  # fmt: skip
        theirs = _terms_from_delta(delta, pred, S, B, C)
        for k, v in theirs.items():
            assert float(ours.terms[k]) == pytest.approx(v, rel=1e-5, abs=1e-5), (k, seed)
        # the figure darknet itself reports, from this loss's terms
        assert float(darknet_cost(ours.terms, LAMBDA_COORD, LAMBDA_NOOBJ)) == pytest.approx(
            cost, rel=1e-5
        )
        kept = int(a.objects.sum())
        assert int(ours.dropped.sum()) == sum(len(lab) for lab in labels) - kept


def test_objects_sharing_a_cell_one_wins_as_darknet_picks(harness, tmp_path):
    """darknet shuffles an image's labels, then the first in a cell wins; scoring here
    keeps the listed order. With darknet's winner listed first, both give one loss."""
    S, B, C = 3, 2, 4  # a coarse grid: many objects share a cell
    rng = np.random.default_rng(11)
    labels = _labels(rng, S, C, 24, shared=True)
    pred = _predictions(rng, 24, S, B, C, 1.0)
    delta, truth, _ = _darknet(harness, tmp_path, pred, labels, S, B, C, 1)
    assert sum(len(lab) for lab in labels) > int((truth[..., 0] > 0).sum())  # some lost a cell
    reordered = []
    for n, lab in enumerate(labels):
        a = assign_cells([lab], 1, S, C)
        won = []
        for k in range(len(a.img)):
            r, c = a.row[k], a.col[k]
            t = truth[n, r, c]
            cls = int(t[1 : 1 + C].argmax())
            w, h = t[3 + C], t[4 + C]
            rows = [j for j, (lc, *_box) in enumerate(lab.tolist()) if int(lc) == cls]
            clipped = [assign_cells([lab[j : j + 1]], 1, S, C) for j in rows]
            match = [j for j, q in zip(rows, clipped, strict=True) if len(q.img)
                     and (q.row[0], q.col[0]) == (r, c)
                     and np.allclose(q.labels[0, 3:5], [w, h], atol=1e-6)]  # fmt: skip
            assert match, (n, r, c)
            won.append(match[0])
        reordered.append(lab[won + [j for j in range(len(lab)) if j not in won]])
    t = torch.tensor(pred, requires_grad=True)
    yolo_loss(t, [torch.tensor(lab) for lab in reordered], S=S, B=B, C=C,
              reduction="sum").total.backward()  # fmt: skip
    assert np.abs(cells_to_darknet(t.grad.numpy(), S=S, B=B, C=C) + 2 * delta).max() < 1e-4
