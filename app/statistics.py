"""Inference statistics per model version, in the shape of Triton's statistics
extension: ``GET /v2/models/{name}/stats`` and the gRPC ``ModelStatistics`` call, what
tritonclient's ``get_inference_statistics`` returns and perf_analyzer prints as the
server's side of a request (queue, compute input, compute infer, compute output).

Every route that runs the model counts (``/v1/detect``, ``/v2``, gRPC, Label Studio's
``/predict``, where each task is a request). A request of N images is one request
and N inferences. ``success`` times it from its bytes in hand to its grids (or
detections) out; its parts are those of its slowest image, the images running side by
side: ``compute_input`` the decode and resize (a tensor's checks), ``queue`` the wait
for the model, ``compute_infer`` the model's run (a batch's whole time for each image
in it), ``compute_output`` the detections made from the grid (0 ns for a raw grid).
``execution_count`` counts model runs, ``batch_stats`` them by batch size. Counts live
in this process and start at zero when it starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.schemas import Timing

T = TypeVar("T")
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    last_inference: int = 0  # ms since the epoch
    inference_count: int = 0
    execution_count: int = 0
    durations: dict[str, Duration] = field(
        default_factory=lambda: {k: Duration() for k in DURATIONS}
    )
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> its runs

    def as_dict(self, name: str, version: int) -> dict[str, Any]:
        zero = Duration().as_dict()
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                **{k: d.as_dict() for k, d in self.durations.items()},
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": n,
                    "compute_input": zero,
                    "compute_infer": d.as_dict(),
                    "compute_output": zero,
                }
                for n, d in sorted(self.batches.items())
            ],
        }


class InferenceStatistics:
    """Written from the event loop and the inference threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[int, VersionStats] = {}

    def _of(self, version: int) -> VersionStats:
        return self._versions.setdefault(version, VersionStats())

    def executed(self, version: int, seconds: float, images: int) -> None:
        """One model run over ``images`` images (the batcher's ``on_batch``)."""
        with self._lock:
            s = self._of(version)
            s.execution_count += 1
            s.inference_count += images
            s.last_inference = int(time.time() * 1000)
            s.batches.setdefault(images, Duration()).add(seconds)

    def succeeded(self, version: int, seconds: float, images: Sequence[Timing]) -> None:
        """One request of ``images`` (their stage timings), done in ``seconds``."""
        slowest = max(
            images, key=lambda t: t.decode + t.preprocess + t.queue + t.inference + t.postprocess
        )
        parts = {
            "success": seconds,
            "compute_input": (slowest.decode + slowest.preprocess) / 1000,
            "queue": slowest.queue / 1000,
            "compute_infer": slowest.inference / 1000,
            # counted even at 0 ns: the four counts must agree (perf_analyzer checks)
            "compute_output": slowest.postprocess / 1000,
        }
        with self._lock:
            d = self._of(version).durations
            for k, s in parts.items():
                d[k].add(s)

    def failed(self, version: int, seconds: float) -> None:
        """A request the model could not take (an undecodable image, a bad tensor)."""
        with self._lock:
            self._of(version).durations["fail"].add(seconds)

    async def count(
        self, version: int, work: Awaitable[T], timings: Callable[[T], Sequence[Timing]]
    ) -> T:
        """Await ``work`` (one request's inference on model ``version``) and count it."""
        t0 = time.perf_counter()
        try:
            done = await work
        except Exception:
            self.failed(version, time.perf_counter() - t0)
            raise
        self.succeeded(version, time.perf_counter() - t0, timings(done))
        return done

    def report(self, name: str, versions: list[int]) -> list[dict[str, Any]]:
        """The protocol's ``model_stats``: one entry per version asked for."""
        with self._lock:
            return [self._versions.get(v, VersionStats()).as_dict(name, v) for v in versions]
