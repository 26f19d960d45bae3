"""Worker configuration (environment variables with the ``YOLOV1_`` prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.registry import DEFAULT_STORE

ROOT = Path(__file__).resolve().parents[1]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YOLOV1_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    model_store: Path = DEFAULT_STORE
    data_root: Path = ROOT / "data"
    # Long ML tasks: the broker must not hand a running job to another worker.
    visibility_timeout_s: int = Field(12 * 3600, ge=60)
    soft_time_limit_s: int = Field(6 * 3600, ge=1)
    hard_time_limit_s: int = Field(6 * 3600 + 600, ge=2)
    max_attempts: int = Field(3, ge=1)
    lock_ttl_s: int = Field(30, ge=5)
    heartbeat_s: float = Field(5.0, gt=0)
    stale_after_s: int = Field(60, ge=10)
    torch_threads: int = Field(0, ge=0)  # 0: torch's default
    # After each job: keep the newest N versions (plus the active one and its parent);
    # 0 keeps every version. Run folders of jobs that succeeded or were cancelled go.
    keep_versions: int = Field(0, ge=0)

    @property
    def runs_root(self) -> Path:
        return self.model_store / "runs"
