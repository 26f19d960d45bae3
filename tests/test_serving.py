"""The batcher and the model manager in-process, on the real default model and a real
model store (no HTTP): batching, a swap mid-traffic, following the store."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import numpy as np
import pytest

from app.batching import MicroBatcher
from app.serving import ModelHolder, ModelManager, load_served_model
from app.settings import Settings
from model.registry import ModelStore
from support.procs import DEFAULT_MODEL


@pytest.fixture(scope="module")
def served():
    return load_served_model(DEFAULT_MODEL, version=1, intra_op_threads=1)


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_concurrent_images_form_one_batch_with_the_same_grids(served):
    images = _images(6, served.cfg.input_size)
    alone = served.run(np.stack(images))  # (6, S, S, 5B + C)
    sizes = []

    async def go():
        b = MicroBatcher(
            max_batch=8, wait_ms=50, on_batch=lambda m, s, waits: sizes.append(len(waits))
        )
        b.start()
        try:
            b.incoming = len(images)  # all six are "decoding": the batch waits for them
            return await asyncio.gather(*(b.submit(im, served) for im in images))
        finally:
            await b.stop()

    results = asyncio.run(go())
    assert max(sizes) > 1 and sum(sizes) == 6
    for r, ref in zip(results, alone, strict=True):
        assert r.model is served and np.allclose(r.grid, ref, atol=1e-4)


def test_run_alone_returns_named_parts(served):
    image = _images(1, served.cfg.input_size)[0]

    async def go():
        b = MicroBatcher(max_batch=4, wait_ms=1)
        b.start()
        try:
            with b.expecting():
                assert b.idle
                return await b.run_alone(lambda: SimpleNamespace(array=image), served)
        finally:
            await b.stop()

    ran = asyncio.run(go())
    assert ran.prepared.array is image and ran.result.batch_size == 1
    assert np.allclose(ran.result.grid, served.run(image[None])[0], atol=1e-4)


def test_concurrent_images_run_in_lanes_with_the_same_boxes():
    """On the CPU, images that arrive together each run on a one-thread session of
    their own (no batch), and find what each finds alone."""
    from concurrent.futures import ThreadPoolExecutor

    from app.detection import detect_image
    from model.shapes import make_sample, sample_seed

    served = load_served_model(DEFAULT_MODEL, version=1, intra_op_threads=1, lanes=2)
    assert served.lanes is not None and served.lanes.qsize() == 2
    assert served.describe()["cpu_lanes"] == 2
    jpegs = []
    for i in range(6):
        buf = io.BytesIO()
        make_sample(sample_seed(31, i)).image.resize((640, 480)).save(buf, "JPEG")
        jpegs.append(buf.getvalue())
    opts = dict(conf_threshold=0.2, iou_threshold=0.5, max_detections=100, classes=None)
    used = []
    run_lane = served.run_lane
    served.run_lane = lambda batch: used.append(len(batch)) or run_lane(batch)

    async def go(together: bool):
        b = MicroBatcher(max_batch=8, wait_ms=1)
        b.start()
        try:
            with ThreadPoolExecutor(2) as pool:
                one = lambda d: detect_image(d, served, b, pool, max_pixels=10**8, options=opts)  # noqa: E731
                if together:
                    return await asyncio.gather(*(one(d) for d in jpegs))
                return [await one(d) for d in jpegs]
        finally:
            await b.stop()

    alone = asyncio.run(go(False))
    assert used == []  # one at a time: the idle path, never a lane
    together = asyncio.run(go(True))
    assert len(used) >= 4 and set(used) == {1} and served.lanes.qsize() == 2
    for a, t in zip(alone, together, strict=True):
        assert [d.class_id for d in a.detections] == [d.class_id for d in t.detections]
        for da, dt in zip(a.detections, t.detections, strict=True):
            assert np.allclose(da.box, dt.box, atol=0.5)
            assert abs(da.confidence - dt.confidence) < 1e-3


def _settings(store_root):
    return Settings(
        model_store=store_root,
        model_path=DEFAULT_MODEL,
        providers=[],
        intra_op_threads=1,
        warmup_batch_sizes=[1],
        batch_max=1,
        model_poll_s=0.05,
    )


def test_manager_follows_the_store_and_survives_an_unreadable_active_file(tmp_path):
    store = ModelStore(tmp_path)
    store.ensure_default(DEFAULT_MODEL)
    v2 = store.register(
        {n: store.path(1) / n for n in ("model.onnx", "model.json")}, {"name": "copy"}
    )
    holder = ModelHolder()
    manager = ModelManager(_settings(tmp_path), holder)

    async def go():
        await manager.activate(1, persist=False)
        # `active` is a folder from the start: reading it is an OSError that is not
        # FileNotFoundError; the manager reports it and keeps serving and following.
        (tmp_path / "active").unlink(missing_ok=True)
        (tmp_path / "active").mkdir()
        follow = asyncio.create_task(manager.follow())
        try:
            await asyncio.sleep(0.3)
            assert not follow.done() and holder.current.version == 1
            assert manager.last_error is not None
            (tmp_path / "active").rmdir()
            store.set_active(v2)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if holder.current.version == v2:
                    break
            assert holder.current.version == v2
        finally:
            follow.cancel()

    asyncio.run(go())


def test_a_failed_image_cancels_the_rest_of_its_request():
    """A request of several images answers with the first one's error; fetches and
    decodes of the others must not go on for nobody (``gather_or_cancel``)."""
    from app.aio import gather_or_cancel

    async def go() -> tuple[bool, bool]:
        finished = asyncio.Event()

        async def slow() -> int:
            await asyncio.sleep(5)
            finished.set()
            return 1

        async def bad() -> int:
            await asyncio.sleep(0.01)
            raise ValueError("not an image")

        other = asyncio.ensure_future(slow())
        with pytest.raises(ValueError, match="not an image"):
            await gather_or_cancel(other, bad())
        await asyncio.sleep(0)
        ok = await gather_or_cancel(asyncio.sleep(0, result=2), asyncio.sleep(0, result=3))
        return other.cancelled() and not finished.is_set(), ok == [2, 3]

    assert asyncio.run(go()) == (True, True)


def test_bucket_sizes_and_plans():
    from app.serving import bucket_plan, bucket_sizes

    assert bucket_sizes(1) == [1] and bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(6) == [1, 2, 4, 6] and bucket_sizes(16) == [1, 2, 4, 8, 16]
    sizes = [1, 2, 4, 8]
    assert bucket_plan(0, sizes) == [] and bucket_plan(1, sizes) == [(1, 1)]
    assert bucket_plan(3, sizes) == [(3, 4)] and bucket_plan(8, sizes) == [(8, 8)]
    assert bucket_plan(11, sizes) == [(8, 8), (3, 4)]
    assert bucket_plan(17, sizes) == [(8, 8), (8, 8), (1, 1)]
    for n in range(40):  # every image in exactly one run, no run over its bucket
        plan = bucket_plan(n, [1, 2, 4, 6])
        assert sum(c for c, _ in plan) == n and all(0 < c <= b for c, b in plan)


def test_batch_buckets_give_the_grids_of_one_session(served):
    """A session per batch size (as on a GPU provider), every batch padded to the next
    size: each image's grid is the one the single session gives it, for every batch
    size up to past the largest bucket, through both the image and the tensor path."""
    from model.preprocess import to_input

    bucketed = load_served_model(
        DEFAULT_MODEL, version=1, intra_op_threads=1, batcher_sizes=[1, 2, 3, 4, 5, 6],
        buckets=True,
    )  # fmt: skip
    assert sorted(bucketed.buckets) == [1, 2, 4, 6]
    assert bucketed.buckets[1] is bucketed.alone and bucketed.buckets[6] is bucketed.detector
    assert bucketed.describe()["batch_buckets"] == [1, 2, 4, 6]
    assert sorted(bucketed.warmup_ms) == [1, 2, 4, 6] and served.buckets is None
    images = np.stack(_images(13, served.cfg.input_size, seed=5))
    for n in (0, 1, 3, 5, 6, 7, 13):
        ref = served.run(images[:n])
        got = bucketed.run(images[:n])
        assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-4), n
        x = to_input(images[:n], served.cfg)
        assert np.allclose(bucketed.run_tensor(x), ref, atol=1e-4), n
    assert np.allclose(bucketed.run_alone(images[:1]), served.run(images[:1]), atol=1e-4)


def test_in_thread_hands_back_results_errors_and_skips_what_was_given_up():
    """``app.aio.in_thread`` as ``run_in_executor`` behaves: the value, the exception,
    and a job cancelled before its thread was free never runs."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from app.aio import in_thread

    ran: list[str] = []
    gate = threading.Event()

    def boom() -> None:
        raise ValueError("no")

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            assert await in_thread(pool, lambda a, b: a + b, 2, 3) == 5
            with pytest.raises(ValueError, match="no"):
                await in_thread(pool, boom)
            blocker = in_thread(pool, gate.wait)  # holds the only thread
            later = in_thread(pool, ran.append, "later")
            later.cancel()
            gate.set()
            await blocker
            assert await in_thread(pool, ran.append, "after") is None
        assert ran == ["after"]

    asyncio.run(main())
