"""The Open Inference Protocol (KServe v2): parsing an HTTP infer request (with Triton's
binary tensor data extension) into named arrays and the response back, and what a
request does, for HTTP and gRPC (``app.grpc_v2.server``) alike.

The model takes one of two inputs:

* the network's own tensor (its ONNX input name, FP32 ``[N, 3, size, size]``,
  normalised as ``model.preprocess.to_input`` does), run as it is;
* ``image_bytes`` (BYTES ``[N]``): encoded image files, decoded and resized here.

and gives one output, ``grid``: FP32 ``[N, S, S, 5B + C]``, the raw YOLOv1 grid
(docs/loss.md; ``POST /v1/loss`` scores it)."""

from __future__ import annotations

import base64
import binascii
import json
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from app.aio import gather_or_cancel
from app.detection import infer_image, timing_of
from app.schemas import Timing
from model.config import ModelConfig

if TYPE_CHECKING:
    from app.serving import ServedModel
    from app.state import AppState

MODEL_NAME = "yolov1"
# Triton's extensions served over both transports (HTTP adds binary_tensor_data).
EXTENSIONS = ["model_configuration", "statistics", "model_repository"]
IMAGE_INPUT = "image_bytes"
OUTPUT = "grid"
HEADER = "Inference-Header-Content-Length"
MAX_ELEMENTS = 64 * 3 * 1024 * 1024  # a batch of 64 at 1024 x 1024

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


# The protocol's JSON shapes, for /openapi.json (the requests are parsed by hand below:
# binary data may follow the JSON, and tensors can be megabytes of numbers).
class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32 for the network's tensor, BYTES for image_bytes")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes after the JSON"
    )
    data: list[Any] | None = Field(None, description="row-major, flat or nested; BYTES as base64")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for raw bytes")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class InferenceError(BaseModel):
    error: str


SCHEMAS = (ServerMetadata, ModelMetadata, InferenceRequest, InferenceResponse, InferenceError)


class ProtocolError(ValueError):
    """A request the protocol does not allow; answered ``{"error": message}``, 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # BYTES tensors: one bytes object per element


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[dict[str, Any]]  # requested outputs, as sent
    binary_output: bool  # the request's default for outputs that do not say


def metadata(cfg: ModelConfig, input_name: str, versions: list[int]) -> dict[str, Any]:
    size = cfg.input_size
    return {
        "name": MODEL_NAME,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": input_name, "datatype": "FP32", "shape": [-1, 3, size, size]},
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": OUTPUT, "datatype": "FP32", "shape": [-1, cfg.S, cfg.S, cfg.channels]}
        ],
        "parameters": {
            "class_names": cfg.class_names,
            "grid": {"S": cfg.S, "B": cfg.B, "C": cfg.C},
            "layout": cfg.layout,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
        },
    }


def model_config(cfg: ModelConfig, input_name: str, max_batch: int) -> dict[str, Any]:
    """Triton's model configuration extension (``/v2/models/{name}/config``, gRPC
    ``ModelConfig``), in Triton's JSON: what its perf_analyzer reads to make requests.
    Either input may be sent, so both are optional; ``image_bytes`` is ``[1]`` an image
    in Triton's batched terms, reshaped to the ``[N]`` the model takes."""
    size = cfg.input_size
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch,
        "input": [
            {
                "name": input_name,
                "data_type": "TYPE_FP32",
                "dims": [3, size, size],
                "optional": True,
            },
            {
                "name": IMAGE_INPUT,
                "data_type": "TYPE_STRING",
                "dims": [1],
                "reshape": {"shape": []},
                "optional": True,
            },
        ],
        "output": [
            {"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [cfg.S, cfg.S, cfg.channels]}
        ],
    }


def parse_infer(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """A request body: JSON, or (binary extension) JSON of ``header_length`` bytes
    followed by the tensors that declare ``binary_data_size``, in order."""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER} {header_length!r} does not fit a body of {len(body)}")
        n = int(header_length)
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ProtocolError("the request needs 'inputs': a non-empty list of tensors")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    offset = 0
    inputs = []
    for i, t in enumerate(doc["inputs"]):
        tensor, used = parse_input(t, i, rest[offset:], max_elements)
        offset += used
        inputs.append(tensor)
    if offset != len(rest):
        raise ProtocolError(f"{len(rest) - offset} bytes of binary data belong to no input")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    for o in outputs:
        if o["name"] != OUTPUT:
            raise ProtocolError(f"unknown output {o['name']!r}; the model has {OUTPUT!r}")
    req_id = doc.get("id")
    return InferRequest(
        id=str(req_id) if req_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)),
    )


def parse_input(t: Any, i: int, binary: memoryview, max_elements: int) -> tuple[Tensor, int]:
    """One input tensor of the request (``t`` its JSON object); its data from ``data``
    or from the front of ``binary``. Returns the tensor and the binary bytes it used."""
    where = f"inputs[{i}]"
    if not isinstance(t, dict):
        raise ProtocolError(f"{where} must be an object")
    name, dtype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where} needs a 'name'")
    if dtype != "BYTES" and dtype not in DTYPES:
        raise ProtocolError(f"{where}: unknown datatype {dtype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or len(shape) > 8
    ):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > max_elements:
        raise ProtocolError(f"{where}: {count} elements; at most {max_elements}", 413)
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r} exceeds the data sent")
        raw = binary[:size]
        if dtype == "BYTES":
            data: Any = _unpack_bytes(bytes(raw), count, where)
        else:
            itemsize = np.dtype(DTYPES[dtype]).itemsize
            if size != count * itemsize:
                raise ProtocolError(
                    f"{where}: {size} bytes for {count} {dtype} elements (want {count * itemsize})"
                )
            data = np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
            data = data.reshape(shape)
        return Tensor(name, dtype, shape, data), size
    if "data" not in t:
        raise ProtocolError(f"{where} has neither 'data' nor parameters.binary_data_size")
    flat = _flatten(t["data"], where)
    if len(flat) != count:
        raise ProtocolError(f"{where}: {len(flat)} values for shape {shape} ({count})")
    if dtype == "BYTES":
        # JSON cannot carry raw bytes: image files come base64-encoded, as KServe's own
        # image examples send them.
        data = [_b64(v, f"{where}.data[{k}]") for k, v in enumerate(flat)]
    else:
        try:
            data = np.asarray(flat, dtype=DTYPES[dtype]).reshape(shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"{where}: data are not {dtype}: {exc}") from exc
    return Tensor(name, dtype, shape, data), 0


def _flatten(data: Any, where: str) -> list[Any]:
    """Row-major data, flat or nested as the shape (both are allowed)."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}.data must be a list")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _b64(v: Any, where: str) -> bytes:
    if not isinstance(v, str):
        raise ProtocolError(f"{where}: a BYTES element in JSON must be a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{where} is not base64: {exc}") from exc


def _unpack_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """Triton's BYTES layout: each element a little-endian uint32 length, then the bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{where}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError(f"{where}: a BYTES element runs past the data")
        out.append(raw[pos : pos + n])
        pos += n
    if len(out) != count:
        raise ProtocolError(f"{where}: {len(out)} BYTES elements for a shape of {count}")
    return out


def encode_response(
    req: InferRequest, grid: np.ndarray, model_version: int
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers; ``grid`` as binary data when asked for."""
    wanted = req.outputs or [{"name": OUTPUT}]
    out: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(grid.shape)}
    binary = (wanted[0].get("parameters") or {}).get("binary_data", req.binary_output)
    blob = b""
    if binary:
        blob = np.ascontiguousarray(grid, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(blob)}
    else:
        out["data"] = grid.astype(np.float32).ravel().tolist()
    doc: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "model_version": str(model_version),
        "outputs": [out],
    }
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blob:
        return head, {"content-type": "application/json"}
    return head + blob, {"content-type": "application/octet-stream", HEADER: str(len(head))}


# What a request does, for both transports (app/routers/kserve.py over HTTP,
# app/grpc_v2/server.py over gRPC).
def _version(version: str | None) -> int | None:
    if version is None:
        return None
    if not (version.isascii() and version.isdigit()) or len(version) > 9:
        raise ProtocolError(f"model version {version!r} is not a version number", 404)
    return int(version)


async def resolve_model(state: AppState, name: str, version: str | None) -> ServedModel:
    if name != MODEL_NAME:
        raise ProtocolError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)
    if not state.holder.ready:
        raise ProtocolError("the model is still loading", 503)
    v = _version(version)
    try:
        return await state.manager.model_for(v)
    except KeyError:
        raise ProtocolError(f"model {name!r} has no version {version}", 404) from None


def metadata_of(state: AppState, model: ServedModel) -> dict[str, Any]:
    return metadata(model.cfg, model.detector.input_name, state.manager.versions())


def stats_of(state: AppState, name: str | None, version: str | None) -> dict[str, Any]:
    """Triton's statistics extension: every registered version of the model (or the
    one named), counted in this process (``app.statistics``). Loads nothing."""
    if name is not None and name != MODEL_NAME:
        raise ProtocolError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)
    if not state.holder.ready:
        raise ProtocolError("the model is still loading", 503)
    versions = state.manager.versions()
    v = _version(version)
    if v is not None:
        if v not in versions:
            raise ProtocolError(f"model {MODEL_NAME!r} has no version {version}", 404)
        versions = [v]
    return {"model_stats": state.stats.report(MODEL_NAME, versions)}


def repository_index(state: AppState, ready_only: bool) -> list[dict[str, str]]:
    """Triton's repository index: each registered version of the model, ``READY`` when
    loaded (the active one, and those kept for requests that named them), else
    ``UNAVAILABLE`` until a request names it, which loads it."""
    if not state.holder.ready:
        raise ProtocolError("the model is still loading", 503)
    loaded = state.manager.loaded_versions()
    index = [
        {"name": MODEL_NAME, "version": str(v), "state": "READY", "reason": ""}
        if v in loaded
        else {
            "name": MODEL_NAME,
            "version": str(v),
            "state": "UNAVAILABLE",
            "reason": "not loaded; a request that names this version loads it",
        }
        for v in state.manager.versions()
    ]
    return [m for m in index if m["state"] == "READY"] if ready_only else index


async def load_model(state: AppState, name: str, parameters: dict[str, Any]) -> None:
    """Triton's load, which (re)loads a model: here, serve the model registry's active
    version now rather than at the next poll (``ModelManager.sync``), trying again a
    version that failed to load before. Configurations and files sent with the load
    (``config``, ``file:...``) are refused: versions come from fine-tuning jobs."""
    if name != MODEL_NAME:
        raise ProtocolError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)
    sent = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if sent:
        raise ProtocolError(
            f"a load with {', '.join(sent)} is not served: this server's versions of "
            f"{MODEL_NAME!r} are registered by fine-tuning jobs (POST /v1/jobs)"
        )
    if not state.holder.ready:
        raise ProtocolError("the model is still loading", 503)
    try:
        await state.manager.sync(retry=True)
    except Exception as exc:
        raise ProtocolError(
            f"the active version could not be loaded ({exc}); version "
            f"{state.holder.current.version} still serves",
            503,
        ) from None


def unload_model(state: AppState, name: str) -> None:
    """Triton's unload: refused, as Triton refuses it outside its explicit control mode.
    This server always serves one version of its model, the registry's active one."""
    if name != MODEL_NAME:
        raise ProtocolError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)
    raise ProtocolError(
        f"unloading is not served: this server always serves one version of "
        f"{MODEL_NAME!r}, the model registry's active one; choose it with "
        "POST /v1/models/{version}/activate"
    )


def config_of(state: AppState, model: ServedModel) -> dict[str, Any]:
    return model_config(model.cfg, model.detector.input_name, state.settings.max_images_per_request)


async def run_infer(state: AppState, model: ServedModel, req: InferRequest) -> np.ndarray:
    if len(req.inputs) != 1:
        raise ProtocolError(
            f"send one input: {model.detector.input_name!r} (FP32) or {IMAGE_INPUT!r} (BYTES)"
        )
    t = req.inputs[0]
    size = model.cfg.input_size
    if t.name == IMAGE_INPUT:
        # [N], or [N, 1] as Triton's batched clients send an input of dims [1]
        if t.datatype != "BYTES" or not (len(t.shape) == 1 or t.shape[1:] == [1]):
            raise ProtocolError(f"{IMAGE_INPUT} is BYTES of shape [N] (or [N, 1])")
        n = len(t.data)
        if not 1 <= n <= state.settings.max_images_per_request:
            raise ProtocolError(
                f"{n} images; 1 to {state.settings.max_images_per_request} per request", 413
            )

        async def one(data: bytes) -> tuple[np.ndarray, Timing]:
            prepared, result = await infer_image(
                data, model, state.batcher, state.cpu_pool, max_pixels=state.settings.max_pixels
            )
            return result.grid, timing_of(prepared, result)

        async def every_image() -> list[tuple[np.ndarray, Timing]]:
            if n == 1:  # no task to spawn for the common case
                return [await one(t.data[0])]
            return await gather_or_cancel(*(one(d) for d in t.data))

        done = await state.stats.count(model.version, every_image(), lambda d: [t for _, t in d])
        return np.stack([grid for grid, _ in done])
    if t.name != model.detector.input_name:
        raise ProtocolError(
            f"unknown input {t.name!r}; the model takes {model.detector.input_name!r} or "
            f"{IMAGE_INPUT!r}"
        )

    async def run() -> tuple[np.ndarray, Timing]:
        t0 = time.perf_counter()
        x = _network_input(t, size)
        t1 = time.perf_counter()
        ran: list[float] = []

        def call() -> np.ndarray:
            ran.append(time.perf_counter())
            grid = model.run_tensor(x)
            ran.append(time.perf_counter())
            return grid

        grid = await state.batcher.call(call)
        state.record_batch(model, ran[1] - ran[0], [ran[0] - t1] * len(x))
        ms = [(b - a) * 1000 for a, b in ((t0, t1), (t1, ran[0]), (ran[0], ran[1]))]
        return grid, Timing(decode=ms[0], preprocess=0, queue=ms[1], inference=ms[2], postprocess=0)

    grid, _ = await state.stats.count(model.version, run(), lambda d: [d[1]])
    return grid


def _network_input(t: Tensor, size: int) -> np.ndarray:
    """The network's own input, checked: ``(N, 3, size, size)`` float32, finite."""
    if t.datatype not in ("FP32", "FP16", "FP64"):
        raise ProtocolError(f"{t.name} is FP32 (got {t.datatype})")
    if len(t.shape) != 4 or t.shape[1:] != [3, size, size] or t.shape[0] < 1:
        raise ProtocolError(f"{t.name} has shape [N, 3, {size}, {size}]; got {t.shape}")
    x = np.ascontiguousarray(t.data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError(f"{t.name} holds NaN or infinite values")
    return x
