"""The console at ``/`` in a real browser (the system's Chromium, driven by Playwright),
against ``make run``'s stack: scripts/serve.py with its embedded Redis and a worker.
Screenshots of each page land in ``.pytest_cache/console/``."""

from __future__ import annotations

import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.boxes import cxcywh_to_xyxy
from model.shapes import make_sample, sample_seed, write_yolo_dataset
from support.procs import ROOT, MakeRun

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "console-key"
SHOTS = ROOT / ".pytest_cache" / "console"
# What the environment page says a headless Chromium here needs: no sandbox as root,
# and none of the background connections a closed network refuses.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium (.ci/run installs Debian's chromium)"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("console")
    data = base / "data"
    # Classes renamed: the base model knows two of the five, so a short job beats its
    # baseline and registers a version the page can activate.
    write_yolo_dataset(str(data / "renamed"), 24, seed=5)
    (data / "renamed" / "data.yaml").write_text("names: [circle, square, hexagon, blob, ring]\n")
    run = MakeRun(base, {"YOLOV1_DATA_ROOT": str(data), "YOLOV1_API_KEYS": KEY,
                         "YOLOV1_MODEL_POLL_S": "0.3"})  # fmt: skip
    try:
        run.wait_up()
        yield {"url": run.url, "base": base, "store": base / "store"}
    finally:
        run.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.errors = []
    pg.outside = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: None if r.url.startswith((stack["url"], "data:", "blob:"))
          else pg.outside.append(r.url))  # fmt: skip
    yield pg
    assert not pg.errors, pg.errors
    assert not pg.outside, f"the page fetched from elsewhere: {pg.outside}"
    ctx.close()


def _sample(k: int):
    return make_sample(sample_seed(31337, k), "easy")


def _image(tmp: Path, k: int) -> tuple[Path, object]:
    s = _sample(k)
    path = tmp / f"scene{k}.jpg"
    path.write_bytes(s.encoded)
    return path, s


def _boxes(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results article:first-child g.box",
        """gs => gs.map(g => { const r = g.querySelector('rect').getBoundingClientRect();
              return {cls: g.dataset.class, conf: +g.dataset.confidence,
                      x1: +g.dataset.x1, y1: +g.dataset.y1, x2: +g.dataset.x2, y2: +g.dataset.y2,
                      left: r.left, top: r.top, right: r.right, bottom: r.bottom}; })""",
    )


def _answer_key_dialog(page) -> None:
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", KEY)
    page.click("#key-dialog button[value=ok]")


def test_detect_draws_what_the_api_finds_and_filters_on_the_page(page, stack, tmp_path):
    path, sample = _image(tmp_path, 2)
    page.goto(stack["url"] + "/")
    page.wait_for_selector("#serving[data-version]")
    page.screenshot(path=SHOTS / "detect-empty.png")
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("#results article")
    drawn = _boxes(page)
    # The slider starts at the model's calibrated threshold (the API's default).
    default = httpx.get(f"{stack['url']}/v1/models").json()["active"]["conf_threshold"]
    conf = round(default, 2)
    assert float(page.input_value("#conf")) == conf
    api = httpx.post(f"{stack['url']}/v1/detect", files={"image": ("a.jpg", sample.encoded)},
                     params={"conf_threshold": conf, "iou_threshold": 0.5}).json()  # fmt: skip
    want = api["detections"]
    assert len(drawn) == len(want) >= 2
    # The same boxes as the API's own threshold and NMS, in the same places.
    W, H = api["image"]["width"], api["image"]["height"]
    img = page.eval_on_selector(
        "#results article:first-child img", "i => i.getBoundingClientRect().toJSON()"
    )
    sx, sy = img["width"] / W, img["height"] / H
    for d, w in zip(drawn, want, strict=True):
        b = w["box"]
        assert d["cls"] == w["class_name"]
        assert abs(d["x1"] - b["x1"]) < 0.2 and abs(d["y2"] - b["y2"]) < 0.2
        # on the screen: where the image shows those pixels, within 2 px
        assert abs(d["left"] - (img["x"] + b["x1"] * sx)) <= 2
        assert abs(d["top"] - (img["y"] + b["y1"] * sy)) <= 2
        assert abs(d["right"] - (img["x"] + b["x2"] * sx)) <= 2
        assert abs(d["bottom"] - (img["y"] + b["y2"] * sy)) <= 2
    # ... and on the objects that are there
    truth = cxcywh_to_xyxy(sample.labels[:, 1:]) * [W, H, W, H]
    for d in drawn:
        box = np.array([d["x1"], d["y1"], d["x2"], d["y2"]])
        lt, rb = np.maximum(truth[:, :2], box[:2]), np.minimum(truth[:, 2:], box[2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        union = np.prod(box[2:] - box[:2]) + np.prod(truth[:, 2:] - truth[:, :2], axis=1) - inter
        assert (inter / union).max() > 0.4, d
    text = page.inner_text("#results article:first-child")
    assert f"{api['model']['name']} v{api['model']['version']}" in text and "inference" in text
    page.screenshot(path=SHOTS / "detect.png", full_page=True)
    # The slider filters on the page: no new request, boxes under it disappear.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/detect" in r.url else None)
    top = max(d["conf"] for d in drawn)
    page.fill("#conf", f"{min(top + 0.01, 1):.2f}")
    assert len(_boxes(page)) == 0
    # Nothing shown: the page names the highest score below the slider and shows it.
    best = max(drawn, key=lambda d: d["conf"])
    note = page.inner_text("#results article:first-child .none-shown")
    said = re.search(r"highest below it: (\w+), (\d\.\d+)", note)
    assert said and said[1] == best["cls"] and abs(float(said[2]) - best["conf"]) <= 0.005, note
    page.screenshot(path=SHOTS / "detect-none-shown.png")
    page.click("#results article:first-child button.show-best")
    assert float(page.input_value("#conf")) <= best["conf"]
    assert best["cls"] in [b["cls"] for b in _boxes(page)]
    page.fill("#conf", f"{conf:.2f}")
    assert len(_boxes(page)) == len(drawn)
    first = drawn[0]["cls"]
    page.uncheck(f"#class-filter input[data-class={first}]")
    assert all(b["cls"] != first for b in _boxes(page))
    page.check(f"#class-filter input[data-class={first}]")
    assert not requests
    # The sample button, for a visitor with no image at hand.
    page.click("#try-sample")
    page.wait_for_selector("#results article:nth-child(2)")
    assert page.locator("#results article:first-child g.box").count() >= 1
    # A file that is not an image: the API's own message, shown.
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are notes, not a picture")
    page.set_input_files("#image-input", str(bad))
    page.wait_for_selector("#toast:not([hidden])")
    assert "image" in page.inner_text("#toast").lower()


def test_a_tiff_the_browser_cannot_show_still_gets_its_boxes(page, stack, tmp_path):
    """Chromium has no TIFF decoder: the image's place keeps its proportions, says why
    it is blank, and carries the API's boxes."""
    sample = _sample(2)
    path = tmp_path / "scene.tiff"
    sample.image.save(path, format="TIFF")
    page.goto(stack["url"] + "/")
    page.wait_for_selector("#serving[data-version]")
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("#results article .no-preview")
    assert "cannot show" in page.inner_text("#results article .no-preview")
    W, H = sample.image.size
    shown = page.eval_on_selector(
        "#results article .no-preview", "d => d.getBoundingClientRect().toJSON()"
    )
    assert abs(shown["width"] / shown["height"] - W / H) < 0.02
    assert len(_boxes(page)) >= 2
    page.screenshot(path=SHOTS / "detect-tiff.png")


def test_labels_of_boxes_that_start_together_do_not_cover_each_other(page, stack):
    # Two boxes with the same top edge, side by side, and one far away: the second label
    # goes a line down, the far one stays above its box (the page's own module).
    page.goto(stack["url"] + "/")
    at = page.evaluate(
        """async () => {
          const { labelPosition } = await import("/console/detect.js");
          const placed = [];
          return [
            labelPosition({ x1: 100, y1: 200 }, 11, 1, placed),
            labelPosition({ x1: 130, y1: 205 }, 13, 1, placed),
            labelPosition({ x1: 500, y1: 200 }, 11, 1, placed),
          ];
        }"""
    )
    assert at[0] == {"x": 103, "y": 196}
    assert at[1]["y"] >= at[0]["y"] + 16  # a line below, not on top of the first
    assert at[2] == {"x": 503, "y": 196}


def test_score_example_and_the_loop_from_a_drawn_box(page, stack, tmp_path):
    path, sample = _image(tmp_path, 3)
    page.goto(stack["url"] + "/#score")
    page.click("#score-example")
    page.click("#score-run")
    page.wait_for_selector("#score-total")
    assert float(page.inner_text("#score-total")) > 0
    # darknet's own figure for the same outputs, beside the loss
    assert float(page.inner_text("#score-darknet")) > 0
    assert page.locator("#score-per-image tbody tr").count() == 1
    page.screenshot(path=SHOTS / "score.png", full_page=True)
    # Draw the first object on the detect image, score the raw grid against it.
    page.goto(stack["url"] + "/#detect")
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("#results article")
    page.check("#draw-0")
    svg = page.eval_on_selector(
        "#results article:first-child svg", "s => s.getBoundingClientRect().toJSON()"
    )
    k, cx, cy, w, h = sample.labels[0]
    page.select_option("#draw-class-0", str(int(k)))
    x1, y1 = svg["x"] + (cx - w / 2) * svg["width"], svg["y"] + (cy - h / 2) * svg["height"]
    x2, y2 = svg["x"] + (cx + w / 2) * svg["width"], svg["y"] + (cy + h / 2) * svg["height"]
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2)
    page.mouse.move(x2, y2)
    page.mouse.up()
    assert page.locator("#results article:first-child g.truth").count() == 1
    page.click("#results article:first-child button.score-drawn")
    page.wait_for_url("**/#score")
    page.wait_for_selector("#score-result :text('against the 1 box')")
    loss = float(page.inner_text("#score-total"))
    # The same request by hand gives the same loss.
    raw = httpx.post(f"{stack['url']}/v1/detect", params={"include_raw": True},
                     files={"image": ("a.jpg", sample.encoded)}).json()["raw"]  # fmt: skip
    label = [{"class_id": int(k), "box": [float(cx), float(cy), float(w), float(h)]}]
    ref = httpx.post(
        f"{stack['url']}/v1/loss", json={"predictions": [raw], "labels": [label]}
    ).json()
    assert loss == pytest.approx(ref["loss"], rel=0.05)


def test_jobs_from_the_page_curves_activation_and_cancel(page, browser, stack, tmp_path):
    folder = stack["base"] / "data" / "renamed"
    archive = tmp_path / "renamed.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.rglob("*"):
            z.write(p, f"renamed/{p.relative_to(folder)}")
    page.goto(stack["url"] + "/#jobs")
    # Generated shapes (the default source) need a count only; the id and format
    # fields show for an uploaded data set.
    assert page.is_visible("#job-images") and not page.is_visible("#job-dataset")
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload-form button[type=submit]")
    _answer_key_dialog(page)  # 401: the page asks for the key once, then retries
    page.wait_for_selector("#upload-result :text('24 images')")
    assert (
        page.get_attribute("#upload-progress", "value") == "1"
        or page.eval_on_selector("#upload-progress", "p => p.value") == 1
    )
    # The upload fills in the job form: its data set, its format.
    assert page.input_value("#job-source") == "upload" and page.input_value("#job-dataset")
    assert page.is_visible("#job-dataset") and not page.is_visible("#job-images")
    # Empty fields mean the service's fine-tuning defaults, which the form shows.
    defaults = httpx.get(f"{stack['url']}/openapi.json").json()["components"]["schemas"]
    epochs = defaults["JobRequest"]["properties"]["epochs"]["default"]
    page.wait_for_selector(f"#job-epochs[placeholder='default {epochs}']")
    assert page.input_value("#job-lr") == ""  # left out of the request: the default applies
    page.fill("#job-epochs", "2")
    page.fill("#job-batch", "8")
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/#job/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job-status[data-status=running], #job-status[data-status=succeeded]",
                           timeout=60_000)  # fmt: skip
    page.screenshot(path=SHOTS / "job-running.png", full_page=True)
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=120_000)
    assert page.get_attribute("#chart-map polyline", "data-points") == "3"  # epochs 0, 1, 2
    assert page.get_attribute("#chart-loss polyline[data-series=train]", "data-points") == "2"
    assert "registered" in page.inner_text("#job-outcome")
    best = httpx.get(f"{stack['url']}/v1/jobs/{job_id}").json()["result"]["best_epoch"]
    assert page.text_content("#chart-map text.mark") == f"kept: epoch {best}"  # SVG text
    page.screenshot(path=SHOTS / "job.png", full_page=True)
    page.reload()  # the page keeps nothing of its own: a reload shows the same
    page.wait_for_selector("#job-status[data-status=succeeded]")
    assert page.get_attribute("#chart-map polyline", "data-points") == "3"
    job = httpx.get(f"{stack['url']}/v1/jobs/{job_id}").json()
    version = job["model_version"]
    assert version == 2 and job["result"]["activated"] is False

    # A second browser watches while the first activates the new version.
    other = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    other.goto(stack["url"] + "/#models")
    other.wait_for_selector("#serving[data-version='1']")
    page.goto(stack["url"] + "/#models")
    page.wait_for_selector(f"#models-table tr[data-version='{version}'] button[data-activate]")
    page.screenshot(path=SHOTS / "models.png", full_page=True)
    names = httpx.get(f"{stack['url']}/v1/models").json()["versions"][-1]["classes"]
    cells = page.locator(f"#models-table tr[data-version='{version}'] td").all_inner_texts()
    assert ", ".join(names) in cells  # the version's classes, from its sidecar
    # The new version's ONNX file, downloaded from its row, is the one the job registered.
    with page.expect_download() as got:
        page.click(f"#models-table tr[data-version='{version}'] button[data-download]")
    assert got.value.suggested_filename == f"yolov1-v{version}-model.onnx"
    registered = stack["store"] / "versions" / str(version) / "model.onnx"
    assert Path(got.value.path()).read_bytes() == registered.read_bytes()
    page.click(f"#models-table tr[data-version='{version}'] button[data-activate]")
    t0 = time.monotonic()
    other.wait_for_selector(f"#serving[data-version='{version}']", timeout=5000)
    assert time.monotonic() - t0 < 2.5
    other.screenshot(path=SHOTS / "models-390px.png", full_page=True)
    assert other.evaluate("document.documentElement.scrollWidth") <= 391
    # Detection now answers with the new version.
    page.goto(stack["url"] + "/#detect")
    page.set_input_files("#image-input", str(_write(stack["base"], 4)))
    page.wait_for_selector(f"#results .answered-by:text('v{version}')")
    # Roll back in one click.
    page.goto(stack["url"] + "/#models")
    page.click("#models-table button:text('Roll back to v1')")
    other.wait_for_selector("#serving[data-version='1']", timeout=5000)

    # A long job, cancelled from its page.
    page.goto(stack["url"] + "/#jobs")
    page.select_option("#job-source", "shapes")
    page.fill("#job-images", "48")
    page.fill("#job-epochs", "200")
    # Every other job field of the API is under "All options", from its schema.
    props = defaults["JobRequest"]["properties"]
    page.click("#job-more summary")
    listed = page.eval_on_selector_all(
        "#job-options [data-field]", "es => es.map(e => e.dataset.field)"
    )
    assert set(listed) == set(props) - {"dataset", "auto_activate", "epochs", "batch_size",
                                        "learning_rate"}  # fmt: skip
    assert page.get_attribute("#job-opt-freeze_layers", "placeholder") == "default 0"
    page.fill("#job-opt-freeze_layers", "1")
    page.select_option("#job-opt-optimizer", "sgd")
    page.select_option("#job-opt-augment", "false")
    page.locator("#job-form").screenshot(path=SHOTS / "job-options.png")
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/#job/*")
    page.wait_for_selector("#job-status[data-status=running]", timeout=60_000)
    sent = httpx.get(f"{stack['url']}/v1/jobs/{page.url.rsplit('/', 1)[1]}").json()["request"]
    assert (sent["freeze_layers"], sent["optimizer"], sent["augment"]) == (1, "sgd", False)
    assert sent["ema_decay"] == props["ema_decay"]["default"]  # left empty: the default
    page.click("#job-cancel")
    page.wait_for_selector("#job-status[data-status=cancelled]", timeout=30_000)
    page.goto(stack["url"] + "/#jobs")
    page.wait_for_selector("#jobs-table td.status-cancelled")
    page.screenshot(path=SHOTS / "jobs.png", full_page=True)
    other.close()


def _write(base: Path, k: int) -> Path:
    path = base / f"scene{k}.jpg"
    path.write_bytes(_sample(k).encoded)
    return path


def test_docs_render_offline_and_the_page_works_by_keyboard_at_390px(browser, stack):
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    pg = ctx.new_page()
    outside: list[str] = []
    pg.on("request", lambda r: None if r.url.startswith((stack["url"], "blob:", "data:"))
          else outside.append(r.url))  # fmt: skip
    pg.goto(stack["url"] + "/docs")
    pg.wait_for_selector(".opblock", timeout=15_000)
    listed = pg.inner_text("#swagger-ui")
    for route in (
        "/v1/detect",
        "/v1/loss",
        "/v1/jobs",
        "/v2/models/{name}/infer",
        "/labelstudio/predict",
    ):
        assert route in listed, route
    pg.screenshot(path=SHOTS / "docs.png")
    pg.goto(stack["url"] + "/redoc")
    pg.wait_for_selector("text='/v1/detect'", timeout=15_000)
    # ReDoc's bundle links the Redocly logo of its footer from their CDN: a decorative
    # image that fails offline while the page renders whole. Nothing else may leave.
    assert [u for u in outside if not u.startswith("https://cdn.redoc.ly/redoc/logo")] == []
    pg.goto(stack["url"] + "/")
    pg.wait_for_selector("#serving[data-version]")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 391
    pg.screenshot(path=SHOTS / "detect-390px.png", full_page=True)
    # Tab from the top reaches the skip link, the sections, then the drop zone; Enter on
    # it opens the file chooser.
    seen = []
    for _ in range(12):
        pg.keyboard.press("Tab")
        seen.append(
            pg.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        )
        if seen[-1] == "drop":
            break
    assert "Jobs" in seen and "Models" in seen and seen[-1] == "drop", seen
    chosen = []
    # Listening turns on Chromium's file-chooser interception; that round trip must be
    # done before the key is pressed, or the dialog opens natively and is never seen.
    pg.on("filechooser", lambda fc: chosen.append(fc))
    pg.evaluate("1")
    pg.keyboard.press("Enter")
    pg.wait_for_timeout(100)
    deadline = time.monotonic() + 5
    while not chosen and time.monotonic() < deadline:
        pg.wait_for_timeout(100)
    assert chosen and chosen[0].is_multiple()
    for control in ("conf", "iou"):
        assert pg.eval_on_selector(f"label[for={control}]", "l => l.textContent.length") > 0
    ctx.close()
