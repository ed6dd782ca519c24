"""Embeddings: POST /embed (the shape of Hugging Face's text-embeddings-inference) and POST
/v1/embeddings (OpenAI's). Both run as rows of the serving batcher, in the same forwards as
predictions; a task (the body's `task`, or a task's name as OpenAI's `model`) gives embeddings
through that task's prefix. Predict scope; a key limited to some tasks may use only those."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.api.auth import check_tasks, require
from app.api.deps import HubDep, SettingsDep
from app.api.errors import InputError, check_json, data_error
from app.api.schemas import (
    EmbedRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIEmbeddingUsage,
)
from app.config import Settings
from app.engine.backbone import BACKBONE_ALIASES
from app.engine.data import DataError
from app.names import validate_task_name
from app.security import Principal
from app.serving.hub import Embedded, Hub

router = APIRouter(tags=["embeddings"])

Predict = Annotated[Principal, Depends(require("predict"))]

_ERRORS = {
    401: {"description": "no key, or an invalid one"},
    403: {"description": "the key lacks the predict scope or is not allowed the task"},
    404: {"description": "no such task or version"},
    422: {"description": "an input or field is invalid (its location names it)"},
    429: {"description": "the queue is full, or the key has too much work in flight"},
    503: {"description": "the backbone is still loading"},
}


def _texts(value: str | list[str], field: str, settings: Settings) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise InputError.at(["body", field], "give at least one text", "too_short")
    limit = settings.max_inputs_per_request
    if len(texts) > limit:
        raise InputError.at(
            ["body", field], f"{len(texts)} inputs in one request; the limit is {limit}", "too_long"
        )
    check_json(texts, ["body", field])
    return texts


def _task_name(name: str, field: str, principal: Principal) -> str:
    try:
        validate_task_name(name)
    except ValueError as e:
        raise InputError.at(["body", field], str(e)) from None
    check_tasks(principal, [name])
    return name


async def _run(
    hub: Hub,
    texts: list[str],
    field: str,
    task: str | None,
    version: int | None,
    principal: Principal,
    *,
    normalize: bool = True,
    truncate: bool | None = None,
) -> Embedded:
    try:
        return await hub.embed(
            texts, task, version, normalize=normalize, truncate=truncate, client=principal.key_id
        )
    except DataError as err:
        raise data_error(err, ["body", field], label=field) from None
    except ValueError as err:  # a task that cannot give embeddings (fully fine-tuned)
        raise InputError.at(["body", "task" if field == "inputs" else "model"], str(err)) from None


@router.post("/embed", response_model=list[list[float]], responses=_ERRORS)
async def embed(
    principal: Predict, body: EmbedRequest, hub: HubDep, settings: SettingsDep, response: Response
) -> list[list[float]]:
    """One vector a text, mean-pooled over its tokens and L2-normalised (unless `normalize` is
    false): sentence-transformers' embeddings of the backbone, or through `task`'s prefix."""
    texts = _texts(body.inputs, "inputs", settings)
    task = None if body.task is None else _task_name(body.task, "task", principal)
    if body.version is not None and task is None:
        raise InputError.at(["body", "version"], "a version needs a task")
    out = await _run(
        hub, texts, "inputs", task, body.version, principal, normalize=body.normalize, truncate=body.truncate
    )
    if out.task is not None:
        response.headers["X-PromptHub-Task"] = out.task
        response.headers["X-PromptHub-Version"] = str(out.version)
    return [v.tolist() for v in out.vectors]


def _is_backbone(model: str, hub: Hub) -> bool:
    name = hub.backbone.name
    wanted = model.strip().lower()
    return wanted == name.lower() or BACKBONE_ALIASES.get(wanted) == name


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, responses=_ERRORS)
async def openai_embeddings(
    principal: Predict, body: OpenAIEmbeddingRequest, hub: HubDep, settings: SettingsDep
) -> OpenAIEmbeddingResponse:
    """OpenAI's embeddings API: `model` is the backbone's name (e.g. all-MiniLM-L6-v2 or
    sentence-transformers/all-MiniLM-L6-v2) for plain embeddings, or a task's name for embeddings
    through its active version's prefix. Vectors are L2-normalised."""
    texts = _texts(body.input, "input", settings)
    if body.dimensions is not None and body.dimensions != hub.backbone.hidden_size:
        raise InputError.at(
            ["body", "dimensions"],
            f"the vectors have {hub.backbone.hidden_size} dimensions; other sizes are not offered",
        )
    task = None if _is_backbone(body.model, hub) else _task_name(body.model, "model", principal)
    out = await _run(hub, texts, "input", task, None, principal)
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii") for v in out.vectors]
    else:
        data = [v.tolist() for v in out.vectors]
    return OpenAIEmbeddingResponse(
        data=[OpenAIEmbedding(index=i, embedding=e) for i, e in enumerate(data)],
        model=body.model,
        usage=OpenAIEmbeddingUsage(prompt_tokens=out.tokens, total_tokens=out.tokens),
    )
