"""The service's real processes for tests and benchmarks: the API (``python -m app``)
on a free port, and Celery workers, each logging to ``.pytest_cache``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "default" / "model.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process of the repo whose output goes to ``.pytest_cache/<name>.log``."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        (ROOT / ".pytest_cache").mkdir(exist_ok=True)
        self.log = open(ROOT / ".pytest_cache" / f"{name}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Server(Process):
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "YOLOV1_HOST": "127.0.0.1",
            "YOLOV1_PORT": str(self.port),
            "YOLOV1_LOG_LEVEL": "warning",
            **(env or {}),
        }
        super().__init__([sys.executable, "-m", "app"], env, f"server-{self.port}")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s: {self.output()}")


class Worker(Process):
    """A Celery worker on the training queue, one process, named ``name``."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        from jobs.queue import QUEUE

        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
        argv += ["--loglevel=INFO", "-P", "prefork", "-c", "1", "-n", f"{name}@%h", "-Q", QUEUE]
        super().__init__(argv, env, f"worker-{name}")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        kids = self.children()
        super().stop()
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class MakeRun(Process):
    """``make run``'s supervisor (scripts/serve.py): the API, a worker and an embedded
    Redis of its own under ``base``, on a free port."""

    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "YOLOV1_PORT": str(self.port),
            "YOLOV1_MODEL_STORE": str(base / "store"),
            "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
            "YOLOV1_EMBEDDED_REDIS_PORT": str(free_port()),
            "YOLOV1_GRPC_PORT": str(free_port()),
            "YOLOV1_EMBEDDED_REDIS_DIR": str(base / "redis"),
            "YOLOV1_REDIS_URL": "",  # its own Redis, whatever the caller's environment says
            "YOLOV1_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.grpc = f"127.0.0.1:{env['YOLOV1_GRPC_PORT']}"
        super().__init__([sys.executable, "scripts/serve.py"], env, f"make-run-{self.port}")

    def up(self) -> bool:
        """The API is ready (its model loaded and warm), and its Redis with it."""
        try:
            r = httpx.get(f"{self.url}/readyz")
            return r.status_code == 200 and r.json().get("dependencies") == {"redis": "up"}
        except (httpx.TransportError, ValueError):
            return False

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make run did not come up: {self.output()}")
            time.sleep(0.3)

    def stop(self) -> None:
        # SIGTERM: the supervisor stops its children itself.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        print(self.output()[-3000:])
        self.log.close()
