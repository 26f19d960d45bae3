"""Job and data set records in Redis hashes, kept by the service itself (not only in
Celery's result backend): a queued job reads ``queued``, and records outlive result expiry."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

TERMINAL = ("succeeded", "failed", "cancelled")
JSON_FIELDS = ("request", "progress", "info", "result")

# Delete the lock only if we still hold it.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"  # noqa: E501


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = "yolov1") -> None:
        self.r = client
        self.p = prefix

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        # Short timeouts: a request that needs Redis while it is away answers 503 in
        # seconds rather than hanging (redis-py's defaults wait on the OS).
        return cls(
            redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=10,
                retry_on_timeout=True,
            )
        )

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def _k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    # --- jobs ---------------------------------------------------------------------------
    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex
        now = time.time()
        rec = {
            "id": job_id,
            "status": "queued",
            "created_at": now,
            "updated_at": now,
            "request": request,
            "progress": {},
            "attempts": 0,
            "rev": 1,
        }
        pipe = self.r.pipeline()
        pipe.hset(self._k("job", job_id), mapping=self._encode(rec))
        pipe.zadd(self._k("jobs"), {job_id: now})
        pipe.execute()
        return rec

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._k("job", job_id))
        if not raw:
            return None
        rec = self._decode(raw)
        rec["metrics"] = [
            json.loads(m) for m in self.r.lrange(self._k("job", job_id, "metrics"), 0, -1)
        ]
        return rec

    def list(self, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        total = self.r.zcard(self._k("jobs"))
        ids = self.r.zrevrange(self._k("jobs"), offset, offset + limit - 1)
        return total, [rec for i in ids if (rec := self.get(i)) is not None]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        pipe = self.r.pipeline()  # MULTI: the new fields and their revision land together
        pipe.hset(self._k("job", job_id), mapping=self._encode(fields))
        pipe.hincrby(self._k("job", job_id), "rev", 1)
        pipe.execute()

    def incr_attempts(self, job_id: str) -> int:
        return int(self.r.hincrby(self._k("job", job_id), "attempts", 1))

    def append_metrics(self, job_id: str, epoch_metrics: dict[str, Any]) -> None:
        key = self._k("job", job_id, "metrics")
        # A resumed job re-runs no finished epoch, but keep the list idempotent anyway.
        existing = [json.loads(m)["epoch"] for m in self.r.lrange(key, 0, -1)]
        if epoch_metrics["epoch"] not in existing:
            pipe = self.r.pipeline()
            pipe.rpush(key, json.dumps(epoch_metrics))
            pipe.hincrby(self._k("job", job_id), "rev", 1)
            pipe.execute()

    def request_cancel(self, job_id: str) -> None:
        self.r.set(self._k("job", job_id, "cancel"), "1")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self._k("job", job_id, "cancel")))

    def heartbeat(self, job_id: str) -> None:
        self.r.hset(self._k("job", job_id), "heartbeat_at", time.time())

    def counts(self) -> dict[str, Any]:
        """Jobs by status, and the recent training throughput of running jobs summed
        per worker (one pipelined round trip)."""
        ids = self.r.zrange(self._k("jobs"), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._k("job", job_id), "status", "worker", "progress")
        by_status: dict[str, int] = {}
        images_per_s: dict[str, float] = {}
        for status, worker, progress in pipe.execute() if ids else []:
            if status is None:
                continue
            by_status[status] = by_status.get(status, 0) + 1
            if status == "running" and progress:
                ips = json.loads(progress).get("images_per_s")
                if ips is not None:
                    w = worker or "unknown"
                    images_per_s[w] = images_per_s.get(w, 0.0) + float(ips)
        return {"by_status": by_status, "images_per_s": images_per_s}

    def stale_running(self, stale_after_s: float) -> list[str]:
        """Running jobs whose worker stopped beating (killed with its whole worker)."""
        out = []
        now = time.time()
        for job_id in self.r.zrange(self._k("jobs"), 0, -1):
            rec = self.r.hmget(self._k("job", job_id), "status", "heartbeat_at")
            if (
                rec[0] == "running"
                and now - float(rec[1] or 0) > stale_after_s
                and not self.r.exists(self._k("lock", job_id))
            ):
                out.append(job_id)
        return out

    # --- the per-job lock: a redelivered job never runs twice at once --------------------
    def acquire_lock(self, job_id: str, owner: str, ttl_s: int) -> bool:
        return bool(self.r.set(self._k("lock", job_id), owner, nx=True, ex=ttl_s))

    def lock_owner(self, job_id: str) -> str | None:
        return self.r.get(self._k("lock", job_id))

    def refresh_lock(self, job_id: str, owner: str, ttl_s: int) -> bool:
        return bool(self.r.eval(_REFRESH, 1, self._k("lock", job_id), owner, ttl_s))

    def release_lock(self, job_id: str, owner: str) -> None:
        self.r.eval(_RELEASE, 1, self._k("lock", job_id), owner)

    def steal_lock(self, job_id: str, old_owner: str, new_owner: str, ttl_s: int) -> bool:
        """Take over a lock whose holder is known to be dead."""
        if self.r.eval(_RELEASE, 1, self._k("lock", job_id), old_owner):
            return self.acquire_lock(job_id, new_owner, ttl_s)
        return False

    # --- data sets ----------------------------------------------------------------------
    def save_dataset(self, record: dict[str, Any]) -> None:
        self.r.set(self._k("dataset", record["id"]), json.dumps(record))

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self._k("dataset", dataset_id))
        return json.loads(raw) if raw else None

    # --- encoding -----------------------------------------------------------------------
    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, str]:
        out = {}
        for k, v in fields.items():
            if k in JSON_FIELDS:
                out[k] = json.dumps(v)
            elif v is None:
                out[k] = ""
            else:
                out[k] = str(v)
        return out

    @staticmethod
    def _decode(raw: dict[str, str]) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        for k, v in raw.items():
            if k in JSON_FIELDS:
                rec[k] = json.loads(v) if v else None
            elif k in ("created_at", "updated_at", "heartbeat_at", "started_at", "finished_at"):
                rec[k] = float(v) if v else None
            elif k in ("attempts", "model_version", "rev"):
                rec[k] = int(v) if v else None
            else:
                rec[k] = v or None
        return rec
