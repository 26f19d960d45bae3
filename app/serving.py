"""The served model: an ONNX Runtime session, warmed up, swappable without a restart."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.infer import GPU_PROVIDERS, OnnxDetector

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    detector: OnnxDetector
    name: str
    version: int
    path: Path
    precision: str = "fp32"
    precision_reason: str | None = None
    loaded_at: float = field(default_factory=time.time)
    warmup_ms: dict[int, float] = field(default_factory=dict)
    # A second session of the same model whose threads spin-wait between runs: for an
    # image that arrives alone, waking sleeping threads costs more than the run itself.
    # Batches use ``detector``, whose threads sleep and leave the cores to decoding.
    alone: OnnxDetector | None = None
    # On the CPU, one-thread sessions for images that arrive while others are in
    # flight, each run beside the others (``Settings.cpu_lanes``); None: micro-batch.
    lanes: queue.SimpleQueue[OnnxDetector] | None = None
    lane_count: int = 0
    # On a GPU provider, one session per batch size (``bucket_sizes``), each fed only
    # its own size: ONNX Runtime's CUDA provider chooses its convolution algorithms
    # again whenever a session's input shape differs from its last run, which made
    # batches of 1 to 8 in turn a hundred times slower than any fixed size (README, "On
    # a GPU"). None: one session takes every size (the CPU provider has no such cost).
    buckets: dict[int, OnnxDetector] | None = None

    @property
    def cfg(self):
        return self.detector.cfg

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``(N, size, size, 3)`` uint8 -> ``(N, S, S, 5B + C)``."""
        if self.buckets is None or not len(batch):
            return self.detector.run(batch)
        return run_bucketed(self.buckets, batch, OnnxDetector.run)

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """The network input as it is, ``(N, 3, size, size)`` float32 -> ``(N, S, S, 5B + C)``."""
        if self.buckets is None or not len(x):
            return self.detector.run_tensor(x)
        return run_bucketed(self.buckets, x, OnnxDetector.run_tensor)

    def run_alone(self, batch: np.ndarray) -> np.ndarray:
        if self.buckets is not None:
            return self.run(batch)
        return (self.alone or self.detector).run(batch)

    def run_lane(self, batch: np.ndarray) -> np.ndarray:
        """On a free lane's session (waiting for one when every lane is busy)."""
        session = self.lanes.get()
        try:
            return session.run(batch)
        finally:
            self.lanes.put(session)

    def describe(self) -> dict[str, Any]:
        meta = self.detector.metadata
        cfg = self.cfg
        return {
            "name": self.name,
            "version": self.version,
            "provider": self.detector.provider,
            "path": str(self.path),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "quantization": meta.get("quantization"),
            "architecture": cfg.arch,
            "input_size": cfg.input_size,
            "grid": {"S": cfg.S, "B": cfg.B, "C": cfg.C},
            "classes": cfg.class_names,
            "layout": cfg.layout,
            "training_metrics": meta.get("training_metrics", {}),
            "best_val_map50": meta.get("best_val_map50"),
            "conf_threshold": self.detector.conf_threshold,
            "calibration": meta.get("calibration"),
            "warmup_ms": self.warmup_ms,
            "cpu_lanes": self.lane_count,
            "batch_buckets": sorted(self.buckets) if self.buckets else None,
        }


def bucket_sizes(max_batch: int) -> list[int]:
    """The batch sizes that get a session of their own: the powers of two below
    ``max_batch``, then ``max_batch`` (8: ``[1, 2, 4, 8]``; 6: ``[1, 2, 4, 6]``), so
    that padding at most doubles a batch."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return [*sizes, max_batch]


def bucket_plan(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """``n`` images as runs of ``(images, bucket size)``: whole runs of the largest
    bucket, then the rest in the smallest bucket that holds it (``n`` 11, sizes
    ``[1, 2, 4, 8]``: ``[(8, 8), (3, 4)]``; ``n`` 0: ``[]``)."""
    largest = max(sizes)
    plan = [(largest, largest)] * (n // largest)
    if rest := n % largest:
        plan.append((rest, min(b for b in sizes if b >= rest)))
    return plan


def run_bucketed(
    buckets: dict[int, OnnxDetector],
    batch: np.ndarray,
    run: Callable[[OnnxDetector, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``run`` a batch ``(N, ...)`` on the bucket sessions, each at its own size (the
    last run padded with zeros, its padding's output dropped) -> ``(N, S, S, 5B + C)``."""
    out, start = [], 0
    for count, size in bucket_plan(len(batch), sorted(buckets)):
        part = batch[start : start + count]
        if count < size:
            pad = np.zeros((size - count, *part.shape[1:]), part.dtype)
            part = np.concatenate([part, pad])
        out.append(run(buckets[size], part)[:count])
        start += count
    return out[0] if len(out) == 1 else np.concatenate(out)


# YOLOV1_PRECISION=auto serves int8 only when it is at least this much faster: below
# it, run-to-run noise on a shared machine could pick either.
AUTO_INT8_GAIN = 1.1


def pick_precision(
    fp32: Path, int8: Path, *, providers: list[str] | None, intra_op_threads: int | None
) -> tuple[str, str]:
    """``("int8" | "fp32", why)``: both models timed at batch 1 on this machine, in
    alternating rounds (medians), as a lone image runs; on a GPU provider, fp32."""
    if not int8.exists():
        return "fp32", "the version has no int8 variant"
    # Threads that sleep between runs: a spinning pool of the model not being timed
    # took a core from the one being timed, and on 2 cores the ratio then read from
    # 0.66x to 1.69x between loads of the same two models (an AVX2 EPYC, where they run
    # equally fast alone); sleeping, 0.93x to 1.02x.
    kw = {"providers": providers, "intra_op_threads": intra_op_threads, "spin": False}
    dets = {"fp32": OnnxDetector(fp32, **kw)}
    if dets["fp32"].provider != "CPUExecutionProvider":
        return "fp32", f"{dets['fp32'].provider} runs the fp32 model"
    dets["int8"] = OnnxDetector(int8, **kw)
    size = dets["fp32"].cfg.input_size
    one = np.zeros((1, size, size, 3), np.uint8)
    times: dict[str, list[float]] = {k: [] for k in dets}
    for _ in range(4):
        for k, det in dets.items():
            det.run(one)  # each round starts warm
            for _ in range(8):
                t0 = time.perf_counter()
                det.run(one)
                times[k].append(time.perf_counter() - t0)
    ms = {k: float(np.median(v)) * 1000 for k, v in times.items()}
    gain = ms["fp32"] / ms["int8"]
    chosen = "int8" if gain >= AUTO_INT8_GAIN else "fp32"
    return chosen, (
        f"timed at load: int8 {ms['int8']:.2f} ms, fp32 {ms['fp32']:.2f} ms a 1-image batch "
        f"({gain:.2f}x; int8 serves from {AUTO_INT8_GAIN}x)"
    )


def load_served_model(
    path: Path,
    *,
    version: int,
    name: str | None = None,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
    warmup_batch_sizes: list[int] = (1,),
    batcher_sizes: list[int] = (),
    precision: str = "fp32",
    lanes: int = 0,
    buckets: bool | None = None,
) -> ServedModel:
    """Build the sessions and run them once per served batch size before they take
    traffic: ``warmup_batch_sizes``, and ``batcher_sizes`` (those the micro-batcher can
    form) unless ``lanes`` take concurrent images instead (the CPU provider).
    ``buckets``: a session per batch size (:func:`bucket_sizes` of the largest size
    served); None: on a GPU provider only.

    Raises ``ValueError`` (or ONNX Runtime's error) for a corrupt or mismatching model.
    """
    det = OnnxDetector(path, providers=providers, intra_op_threads=intra_op_threads, spin=False)
    alone = OnnxDetector(path, providers=providers, intra_op_threads=intra_op_threads, spin=True)
    served = ServedModel(
        det, name or det.metadata.get("name", path.parent.name), version, path, precision,
        alone=alone,
    )  # fmt: skip
    one = np.zeros((1, det.cfg.input_size, det.cfg.input_size, 3), np.uint8)
    alone.run(one)
    if lanes > 0 and det.provider == "CPUExecutionProvider":
        served.lanes = queue.SimpleQueue()
        for _ in range(lanes):
            lane = OnnxDetector(path, providers=providers, intra_op_threads=1, spin=False)
            lane.run(one)
            served.lanes.put(lane)
        served.lane_count = lanes
    if served.lanes is None:
        warmup_batch_sizes = [*warmup_batch_sizes, *batcher_sizes]
    if buckets is None:
        buckets = det.provider in GPU_PROVIDERS
    if buckets:
        sizes = bucket_sizes(max(warmup_batch_sizes))
        # the lone image's session takes size 1, the batches' the largest
        served.buckets = {1: alone, sizes[-1]: det} if len(sizes) > 1 else {1: alone}
        for n in sizes[1:-1]:
            served.buckets[n] = OnnxDetector(
                path, providers=providers, intra_op_threads=intra_op_threads, spin=False
            )
        warmup_batch_sizes = sizes  # each session's one shape; other sizes pad to them
    size = det.cfg.input_size
    for n in sorted(set(warmup_batch_sizes)):
        t0 = time.perf_counter()
        out = served.run(np.zeros((n, size, size, 3), np.uint8))
        if out.shape != (n, det.cfg.S, det.cfg.S, det.cfg.channels) or not np.isfinite(out).all():
            raise ValueError(f"{path}: warm-up output {out.shape} is not a valid grid")
        served.warmup_ms[n] = round((time.perf_counter() - t0) * 1000, 2)
    log.info(
        "model %s v%d ready on %s (warm-up %s ms)",
        served.name,
        version,
        det.provider,
        served.warmup_ms,
    )
    return served


class ModelHolder:
    """The active model; swapping it is one reference assignment, so requests in
    flight finish on the model they started with."""

    def __init__(self) -> None:
        self._current: ServedModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ServedModel:
        model = self._current
        if model is None:
            raise RuntimeError("no model loaded")
        return model

    @property
    def ready(self) -> bool:
        return self._current is not None

    def peek(self) -> ServedModel | None:
        """The current model, or None before the first one is loaded."""
        return self._current

    def swap(self, model: ServedModel) -> ServedModel | None:
        with self._lock:
            old, self._current = self._current, model
        return old


class ModelManager:
    """Loads the served model from the registry (or a plain file), activates versions,
    and follows the store's active version so that every replica switches."""

    def __init__(self, settings: Any, holder: ModelHolder, on_swap: Any = None) -> None:
        from model.registry import ModelStore

        self.settings = settings
        self.holder = holder
        self.on_swap = on_swap
        self.store = ModelStore(settings.model_store) if settings.model_store else None
        self.last_error: str | None = None
        self._failed: set[int] = set()
        self._lock = asyncio.Lock()
        # Versions other than the active one, loaded for requests that name them
        # (KServe's versioned infer); the two most recent are kept.
        self._others: dict[int, ServedModel] = {}
        self._others_lock = asyncio.Lock()

    def _load(self, version: int) -> ServedModel:
        from model.quantize import int8_path

        s = self.settings
        if self.store is None:
            path, name = s.model_path, None
            int8 = int8_path(path)
        else:
            meta = self.store.verify(version)  # RegistryError for missing or corrupt files
            path, name = self.store.onnx_path(version), meta.get("name")
            int8 = self.store.onnx_path(version, "int8")
        precision, reason = "fp32", None
        if s.precision == "int8":
            if int8.exists():
                path, precision = int8, "int8"
            else:
                reason = "the version has no int8 variant"
                log.warning("version %d has no int8 variant: serving its fp32 model", version)
        elif s.precision == "auto":
            precision, reason = pick_precision(
                path, int8, providers=s.providers or None, intra_op_threads=s.intra_op_threads
            )
            log.info("version %d serves %s: %s", version, precision, reason)
            if precision == "int8":
                path = int8
        served = load_served_model(
            path,
            version=version,
            name=name,
            providers=s.providers or None,
            intra_op_threads=s.intra_op_threads,
            warmup_batch_sizes=s.warmup_batch_sizes,
            # every batch size the batcher can form, so no request meets a cold shape
            batcher_sizes=list(range(1, s.batch_max + 1)),
            precision=precision,
            lanes=s.lanes,
            buckets=s.batch_buckets,
        )
        served.precision_reason = reason
        return served

    def versions(self) -> list[int]:
        return self.store.versions() if self.store is not None else [self.holder.current.version]

    def loaded_versions(self) -> set[int]:
        """The active version and those kept loaded for requests that named them."""
        current = self.holder.peek()
        return set(self._others) | ({current.version} if current is not None else set())

    async def model_for(self, version: int | None) -> ServedModel:
        """The active model, or a registered ``version`` (loaded on first use).
        Raises ``KeyError`` for a version the store does not have."""
        current = self.holder.current
        if version is None or version == current.version:
            return current
        if self.store is None or version not in self.store.versions():
            raise KeyError(version)
        async with self._others_lock:
            if version not in self._others:
                served = await asyncio.to_thread(self._load, version)
                self._others[version] = served
                while len(self._others) > 2:
                    self._others.pop(next(iter(self._others)))
            return self._others[version]

    def initial_version(self) -> int:
        if self.store is None:
            return 1
        return self.store.ensure_default(self.settings.model_path)

    async def activate(self, version: int, *, persist: bool = True) -> ServedModel:
        """Build and warm ``version``, then swap it in; the old model keeps serving on
        any error (which propagates)."""
        async with self._lock:
            current = self.holder.peek()
            if current is not None and current.version == version:
                if persist and self.store is not None:
                    self.store.set_active(version)
                return current
            served = await asyncio.to_thread(self._load, version)
            if persist and self.store is not None:
                self.store.set_active(version)
            self.holder.swap(served)
            self._failed.discard(version)
            if self.on_swap is not None:
                self.on_swap(served)
            log.info("now serving %s v%d", served.name, served.version)
            return served

    async def sync(self, *, retry: bool = False) -> ServedModel:
        """Serve the store's active version now, as each poll of :meth:`follow` does.
        A version that failed to load stays skipped unless ``retry``; a failure
        (also of reading the store) propagates, and the old model keeps serving."""
        current = self.holder.current
        version = None
        try:
            version = self.store.active_version() if self.store is not None else None
            if version is None or version == current.version:
                return current
            if version in self._failed and not retry:
                return current
            return await self.activate(version, persist=False)
        except Exception as exc:
            if version is not None:
                self._failed.add(version)
            self.last_error = f"version {version}: {exc}"
            log.error("could not switch to model version %s: %s", version, exc)
            raise

    async def follow(self) -> None:
        """Poll the store's active version (a shared volume for every replica)."""
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            if self.store is None or not self.holder.ready:
                continue
            try:
                await self.sync()
            except Exception:  # said in the log and last_error; the old model serves
                continue
