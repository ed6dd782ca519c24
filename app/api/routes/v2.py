"""The Open Inference Protocol (KServe v2, also spoken by Triton and Seldon) over HTTP/REST.

GET /v2/health/live and /v2/health/ready (open, like /healthz), GET /v2 (server metadata),
GET /v2/models/{task}[/versions/{v}] (model metadata) and .../ready, and
POST /v2/models/{task}[/versions/{v}]/infer. A task is a model; its versions are the model's versions.

Inputs are BYTES tensors of shape [N] or [N, 1], as JSON `data` or in the binary tensor data
extension (`parameters.binary_data_size`, the JSON header's length in `Inference-Header-Content-Length`,
each element a 4-byte little-endian length and its UTF-8 bytes): `text` (+ optional `text_pair`) for
classification, regression and token classification, `question` and `context` for question answering.
Rows go through the same hub and batcher as POST /predict (same scopes, limits and error codes; the
error body also carries the protocol's `error`). Outputs (all unless `outputs` names some):
`prediction` (BYTES: each row's native prediction as JSON) and, by type, `label` (BYTES), `score`
(FP32), `scores` (FP32 [N, labels], in the order of the model metadata's `parameters.labels`),
`answer` (BYTES), `start`/`end` (INT64). An output is sent binary when it asks for
`binary_data` or the request sets `binary_data_output` (what tritonclient does by default).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.auth import PredictTask, PrincipalDep, ReadTask
from app.api.deps import HubDep, SessionDep, SettingsDep, TaskNameDep
from app.api.edge import note_rows
from app.api.errors import ApiError, InputError, check_json, data_error
from app.db import tasks as db_tasks
from app.engine import tasks as task_types
from app.engine.data import DataError

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a version of the task")]
HEADER_LENGTH = "inference-header-content-length"
MAX_TENSORS = 8


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    shape: list[Annotated[int, Field(ge=0, le=1_000_000)]] = Field(min_length=1, max_length=2)
    datatype: str = Field(max_length=16, description="BYTES")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class OutputRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[OutputRequest] | None = Field(None, max_length=16)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor data extension: the JSON header (its length in "
                "Inference-Header-Content-Length), then the tensors' bytes",
            },
        },
    }
}


# ------------------------------------------------------------------------------------ health, metadata
@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
def ready(hub: HubDep) -> JSONResponse:
    if hub.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "code": "not_ready", "error": "not ready"}, status_code=503)


@router.get("")
def server_metadata(_: PrincipalDep, request: Request) -> dict[str, Any]:
    return {"name": "prompthub", "version": request.app.version, "extensions": ["binary_tensor_data"]}


def _model(s: Any, task: str, version: int | None) -> dict[str, Any]:
    row = db_tasks.get_task(s, task)
    if row is None:
        raise ApiError(404, f"task {task!r} not found", code="task_not_found")
    versions = [v.version for v in db_tasks.get_versions(s, task)]
    if version is not None and version not in versions:
        raise ApiError(404, f"version {version} of task {task!r} not found", code="version_not_found")
    task_type = task_types.get(row.task_type)
    required, optional = task_type.input_fields
    return {
        "name": task,
        "versions": [str(v) for v in versions],
        "platform": "prompthub",
        "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in (*required, *optional)],
        "outputs": [{"name": n, "datatype": d, "shape": sh} for n, d, sh in _outputs(task_type, row.labels)],
        "parameters": {
            "task_type": row.task_type,
            "labels": list(row.labels or []),
            "active_version": row.active_version,
            "optional_inputs": list(optional),
        },
    }


def _outputs(task_type: Any, labels: list[Any] | None) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of the model's output tensors: `prediction` and the type's own."""
    return [("prediction", "BYTES", [-1])] + [
        (t.name, t.datatype, [-1, len(labels or [])] if t.per_label else [-1])
        for t in task_type.output_tensors
    ]


@router.get("/models/{task}")
def model_metadata(_: ReadTask, task: TaskNameDep, s: SessionDep) -> dict[str, Any]:
    return _model(s, task, None)


@router.get("/models/{task}/versions/{version}")
def model_version_metadata(
    _: ReadTask, task: TaskNameDep, version: VersionPath, s: SessionDep
) -> dict[str, Any]:
    return _model(s, task, version)


def _model_ready(s: Any, hub: Any, task: str, version: int | None) -> JSONResponse:
    meta = _model(s, task, version)
    ok = hub.ready and (version is not None or meta["parameters"]["active_version"] is not None)
    if ok:
        return JSONResponse({"name": task, "ready": True})
    why = "the backbone is still loading" if not hub.ready else f"task {task!r} has no active version"
    return JSONResponse({"name": task, "ready": False, "code": "not_ready", "error": why}, status_code=503)


@router.get("/models/{task}/ready")
def model_ready(_: ReadTask, task: TaskNameDep, s: SessionDep, hub: HubDep) -> JSONResponse:
    return _model_ready(s, hub, task, None)


@router.get("/models/{task}/versions/{version}/ready")
def model_version_ready(
    _: ReadTask, task: TaskNameDep, version: VersionPath, s: SessionDep, hub: HubDep
) -> JSONResponse:
    return _model_ready(s, hub, task, version)


# ------------------------------------------------------------------------------------ infer
@router.post("/models/{task}/infer", openapi_extra=_INFER_BODY)
async def infer(
    request: Request, principal: PredictTask, task: TaskNameDep, hub: HubDep, settings: SettingsDep
) -> Response:
    return await _infer(request, principal, task, None, hub, settings)


@router.post("/models/{task}/versions/{version}/infer", openapi_extra=_INFER_BODY)
async def infer_version(
    request: Request,
    principal: PredictTask,
    task: TaskNameDep,
    version: VersionPath,
    hub: HubDep,
    settings: SettingsDep,
) -> Response:
    return await _infer(request, principal, task, version, hub, settings)


def _split_body(raw: bytes, header: str | None) -> tuple[Any, bytes]:
    """(the JSON header, the binary part) of a request."""
    if header is None:
        head, binary = raw, b""
    else:
        if not header.strip().isdigit() or int(header) > len(raw):
            raise InputError.at(
                ["header", "Inference-Header-Content-Length"],
                f"must be the JSON header's length in bytes, at most the body's {len(raw)}",
            )
        head, binary = raw[: int(header)], raw[int(header) :]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError.at(["body"], f"the request is not valid JSON: {e}", "json_invalid") from None
    check_json(doc, ["body"])
    return doc, binary


def _parse(doc: Any) -> InferRequest:
    try:
        return InferRequest.model_validate(doc)
    except ValidationError as e:
        raise InputError(
            [
                {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in e.errors(include_url=False)
            ]
        ) from None


def _bytes_elements(blob: bytes, loc: list[str | int]) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InputError.at(loc, "BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise InputError.at(loc, f"BYTES element of {n} bytes runs past the end of the data")
        out.append(blob[pos : pos + n])
        pos += n
    return out


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _tensor_strings(t: TensorIn, i: int, binary: bytes, pos: int) -> tuple[list[str], int]:
    """The tensor's elements as text, and the position after its binary data."""
    loc: list[str | int] = ["body", "inputs", i]
    if t.datatype != "BYTES":
        raise InputError.at([*loc, "datatype"], f"input {t.name!r} must be BYTES (text), got {t.datatype!r}")
    if len(t.shape) == 2 and t.shape[1] != 1:
        raise InputError.at([*loc, "shape"], f"give one text per row: shape [N] or [N, 1], got {t.shape}")
    size = (t.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or pos + size > len(binary):
            raise InputError.at([*loc, "parameters", "binary_data_size"], "does not fit the binary data sent")
        raw = _bytes_elements(binary[pos : pos + size], [*loc, "parameters", "binary_data_size"])
        pos += size
    elif t.data is not None:
        raw = _flatten(t.data)
    else:
        raise InputError.at([*loc, "data"], "give `data`, or binary data with parameters.binary_data_size")
    if len(raw) != t.shape[0]:
        raise InputError.at(
            [*loc, "shape"], f"shape {t.shape} says {t.shape[0]} elements, {len(raw)} were sent"
        )
    texts = []
    for k, x in enumerate(raw):
        if isinstance(x, bytes):
            try:
                x = x.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError.at([*loc, "data", k], "not valid UTF-8 text", "string_unicode") from None
        if not isinstance(x, str):
            raise InputError.at([*loc, "data", k], f"must be a string, got {type(x).__name__}")
        texts.append(x)
    return texts, pos


def _records(req: InferRequest, binary: bytes, limit: int) -> list[dict[str, str]]:
    columns: dict[str, list[str]] = {}
    pos = 0
    for i, t in enumerate(req.inputs):
        if t.name in columns:
            raise InputError.at(["body", "inputs", i, "name"], f"input {t.name!r} is given twice")
        if t.name not in ("text", "text_pair", "question", "context"):
            raise InputError.at(
                ["body", "inputs", i, "name"],
                f"unknown input {t.name!r}: use text (+ text_pair), or question and context",
            )
        if t.shape[0] > limit:
            raise InputError.at(
                ["body", "inputs", i, "shape"],
                f"{t.shape[0]} rows in one request; the limit is {limit}",
                "too_long",
            )
        columns[t.name], pos = _tensor_strings(t, i, binary, pos)
    rows = {len(v) for v in columns.values()}
    if len(rows) > 1:
        raise InputError.at(["body", "inputs"], "every input must have the same number of rows")
    n = rows.pop()
    if n == 0:
        raise InputError.at(["body", "inputs"], "no rows")
    return [{name: col[r] for name, col in columns.items()} for r in range(n)]


def _wants_binary(req: InferRequest, out: OutputRequest | None) -> bool:
    if out is not None and out.parameters and "binary_data" in out.parameters:
        return out.parameters["binary_data"] is True
    return bool((req.parameters or {}).get("binary_data_output") is True)


def _columns(predictions: list[dict]) -> dict[str, tuple[str, list[int], list[Any]]]:
    """name -> (datatype, shape, flat data) of every output the predictions give."""
    n = len(predictions)
    first = predictions[0]
    cols: dict[str, tuple[str, list[int], list[Any]]] = {
        "prediction": ("BYTES", [n], [json.dumps(p, ensure_ascii=False) for p in predictions])
    }
    get: Callable[[str], list[Any]] = lambda k: [p[k] for p in predictions]  # noqa: E731
    if "answer" in first:
        cols["answer"] = ("BYTES", [n], get("answer"))
        cols["score"] = ("FP32", [n], get("score"))
        cols["start"] = ("INT64", [n], get("start"))
        cols["end"] = ("INT64", [n], get("end"))
    elif "label" in first:
        width = len(first["scores"])
        cols["label"] = ("BYTES", [n], get("label"))
        cols["score"] = ("FP32", [n], get("score"))
        cols["scores"] = ("FP32", [n, width], [s for p in predictions for s in p["scores"].values()])
    elif "tags" not in first:
        cols["score"] = ("FP32", [n], get("score"))
    return cols


def _encode(datatype: str, data: list[Any]) -> bytes:
    if datatype == "FP32":
        return struct.pack(f"<{len(data)}f", *data)
    if datatype == "INT64":
        return struct.pack(f"<{len(data)}q", *data)
    parts = []
    for x in data:
        b = x.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


async def _infer(
    request: Request, principal: Any, task: str, version: int | None, hub: Any, settings: Any
) -> Response:
    doc, binary = _split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    req = _parse(doc)
    records = _records(req, binary, settings.max_inputs_per_request)
    note_rows(request.scope, len(records))
    try:
        served, predictions = await hub.predict(task, records, version, client=principal.key_id)
    except DataError as err:
        raise data_error(err, ["body", "inputs"], label="rows") from None
    cols = _columns(predictions)
    names = [o.name for o in req.outputs] if req.outputs else list(cols)
    for i, name in enumerate(names):
        if name not in cols:
            raise InputError.at(
                ["body", "outputs", i, "name"], f"unknown output {name!r}: this model gives {', '.join(cols)}"
            )
    by_name = {o.name: o for o in req.outputs} if req.outputs else {}
    outputs, blobs = [], []
    for name in names:
        datatype, shape, data = cols[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if _wants_binary(req, by_name.get(name)):
            blob = _encode(datatype, data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": task, "model_version": str(served), "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    head = json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
