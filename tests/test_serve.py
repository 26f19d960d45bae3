"""``make run``'s supervisor: the API, a worker and an embedded Redis, each started again
when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx

from support.procs import MakeRun


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
    run = MakeRun(tmp_path)
    try:
        run.wait_up()
        # make run serves the int8 variant where this CPU runs it faster, and says why.
        active = httpx.get(f"{run.url}/v1/models").json()["active"]
        assert "timed at load" in active["precision_reason"], active
        first = _children(run.proc.pid)
        assert set(first) == {"api", "worker", "redis"}, first
        for name in ("worker", "api", "redis"):
            os.kill(_children(run.proc.pid)[name], signal.SIGKILL)
            _wait(lambda n=name: _children(run.proc.pid).get(n) not in (None, first[n]))
            _wait(run.up)
        assert run.proc.poll() is None
        # KServe v2 over gRPC comes back with the restarted API.
        import tritonclient.grpc as tg

        assert tg.InferenceServerClient(run.grpc).is_model_ready("yolov1")
    finally:
        run.stop()
