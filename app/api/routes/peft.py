"""PEFT prefix-tuning adapters over the API (admin scope; docs/peft.md): GET /tasks/{task}/peft
downloads a version as a zip of the adapter folder, POST /tasks/{task}/peft uploads the three files
of one and publishes it as a new version (app.versions.publish)."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from app import versions
from app.api.auth import AdminTask
from app.api.deps import HubDep, StoreDep, TaskNameDep
from app.api.errors import ApiError, InputError
from app.api.schemas import PeftImported
from app.engine.checkpoint import checkpoint_bytes
from app.engine.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEAD_FILE,
    PeftError,
    export_adapter,
    import_adapter,
)

router = APIRouter(prefix="/tasks", tags=["peft"])

_PARTS = {"adapter_config": ADAPTER_CONFIG, "adapter_model": ADAPTER_WEIGHTS, "head": HEAD_FILE}


@router.get(
    "/{task}/peft",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the adapter folder, zipped"},
        404: {"description": "no such task or version"},
        409: {"description": "the version cannot be exported exactly (the reason is given)"},
    },
)
async def export_peft(
    _: AdminTask,
    task: TaskNameDep,
    hub: HubDep,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="default: the active version")
    ] = None,
) -> Response:
    resolved = await asyncio.to_thread(hub.resolve, task, version)
    backbone = hub.backbone

    def work() -> bytes:
        with TemporaryDirectory() as d:
            export_adapter(resolved.task, backbone, d, base_model=backbone.name)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for name in _PARTS.values():
                    z.write(Path(d) / name, name)
            return buf.getvalue()

    try:
        data = await asyncio.to_thread(work)
    except PeftError as e:
        raise ApiError(409, f"version {resolved.version} of task {task!r}: {e}") from None
    filename = f"{task}-v{resolved.version}-peft.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-PromptHub-Version": str(resolved.version),
    }
    return Response(data, media_type="application/zip", headers=headers)


@router.post(
    "/{task}/peft",
    status_code=201,
    response_model=PeftImported,
    responses={422: {"description": "a file does not fit (its field is named)"}},
)
async def import_peft(
    _: AdminTask,
    task: TaskNameDep,
    hub: HubDep,
    store: StoreDep,
    request: Request,
    adapter_config: Annotated[UploadFile, File(description=ADAPTER_CONFIG)],
    adapter_model: Annotated[UploadFile, File(description=ADAPTER_WEIGHTS)],
    head: Annotated[UploadFile, File(description=f"{HEAD_FILE} (docs/peft.md)")],
    activate: Annotated[bool, Form()] = True,
) -> PeftImported:
    backbone = hub.backbone
    sessionmaker = request.app.state.sessionmaker
    uploads = {"adapter_config": adapter_config, "adapter_model": adapter_model, "head": head}
    with TemporaryDirectory() as d:
        for field, upload in uploads.items():
            (Path(d) / _PARTS[field]).write_bytes(await upload.read())

        def work() -> tuple[versions.Published, int, int]:
            try:
                served, meta = import_adapter(d, backbone)
            except PeftError as e:
                raise InputError.at(["body", e.part or "adapter_model"], str(e), "peft_error") from None
            blob = checkpoint_bytes(served, backbone, {**meta, "source": "peft-import"})
            with sessionmaker() as s:
                pub = versions.publish(s, store, task, blob, source="peft-import", activate=activate)
            return pub, served.spec.prefix_length, served.spec.position_offset

        pub, p, offset = await asyncio.to_thread(work)
    return PeftImported(
        task=task, version=pub.version, sha256=pub.sha256, prefix_length=p, position_offset=offset
    )
