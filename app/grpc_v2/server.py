"""The Open Inference Protocol's gRPC API (KServe v2, ``inference.GRPCInferenceService``)
on ``YOLOV1_GRPC_PORT``, beside the HTTP API in the same process: the same model, the
same batcher, the same checks (``app.kserve``), so Triton's and KServe's gRPC clients
get what ``/v2`` gives over HTTP.

gRPC's own server runs the calls on its threads; each call's work is handed to the
API's event loop, where the model, its versions and the batcher live."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np

from app import kserve
from app.errors import STATUS, input_status
from app.grpc_v2 import inference_pb2 as pb
from app.grpc_v2 import inference_pb2_grpc as pb_grpc
from app.kserve import MODEL_NAME, ProtocolError
from app.state import AppState

T = TypeVar("T")
STATUS_TYPES = tuple(t for t, _ in STATUS)
# HTTP statuses of the shared checks -> the gRPC codes the protocol's clients expect.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
DURATION_KEYS = ("compute_input", "compute_infer", "compute_output")
# Where each datatype's elements sit in InferTensorContents (FP16 travels raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def infer_request(msg: pb.ModelInferRequest, max_elements: int) -> kserve.InferRequest:
    """The gRPC message as the HTTP parser's request: each input's bytes (from
    ``raw_input_contents``, else its typed ``contents``) through the same checks."""
    if not msg.inputs:
        raise ProtocolError("the request needs 'inputs': a non-empty list of tensors")
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs = []
    for i, t in enumerate(msg.inputs):
        data = raw[i] if raw else _contents_bytes(t, f"inputs[{i}]")
        doc = {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "parameters": {"binary_data_size": len(data)},
        }
        tensor, _ = kserve.parse_input(doc, i, memoryview(data), max_elements)
        inputs.append(tensor)
    for o in msg.outputs:
        if o.name != kserve.OUTPUT:
            raise ProtocolError(f"unknown output {o.name!r}; the model has {kserve.OUTPUT!r}")
    return kserve.InferRequest(
        msg.id or None, inputs, [{"name": o.name} for o in msg.outputs], True
    )


def _contents_bytes(t: Any, where: str) -> bytes:
    """Typed contents -> the raw layout (little-endian; BYTES length-prefixed)."""
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise ProtocolError(f"{where}: {t.datatype} must be sent in raw_input_contents")
    values = getattr(t.contents, field)
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    dtype = np.dtype(kserve.DTYPES[t.datatype]).newbyteorder("<")
    try:
        return np.asarray(list(values), dtype=dtype).tobytes()
    except OverflowError as exc:
        raise ProtocolError(f"{where}: values do not fit {t.datatype}: {exc}") from exc


def infer_response(req: kserve.InferRequest, grid: np.ndarray, version: int) -> Any:
    out = pb.ModelInferResponse.InferOutputTensor(
        name=kserve.OUTPUT, datatype="FP32", shape=list(grid.shape)
    )
    return pb.ModelInferResponse(
        model_name=MODEL_NAME,
        model_version=str(version),
        id=req.id or "",
        outputs=[out],
        raw_output_contents=[np.ascontiguousarray(grid, dtype="<f4").tobytes()],
    )


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, loop: asyncio.AbstractEventLoop, version: str) -> None:
        self.state, self.loop, self.version = state, loop, version

    def _on_loop(self, coro: Coroutine[Any, Any, T], context: grpc.ServicerContext) -> T:
        """Run ``coro`` on the API's event loop; the shared checks' errors become the
        protocol's status codes (``context.abort`` raises)."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except ProtocolError as exc:
            context.abort(CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        except STATUS_TYPES as exc:  # bad images, as app.errors words them
            code = CODES.get(input_status(exc), grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(code, str(exc))
        raise AssertionError("unreachable")  # abort raised

    async def _about(self, request: Any, describe) -> dict[str, Any]:
        """``describe(state, model)`` of the version a metadata or config call names."""
        model = await kserve.resolve_model(self.state, request.name, request.version or None)
        return describe(self.state, model)

    def ServerLive(self, request, context):  # noqa: N802 (the protocol's names)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.state.holder.ready)

    def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(
            name="yolov1-service",
            version=self.version,
            extensions=kserve.EXTENSIONS,
        )

    def ModelReady(self, request, context):  # noqa: N802
        """Ready when the version can take an infer request now (a registered version
        that is not active is loaded on this call); not ready, not an error, for a
        model or version this server does not have, as a readiness poll expects."""

        async def ready() -> bool:
            try:
                await kserve.resolve_model(self.state, request.name, request.version or None)
            except ProtocolError:
                return False
            return True

        return pb.ModelReadyResponse(ready=self._on_loop(ready(), context))

    def ModelMetadata(self, request, context):  # noqa: N802
        m = self._on_loop(self._about(request, kserve.metadata_of), context)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m["name"],
            versions=m["versions"],
            platform=m["platform"],
            inputs=[tensors(**t) for t in m["inputs"]],
            outputs=[tensors(**t) for t in m["outputs"]],
        )

    def ModelConfig(self, request, context):  # noqa: N802
        c = self._on_loop(self._about(request, kserve.config_of), context)
        inputs = [
            pb.ModelInput(
                name=i["name"],
                data_type=pb.DataType.Value(i["data_type"]),
                dims=i["dims"],
                reshape=pb.ModelTensorReshape(**i["reshape"]) if "reshape" in i else None,
                optional=i["optional"],
            )
            for i in c["input"]
        ]
        outputs = [
            pb.ModelOutput(
                name=o["name"], data_type=pb.DataType.Value(o["data_type"]), dims=o["dims"]
            )
            for o in c["output"]
        ]
        config_msg = pb.ModelConfig(
            name=c["name"],
            platform=c["platform"],
            max_batch_size=c["max_batch_size"],
            input=inputs,
            output=outputs,
        )
        return pb.ModelConfigResponse(config=config_msg)

    def ModelStatistics(self, request, context):  # noqa: N802
        async def stats() -> dict[str, Any]:
            return kserve.stats_of(self.state, request.name or None, request.version or None)

        report = self._on_loop(stats(), context)
        return pb.ModelStatisticsResponse(
            model_stats=[
                pb.ModelStatistics(
                    name=m["name"],
                    version=m["version"],
                    last_inference=m["last_inference"],
                    inference_count=m["inference_count"],
                    execution_count=m["execution_count"],
                    inference_stats=pb.InferStatistics(
                        **{k: pb.StatisticDuration(**d) for k, d in m["inference_stats"].items()}
                    ),
                    batch_stats=[
                        pb.InferBatchStatistics(
                            batch_size=b["batch_size"],
                            **{k: pb.StatisticDuration(**b[k]) for k in DURATION_KEYS},
                        )
                        for b in m["batch_stats"]
                    ],
                )
                for m in report["model_stats"]
            ]
        )

    def RepositoryIndex(self, request, context):  # noqa: N802
        async def index() -> list[dict[str, str]]:
            return kserve.repository_index(self.state, request.ready)

        models = self._on_loop(index(), context)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[entry(**m) for m in models])

    def RepositoryModelLoad(self, request, context):  # noqa: N802
        async def load() -> None:
            # only the parameters' names matter: any config or file is refused
            await kserve.load_model(self.state, request.model_name, dict(request.parameters))

        self._on_loop(load(), context)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):  # noqa: N802
        async def unload() -> None:
            kserve.unload_model(self.state, request.model_name)

        self._on_loop(unload(), context)
        return pb.RepositoryModelUnloadResponse()

    def ModelInfer(self, request, context):  # noqa: N802
        async def infer() -> Any:
            model = await kserve.resolve_model(
                self.state, request.model_name, request.model_version or None
            )
            req = infer_request(request, kserve.MAX_ELEMENTS)
            grid = await kserve.run_infer(self.state, model, req)
            return infer_response(req, grid, model.version)

        return self._on_loop(infer(), context)


def start(state: AppState, loop: asyncio.AbstractEventLoop, *, version: str) -> grpc.Server:
    """Serve on ``YOLOV1_HOST:YOLOV1_GRPC_PORT``; messages up to the KServe limit."""
    s = state.settings
    limit = s.max_infer_bytes + 64 * 1024  # the tensors plus the message around them
    server = grpc.server(
        ThreadPoolExecutor(s.grpc_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(state, loop, version), server)
    if server.add_insecure_port(f"{s.host}:{s.grpc_port}") == 0:
        raise OSError(f"cannot listen for gRPC on {s.host}:{s.grpc_port}")
    server.start()
    return server
