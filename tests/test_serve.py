"""``make run``'s supervisor: the API, a worker and an embedded Redis, each started again
when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from support.procs import DEFAULT_MODEL, ROOT, free_port


def _children(pid: int) -> dict[str, int]:
    out = subprocess.run(["pgrep", "-a", "-P", str(pid)], capture_output=True, text=True)
    found = {}
    for line in out.stdout.splitlines():
        child, cmd = line.split(" ", 1)
        name = "api" if "-m app" in cmd else "worker" if "celery" in cmd else "redis"
        found[name] = int(child)
    return found


def _wait(pred, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_make_run_restarts_what_dies(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "YOLOV1_PORT": str(port),
        "YOLOV1_MODEL_STORE": str(tmp_path / "store"),
        "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
        "YOLOV1_EMBEDDED_REDIS_PORT": str(free_port()),
        "YOLOV1_EMBEDDED_REDIS_DIR": str(tmp_path / "redis"),
        "YOLOV1_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("YOLOV1_REDIS_URL", None)
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "scripts/serve.py"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/readyz").json()["dependencies"] == {"redis": "up"})
        first = _children(proc.pid)
        assert set(first) == {"api", "worker", "redis"}, first
        for name in ("worker", "api", "redis"):
            os.kill(_children(proc.pid)[name], signal.SIGKILL)
            _wait(lambda n=name: _children(proc.pid).get(n) not in (None, first[n]))
            _wait(lambda: httpx.get(f"{url}/readyz").json()["dependencies"] == {"redis": "up"})
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()
