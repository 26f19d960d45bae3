"""The service's configuration: one pydantic-settings class, validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Environment variables with the ``YOLOV1_`` prefix (``YOLOV1_PORT=9000``)."""

    model_config = SettingsConfigDict(env_prefix="YOLOV1_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # KServe v2's gRPC API (Triton's and KServe's gRPC clients) on this port of the same
    # host; unset: HTTP only. make run and docker-compose set 8001, Triton's port.
    grpc_port: int | None = Field(None, ge=1, le=65535)
    grpc_threads: int = Field(16, ge=1, le=256)  # calls in flight over gRPC at once
    # The ONNX model served when no model store holds an active version.
    model_path: Path = ROOT / "models" / "default" / "model.onnx"
    # "int8": serve a version's verified int8 variant (yolov1 quantize) where it has
    # one, else its fp32 model (said in the log and in /v1/models). "auto": time both
    # when a version loads and serve int8 where it is at least AUTO_INT8_GAIN faster
    # on this CPU (it is on CPUs with VNNI, not on AVX2 alone; README).
    precision: Literal["fp32", "int8", "auto"] = "fp32"
    # ONNX Runtime execution providers, in order of preference; empty: CUDA if
    # this build has it, then CPU.
    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    intra_op_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    max_upload_mb: float = Field(20.0, gt=0)
    # KServe v2 infer bodies: tensors as JSON numbers run to ~12 bytes a value.
    max_infer_mb: float = Field(128.0, gt=0)
    max_json_bytes: int = Field(1_000_000, ge=1024)  # job requests and other small bodies
    max_pixels: int = Field(40_000_000, ge=1)  # one image
    max_request_pixels: int = Field(100_000_000, ge=1)  # all the images of one request
    # A client that stops sending its body for this long gets 408 and the connection
    # closes (slow uploads that keep sending are bounded by the size limits).
    body_timeout_s: float = Field(30.0, gt=0)
    # ... and one whose request headers are not all in after this long (slowloris).
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    # Detect's default score threshold; unset: each model's own, calibrated to
    # precision 0.9 on held-out data (yolov1 calibrate; 0.2 for a model without one).
    conf_threshold: float | None = Field(None, ge=0, le=1)
    max_images_per_request: int = Field(16, ge=1)
    batch_max: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(3.0, ge=0, le=1000)
    warmup_batch_sizes: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [1])
    max_loss_images: int = Field(1024, ge=1)
    decode_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    # On the CPU provider, a request that arrives while others are in flight decodes
    # and runs on a one-thread session of its own, this many side by side, instead of
    # joining a micro-batch: a batch of 8 is no faster per image than 1 on a CPU, while
    # decoding one image beside another's inference keeps every core busy. Unset: one
    # more than the cores (3 on 2 cores beat 2 and 4); 0: micro-batch as on a GPU.
    cpu_lanes: int | None = Field(None, ge=0, le=64)
    # A session per batch size (1, 2, 4, ... batch_max), each batch padded to the next
    # (app.serving.ServedModel.buckets says why). Unset: on a GPU provider only.
    batch_buckets: bool | None = None
    log_level: str = "info"

    @property
    def lanes(self) -> int:
        return (os.cpu_count() or 1) + 1 if self.cpu_lanes is None else self.cpu_lanes

    # Model registry: when set, the API serves its active version and follows it
    # (`make run` sets model.registry.DEFAULT_STORE, the worker's default); unset,
    # the API serves model_path alone.
    model_store: Path | None = None
    model_poll_s: float = Field(1.0, gt=0, le=3600)
    # Jobs and data sets need Redis (and a worker); without it those endpoints say 503.
    redis_url: str | None = None
    data_root: Path = ROOT / "data"
    # Bearer keys for the mutating endpoints (jobs, data sets, activation); empty: open.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Reads of jobs and models need a key as well (detection and scoring stay open).
    protect_reads: bool = False
    # A data-set zip as uploaded (streamed to disk, never held in memory whole), and
    # what it may expand to.
    max_dataset_upload_mb: float = Field(2048.0, gt=0)
    max_dataset_mb: float = Field(4096.0, gt=0)
    max_dataset_entries: int = Field(20_000, ge=1)
    max_compression_ratio: float = Field(200.0, gt=1)
    # The job events stream sends a comment after this long without a change, so
    # proxies that cut idle connections (often at 30-60 s) keep it open.
    sse_keepalive_s: float = Field(15.0, gt=0, le=300)

    # Image URLs in JSON detect requests and Label Studio tasks: off unless hosts are
    # listed. The server fetching what a request names is server-side request forgery
    # waiting to happen (cloud metadata at 169.254.169.254, admin ports on localhost),
    # so only these hosts (exact names, or ".example.com" for its subdomains), within
    # a size and time limit, and redirects only to the same host.
    image_url_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    image_url_timeout_s: float = Field(5.0, gt=0, le=120)
    image_url_max_redirects: int = Field(3, ge=0, le=10)
    # Label Studio, for the ML backend under /labelstudio: tasks name uploaded files by
    # a path on it (/data/upload/...), fetched with this API token.
    labelstudio_url: str | None = None
    labelstudio_api_key: str | None = None
    # Label Studio's "Start Training" (its webhook) submits a fine-tuning job on the
    # project's annotations. Off unless set: it writes a data set and starts a job.
    labelstudio_train: bool = False

    @field_validator("providers", "api_keys", "image_url_hosts", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("warmup_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, v: object) -> object:
        if isinstance(v, str):
            return [int(p) for p in v.split(",") if p.strip()]
        return v

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"model file {v} does not exist")
        return v

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_infer_bytes(self) -> int:
        return int(self.max_infer_mb * 1024 * 1024)

    @property
    def max_dataset_upload_bytes(self) -> int:
        return int(self.max_dataset_upload_mb * 1024 * 1024)
